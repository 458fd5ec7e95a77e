//! A committed consumer-group position. The controller stores these (see
//! `controller::state`), so a commit is on a majority of voters' disks
//! before OffsetCommit is answered.

use serde::{Deserialize, Serialize};

/// A committed position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}
