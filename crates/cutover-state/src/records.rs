//! The rows of the state store.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AllocStatus {
    /// `hash`/`version` run there and passed their health check.
    Promoted,
    /// The last attempt failed; `hash`/`version` still name what was promoted before, if anything.
    Failed,
    /// Stopped by a reconcile; kept until the next deploy forgets it.
    Stopped,
}

impl AllocStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocStatus::Promoted => "promoted",
            AllocStatus::Failed => "failed",
            AllocStatus::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "promoted" => Some(AllocStatus::Promoted),
            "failed" => Some(AllocStatus::Failed),
            "stopped" => Some(AllocStatus::Stopped),
            _ => None,
        }
    }
}

/// One allocation (a job on a worker).
#[derive(Debug, Clone, Serialize)]
pub struct AllocationRecord {
    pub job: String,
    pub worker: String,
    pub status: AllocStatus,
    /// The promoted tree hash and version (absent until first promoted).
    pub hash: Option<String>,
    pub version: Option<String>,
    /// The release dir `current` points at after the promotion.
    pub release_id: Option<String>,
    /// The release dir before it, kept for switching back.
    pub previous_release_id: Option<String>,
    /// Health at the last check: healthy | unhealthy | unknown.
    pub health: String,
    /// What went wrong on the last failed attempt.
    pub message: String,
    pub updated_at: String,
}

#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub started_at: String,
    pub head: Option<String>,
    pub dirty: bool,
    pub command: String,
    pub user: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentRecord {
    pub seq: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub head: Option<String>,
    pub dirty: bool,
    pub command: String,
    pub user: String,
    /// running | success | partial | failed | interrupted
    pub outcome: String,
    /// JSON: per job and allocation, what happened.
    pub summary: String,
}

/// A KV entry as stored: a secret's `value` is nonce + ciphertext.
#[derive(Debug, Clone)]
pub struct KvRecord {
    pub job: String,
    pub key: String,
    pub value: Vec<u8>,
    pub secret: bool,
    pub updated_at: String,
}

/// What a batch's promotion writes to the store.
#[derive(Debug, Clone, Default)]
pub struct Promotions {
    /// (job, hash, manifest JSON) of each tree promoted.
    pub trees: Vec<(String, String, String)>,
    pub allocations: Vec<AllocationRecord>,
    /// (name, spec JSON) of each worker's last known address.
    pub workers: Vec<(String, String)>,
}
