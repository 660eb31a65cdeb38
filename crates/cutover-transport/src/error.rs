//! Transport failures, with the host and what the remote side said.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {host}: {detail}")]
    Connect { host: String, detail: String },
    #[error("on {host}: could not run `{command}`: {detail}")]
    Spawn {
        host: String,
        command: String,
        detail: String,
    },
    #[error("on {host}: `{command}` timed out after {}s; it was stopped on the worker", .after.as_secs_f64())]
    Timeout {
        host: String,
        command: String,
        after: Duration,
    },
    #[error("rsync to {host} failed (exit {code}): {stderr}")]
    Rsync {
        host: String,
        code: i32,
        stderr: String,
    },
}
