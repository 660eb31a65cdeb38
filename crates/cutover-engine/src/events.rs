//! What the engine tells the operator while it works. The engine emits
//! events; one reporter (the CLI's printer) owns the terminal.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    ConnectFailed {
        worker: String,
        error: String,
    },
    StopDone {
        job: String,
        worker: String,
        why: String,
        ok: bool,
        message: String,
    },
    JobStarted {
        job: String,
        wave: usize,
        batches: usize,
    },
    JobBlocked {
        job: String,
        because: String,
    },
    BatchStarted {
        job: String,
        batch: usize,
        batches: usize,
        workers: Vec<String>,
    },
    Step {
        job: String,
        worker: String,
        step: String,
    },
    AllocDone {
        job: String,
        worker: String,
        action: String,
        ok: bool,
        message: String,
    },
    Reverted {
        job: String,
        worker: String,
        ok: bool,
        message: String,
    },
    Hook {
        job: String,
        hook: String,
        ok: bool,
        message: String,
    },
    JobDone {
        job: String,
        status: String,
        message: String,
    },
    /// A line of narrative from a longer operation (a release phase).
    Message {
        text: String,
    },
}

pub trait Reporter: Send + Sync {
    fn event(&self, e: &Event);
}

/// A reporter that drops everything (for callers that only want the report).
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _: &Event) {}
}
