//! JoinGroup, SyncGroup, Heartbeat and LeaveGroup: requests to the group
//! coordinator (`crate::coordinator`), answered when it decides. The
//! coordinator of every group is the controller's Raft leader (where the
//! committed offsets are written); other brokers answer NOT_COORDINATOR.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{encode, ready, Reply};
use crate::coordinator::codes;
use crate::server::Broker;

/// Longest a join or sync waits for its answer.
const WAIT: Duration = Duration::from_secs(60);

/// Groups are coordinated by the controller's Raft leader; others refuse.
pub fn not_coordinator() -> i16 {
    kafka_protocol::ResponseError::NotCoordinator.code()
}

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_string())
}

/// JoinGroup: answered when the rebalance completes.
pub fn join(broker: &Arc<Broker>, client_id: &str, req: JoinGroupRequest, version: i16) -> Reply {
    if !broker.controller.is_leader() {
        let resp = JoinGroupResponse::default()
            .with_error_code(not_coordinator())
            .with_generation_id(-1)
            .with_protocol_name(Some(s("")));
        return ready(encode(&resp, version));
    }
    let ms = |v: i32| Duration::from_millis(v.max(0) as u64);
    let rebalance = if version >= 1 {
        req.rebalance_timeout_ms
    } else {
        req.session_timeout_ms
    };
    let protocols = req
        .protocols
        .iter()
        .map(|p| (p.name.to_string(), p.metadata.clone()))
        .collect();
    let rx = broker.coordinator.join(
        req.group_id.0.as_str(),
        req.member_id.as_str(),
        client_id,
        ms(req.session_timeout_ms),
        ms(rebalance),
        req.protocol_type.as_str(),
        protocols,
    );
    Box::pin(async move {
        let a = match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(a)) => a,
            _ => crate::coordinator::JoinAnswer {
                error: codes::REBALANCE_IN_PROGRESS,
                ..Default::default()
            },
        };
        let resp = JoinGroupResponse::default()
            .with_error_code(a.error)
            .with_generation_id(if a.error == 0 { a.generation } else { -1 })
            .with_protocol_name(Some(s(&a.protocol)))
            .with_leader(s(&a.leader))
            .with_member_id(s(&a.member_id))
            .with_members(
                a.members
                    .into_iter()
                    .map(|(id, md)| {
                        JoinGroupResponseMember::default()
                            .with_member_id(s(&id))
                            .with_metadata(md)
                    })
                    .collect(),
            );
        encode(&resp, version)
    })
}

/// SyncGroup: answered once the leader has sent the assignment.
pub fn sync(broker: &Arc<Broker>, req: SyncGroupRequest, version: i16) -> Reply {
    if !broker.controller.is_leader() {
        let resp = SyncGroupResponse::default().with_error_code(not_coordinator());
        return ready(encode(&resp, version));
    }
    let assignments = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let rx = broker.coordinator.sync(
        req.group_id.0.as_str(),
        req.generation_id,
        req.member_id.as_str(),
        assignments,
    );
    Box::pin(async move {
        let a = match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(a)) => a,
            _ => crate::coordinator::SyncAnswer {
                error: codes::REBALANCE_IN_PROGRESS,
                ..Default::default()
            },
        };
        encode(
            &SyncGroupResponse::default()
                .with_error_code(a.error)
                .with_assignment(a.assignment),
            version,
        )
    })
}

/// Heartbeat.
pub fn heartbeat(broker: &Arc<Broker>, req: HeartbeatRequest, version: i16) -> Reply {
    if !broker.controller.is_leader() {
        let resp = HeartbeatResponse::default().with_error_code(not_coordinator());
        return ready(encode(&resp, version));
    }
    let code = broker.coordinator.heartbeat(
        req.group_id.0.as_str(),
        req.generation_id,
        req.member_id.as_str(),
    );
    ready(encode(
        &HeartbeatResponse::default().with_error_code(code),
        version,
    ))
}

/// LeaveGroup (one member before v3, a list from v3).
pub fn leave(broker: &Arc<Broker>, req: LeaveGroupRequest, version: i16) -> Reply {
    if !broker.controller.is_leader() {
        let resp = LeaveGroupResponse::default().with_error_code(not_coordinator());
        return ready(encode(&resp, version));
    }
    let ids: Vec<String> = if version >= 3 {
        req.members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect()
    } else {
        vec![req.member_id.to_string()]
    };
    let codes = broker.coordinator.leave(req.group_id.0.as_str(), &ids);
    let mut resp = LeaveGroupResponse::default();
    if version >= 3 {
        resp.members = ids
            .iter()
            .zip(&codes)
            .map(|(id, c)| {
                MemberResponse::default()
                    .with_member_id(s(id))
                    .with_error_code(*c)
            })
            .collect();
    } else {
        resp.error_code = codes.first().copied().unwrap_or(0);
    }
    ready(encode(&resp, version))
}
