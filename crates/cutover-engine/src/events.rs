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

impl Event {
    /// The plain line for an event, as the CLI prints it and the admin UI's
    /// live feed shows it, or `None` when it only matters in a live view.
    /// `verbose` adds every per-host step.
    pub fn line(&self, p: &str, verbose: bool) -> Option<String> {
        let line = match self {
            Event::ConnectFailed { worker, error } => {
                format!("[{p}] {worker}: unreachable: {error}")
            }
            Event::StopDone {
                job,
                worker,
                why,
                ok,
                message,
            } => {
                if *ok {
                    format!("[{p}] {job}@{worker}: stopped ({why})")
                } else {
                    format!("[{p}] {job}@{worker}: stop FAILED ({why}): {message}")
                }
            }
            Event::JobStarted { job, wave, batches } => {
                format!(
                    "[{p}] wave {wave}: {job} ({batches} batch{})",
                    if *batches == 1 { "" } else { "es" }
                )
            }
            Event::JobBlocked { job, because } => format!("[{p}] {job}: not started: {because}"),
            Event::BatchStarted {
                job,
                batch,
                batches,
                workers,
            } => {
                format!(
                    "[{p}] {job}: batch {batch}/{batches}: {}",
                    workers.join(" ")
                )
            }
            Event::Step { job, worker, step } => {
                if !verbose {
                    return None;
                }
                format!("[{p}] {job}@{worker}: {step}")
            }
            Event::AllocDone {
                job,
                worker,
                action,
                ok,
                message,
            } => {
                if *ok {
                    format!("[{p}] {job}@{worker}: {action} ok")
                } else {
                    format!("[{p}] {job}@{worker}: {action} FAILED: {message}")
                }
            }
            Event::Reverted {
                job,
                worker,
                ok,
                message,
            } => {
                if *ok {
                    format!("[{p}] {job}@{worker}: switched back to the previous release")
                } else {
                    format!("[{p}] {job}@{worker}: switching back FAILED: {message}")
                }
            }
            Event::Hook {
                job,
                hook,
                ok,
                message,
            } => {
                if *ok {
                    if !verbose {
                        return None;
                    }
                    format!("[{p}] {job}: hook {hook} ok")
                } else {
                    format!("[{p}] {job}: hook {hook} FAILED: {message}")
                }
            }
            Event::Message { text } => format!("[{p}] {text}"),
            Event::JobDone {
                job,
                status,
                message,
            } => {
                if message.is_empty() {
                    format!("[{p}] {job}: {status}")
                } else {
                    format!("[{p}] {job}: {status}: {message}")
                }
            }
        };
        Some(line)
    }
}

pub trait Reporter: Send + Sync {
    fn event(&self, e: &Event);
}

/// A reporter that drops everything (for callers that only want the report).
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _: &Event) {}
}
