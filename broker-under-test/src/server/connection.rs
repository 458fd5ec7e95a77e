//! One client connection: size-prefixed frames in, responses out in request
//! order.
//!
//! Requests are read and started one after another (so appends keep the
//! order the client sent them in), but their completion (an fsync, a fetch
//! long-poll) is awaited by a writer task, so a client may pipeline. A
//! bounded queue between them limits the requests in flight.
//!
//! Bad input (a negative or oversized length, an undecodable header or
//! body, an API or version this broker does not serve) is logged and closes
//! the connection, as Apache Kafka does; ApiVersions alone answers an
//! unsupported version with UNSUPPORTED_VERSION.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::api::{self, Reply};
use super::Broker;

/// Requests accepted before the oldest one has been answered.
const IN_FLIGHT: usize = 64;

struct Pending {
    correlation_id: i32,
    header_version: i16,
    reply: Reply,
}

/// Serves one connection until the client closes it or sends bad input.
/// The error says why the connection was closed.
pub async fn run(broker: Arc<Broker>, stream: TcpStream) -> Result<(), String> {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Pending>(IN_FLIGHT);
    let mut writer = tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            let Some(body) = p.reply.await? else { continue };
            let mut frame = BytesMut::with_capacity(body.len() + 16);
            frame.put_i32(0);
            let header = ResponseHeader::default().with_correlation_id(p.correlation_id);
            header
                .encode(&mut frame, p.header_version)
                .map_err(|e| format!("encode response header: {e}"))?;
            frame.extend_from_slice(&body);
            let len = (frame.len() - 4) as i32;
            frame[..4].copy_from_slice(&len.to_be_bytes());
            wr.write_all(&frame)
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        Ok::<(), String>(())
    });
    // When the client is gone or misbehaves, close without answering what is
    // still pending, as Kafka does (appends already made stay in the log).
    let result = tokio::select! {
        r = read_loop(&broker, &mut rd, &tx) => r,
        w = &mut writer => match w {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("writer task: {e}")),
        },
    };
    writer.abort();
    result
}

async fn read_loop(
    broker: &Arc<Broker>,
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    tx: &mpsc::Sender<Pending>,
) -> Result<(), String> {
    let max = broker.config.max_request_bytes;
    loop {
        let len = match rd.read_i32().await {
            Ok(len) => len,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("read: {e}")),
        };
        let len = unlost_wire::frame_len(len, max).map_err(|_| {
            format!("request size {len} is outside 0..={max} (--max-request-bytes)")
        })?;
        let mut buf = vec![0u8; len];
        rd.read_exact(&mut buf)
            .await
            .map_err(|e| format!("client disconnected mid-request ({len} bytes announced): {e}"))?;
        let mut body = Bytes::from(buf);
        let header = decode_header(&mut body)?;
        let key = ApiKey::try_from(header.request_api_key)
            .map_err(|_| format!("unknown API key {}", header.request_api_key))?;
        let reply = api::dispatch(broker, key, &header, body).await?;
        let pending = Pending {
            correlation_id: header.correlation_id,
            header_version: key.response_header_version(response_version(key, &header)),
            reply,
        };
        if tx.send(pending).await.is_err() {
            return Err("response writer stopped".into());
        }
    }
}

/// The version a response is encoded at (ApiVersions errors answer at v0).
fn response_version(key: ApiKey, header: &RequestHeader) -> i16 {
    match key {
        ApiKey::ApiVersions if !api::supported(key, header.request_api_version) => 0,
        _ => header.request_api_version,
    }
}

fn decode_header(body: &mut Bytes) -> Result<RequestHeader, String> {
    if body.len() < 8 {
        return Err(format!(
            "request of {} bytes is too short for a header",
            body.len()
        ));
    }
    let key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let api = ApiKey::try_from(key).map_err(|_| format!("unknown API key {key}"))?;
    let known = api.valid_versions();
    if (known.min..=known.max).contains(&version) {
        return decode_request_header_from_buffer(body)
            .map_err(|e| format!("bad {api:?} v{version} request header: {e}"));
    }
    if api == ApiKey::ApiVersions && version >= 0 {
        // A newer ApiVersions than this protocol library knows: answer with
        // the versions we serve (KIP-511) without decoding the rest.
        return Ok(RequestHeader::default()
            .with_request_api_key(key)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id));
    }
    Err(format!("unsupported version {version} of {api:?}"))
}
