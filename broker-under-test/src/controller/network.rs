//! The controller's wire: length-prefixed JSON frames over TCP between
//! voters. Carries Raft's own RPCs (append entries, vote, snapshot) and the
//! brokers' requests to the Raft leader (writes and heartbeats).
//!
//! Raft clients keep one connection per target; broker requests open a
//! connection each, so a slow write never holds up Raft traffic.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::state::{Command, Reply};
use super::TypeConfig;

type NodeId = u64;

/// Largest frame accepted (snapshots of big clusters stay far below).
const MAX_FRAME: usize = 64 << 20;

/// A request from one voter to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A broker's proposal, for the Raft leader.
    Write(Command),
    /// A broker's liveness heartbeat, for the Raft leader.
    Heartbeat {
        id: i32,
        epoch: i64,
    },
}

/// Why a forwarded write failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WriteError {
    /// Not the Raft leader; the leader it knows, if any.
    NotLeader(Option<NodeId>),
    Failed(String),
}

/// The leader's answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeartbeatReply {
    /// Lease extended.
    Ok,
    /// This incarnation is unknown or fenced: register again.
    Register,
    NotLeader(Option<NodeId>),
}

/// The answer to a `Request`, same variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Write(Result<Reply, WriteError>),
    Heartbeat(HeartbeatReply),
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(stream: &mut TcpStream, msg: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

/// Reads one frame; None at a clean end of stream.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    stream: &mut TcpStream,
) -> std::io::Result<Option<T>> {
    let len = match stream.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "controller frame of {len} bytes is over the {MAX_FRAME} limit"
        )));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// One request on a fresh connection, bounded by `timeout`.
pub async fn call_once(addr: &str, req: &Request, timeout: Duration) -> Result<Response, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        write_frame(&mut s, req)
            .await
            .map_err(|e| format!("send to {addr}: {e}"))?;
        read_frame(&mut s)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?
            .ok_or_else(|| format!("{addr} closed the connection"))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer from {addr} within {timeout:?}"))?
}

/// Creates Raft clients.
#[derive(Debug, Default)]
pub struct Factory;

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Client {
        Client {
            target,
            addr: node.addr.clone(),
            conn: None,
        }
    }
}

/// A Raft client for one target, with its own connection.
#[derive(Debug)]
pub struct Client {
    target: NodeId,
    addr: String,
    conn: Option<TcpStream>,
}

impl Client {
    async fn call(&mut self, req: Request, timeout: Duration) -> Result<Response, std::io::Error> {
        let addr = self.addr.clone();
        let conn = &mut self.conn;
        let fut = async move {
            if conn.is_none() {
                let s = TcpStream::connect(&addr).await?;
                let _ = s.set_nodelay(true);
                *conn = Some(s);
            }
            let s = conn.as_mut().expect("connected");
            write_frame(s, &req).await?;
            read_frame(s)
                .await?
                .ok_or_else(|| std::io::Error::other("connection closed"))
        };
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from {} within {timeout:?}", self.addr),
            )),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

fn unreachable<E: std::error::Error>(e: std::io::Error) -> RPCError<NodeId, BasicNode, E> {
    if e.kind() == std::io::ErrorKind::TimedOut {
        RPCError::Network(NetworkError::new(&e))
    } else {
        RPCError::Unreachable(Unreachable::new(&e))
    }
}

fn mismatch<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "controller answered with the wrong response type",
    )))
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .call(Request::AppendEntries(rpc), option.hard_ttl())
            .await
        {
            Ok(Response::AppendEntries(Ok(r))) => Ok(r),
            Ok(Response::AppendEntries(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(mismatch()),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(Request::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(Response::InstallSnapshot(Ok(r))) => Ok(r),
            Ok(Response::InstallSnapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(mismatch()),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Response::Vote(Ok(r))) => Ok(r),
            Ok(Response::Vote(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(mismatch()),
            Err(e) => Err(unreachable(e)),
        }
    }
}
