//! Printing: aligned tables, JSON documents, and the deploy event printer.

use std::io::Write;
use std::sync::Mutex;

use cutover_engine::{Event, Reporter};

/// Prints rows as left-aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

pub fn json(doc: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(doc).unwrap_or_default());
}

pub fn short(hash: &Option<String>) -> String {
    hash.as_deref()
        .map(|h| h[..12.min(h.len())].to_string())
        .unwrap_or_else(|| "-".into())
}

/// Prints deploy events as plain lines on stderr-free stdout, one per event.
/// `verbose` adds every per-host step (on a terminal).
pub struct LinePrinter {
    pub verbose: bool,
    pub prefix: &'static str,
    lock: Mutex<()>,
}

impl LinePrinter {
    pub fn new(prefix: &'static str, verbose: bool) -> Self {
        LinePrinter {
            verbose,
            prefix,
            lock: Mutex::new(()),
        }
    }
}

/// A reporter that prints nothing (for --json, where the report is the output).
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: &Event) {}
}

impl Reporter for LinePrinter {
    fn event(&self, e: &Event) {
        let p = self.prefix;
        let line = match e {
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
                if !self.verbose {
                    return;
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
                    if !self.verbose {
                        return;
                    }
                    format!("[{p}] {job}: hook {hook} ok")
                } else {
                    format!("[{p}] {job}: hook {hook} FAILED: {message}")
                }
            }
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
        let _guard = self.lock.lock();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}
