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

/// Prints deploy events as plain lines on stdout, one per event.
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

/// The plain line for an event, or `None` when it only matters in a live view.
fn event_line(p: &str, e: &Event, verbose: bool) -> Option<String> {
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

impl Reporter for LinePrinter {
    fn event(&self, e: &Event) {
        let Some(line) = event_line(self.prefix, e, self.verbose) else {
            return;
        };
        let _guard = self.lock.lock();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The live view on a terminal: one spinner per allocation at work showing
/// its current step; finished work and everything else scroll above.
pub struct LiveProgress {
    prefix: &'static str,
    multi: indicatif::MultiProgress,
    bars: Mutex<std::collections::BTreeMap<String, indicatif::ProgressBar>>,
}

impl LiveProgress {
    pub fn new(prefix: &'static str) -> Self {
        LiveProgress {
            prefix,
            multi: indicatif::MultiProgress::with_draw_target(
                indicatif::ProgressDrawTarget::stdout(),
            ),
            bars: Mutex::new(std::collections::BTreeMap::new()),
        }
    }
}

impl Reporter for LiveProgress {
    fn event(&self, e: &Event) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        match e {
            Event::Step { job, worker, step } => {
                let key = format!("{job}@{worker}");
                let bar = bars.entry(key.clone()).or_insert_with(|| {
                    let bar = self.multi.add(indicatif::ProgressBar::new_spinner());
                    if let Ok(style) =
                        indicatif::ProgressStyle::with_template("  {spinner} {msg} ({elapsed})")
                    {
                        bar.set_style(style);
                    }
                    bar.enable_steady_tick(std::time::Duration::from_millis(100));
                    bar
                });
                bar.set_message(format!("{key}: {step}"));
            }
            other => {
                if let Event::AllocDone { job, worker, .. } | Event::StopDone { job, worker, .. } =
                    other
                {
                    if let Some(bar) = bars.remove(&format!("{job}@{worker}")) {
                        bar.finish_and_clear();
                        self.multi.remove(&bar);
                    }
                }
                if let Some(line) = event_line(self.prefix, other, false) {
                    let _ = self.multi.println(line);
                }
            }
        }
    }
}
