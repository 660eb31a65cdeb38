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
#[derive(Debug, Clone, Serialize)]
pub struct KvRecord {
    pub job: String,
    pub key: String,
    pub value: Vec<u8>,
    pub secret: bool,
    pub updated_at: String,
}

/// An operator who can read the store's secrets: the data key the
/// secrets are under, wrapped (age) for the operator's public key.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorRecord {
    pub name: String,
    /// The operator's age public key (`age1…`).
    pub recipient: String,
    /// The data key, encrypted to `recipient`.
    pub wrapped: Vec<u8>,
    pub added_by: String,
    pub added_at: String,
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

/// Everything a store holds, as `cutover state migrate` copies it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub meta: Vec<(String, String)>,
    pub allocations: Vec<AllocationRecord>,
    pub trees: Vec<(String, String, String)>,
    /// Oldest first.
    pub deployments: Vec<DeploymentRecord>,
    pub kv: Vec<KvRecord>,
    /// Oldest first.
    pub audit: Vec<String>,
    /// (ticket, `env` | `log`, content).
    pub release_files: Vec<(String, String, String)>,
    pub operators: Vec<OperatorRecord>,
    pub lease_token: i64,
}

impl Snapshot {
    /// Rows per table, in a fixed order.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("meta", self.meta.len()),
            ("allocations", self.allocations.len()),
            ("trees", self.trees.len()),
            ("deployments", self.deployments.len()),
            ("kv", self.kv.len()),
            ("audit", self.audit.len()),
            ("release_files", self.release_files.len()),
            ("operators", self.operators.len()),
        ]
    }

    /// A digest of every row: two stores with the same one hold the same.
    /// Rows of a table are hashed in a fixed order whatever order a
    /// backend's collation listed them in; the audit log and the
    /// deployments in theirs.
    pub fn digest(&self) -> String {
        fn table<T: Serialize>(h: &mut blake3::Hasher, name: &str, rows: &[T], sort: bool) {
            let mut rows: Vec<String> = rows
                .iter()
                .map(|r| serde_json::to_string(r).unwrap_or_default())
                .collect();
            if sort {
                rows.sort();
            }
            h.update(name.as_bytes());
            for r in rows {
                h.update(b"\n");
                h.update(r.as_bytes());
            }
            h.update(b"\0");
        }
        let mut h = blake3::Hasher::new();
        table(&mut h, "meta", &self.meta, true);
        table(&mut h, "allocations", &self.allocations, true);
        table(&mut h, "trees", &self.trees, true);
        table(&mut h, "deployments", &self.deployments, false);
        table(&mut h, "kv", &self.kv, true);
        table(&mut h, "audit", &self.audit, false);
        table(&mut h, "release_files", &self.release_files, true);
        table(&mut h, "operators", &self.operators, true);
        table(&mut h, "lease", &[self.lease_token], false);
        h.finalize().to_hex().to_string()
    }
}
