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

impl Reporter for LinePrinter {
    fn event(&self, e: &Event) {
        let Some(line) = e.line(self.prefix, self.verbose) else {
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
                if let Some(line) = other.line(self.prefix, false) {
                    let _ = self.multi.println(line);
                }
            }
        }
    }
}
