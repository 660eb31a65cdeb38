//! The live feed: every event of a mutating run, appended as one JSON line
//! to `.cutover/events.jsonl`. A `cutover serve` tails it, so the admin UI
//! shows the progress of a run started from the CLI in another process as
//! well as its own; the CLI's progress lines come from the same events.
//!
//! The file is the project's, mode 0600, and holds what the terminal
//! shows: events are redacted before they reach a reporter.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::Invocation;
use crate::{Event, Reporter};

pub const FILE: &str = "events.jsonl";

/// Past this size the feed starts over (the previous one is kept as
/// `events.jsonl.1`): it is a live view, not a record; the audit log and
/// the deployment history are the records.
const ROTATE_AT: u64 = 8 << 20;

/// One line of the feed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeedLine {
    pub time: String,
    /// `<pid>-<start millis>`: the lines of one run.
    pub run: String,
    pub actor: String,
    pub command: String,
    #[serde(flatten)]
    pub kind: FeedKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeedKind {
    Started,
    Event { event: Event },
    Finished { outcome: String, exit_code: u8 },
}

/// Appends one run's lines. Writing is best effort: a feed that cannot be
/// written never fails the run it reports on. Each line opens the feed by
/// its path, so a run whose feed another process started over goes on in
/// the new one.
pub struct FeedWriter {
    run: String,
    inv: Invocation,
    path: PathBuf,
    lock: Mutex<()>,
    /// The run's abort record, given back when the run finishes.
    abort: Mutex<Option<crate::interrupt::AbortGuard>>,
}

impl FeedWriter {
    /// Starts a run's lines in `workspace`'s feed.
    pub fn begin(workspace: &Path, inv: &Invocation) -> Arc<FeedWriter> {
        let path = workspace.join(FILE);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > ROTATE_AT) {
            let _ = std::fs::rename(&path, workspace.join(format!("{FILE}.1")));
        }
        let w = Arc::new(FeedWriter {
            run: format!(
                "{}-{}",
                std::process::id(),
                cutover_state::now_compact_millis()
            ),
            inv: inv.clone(),
            path,
            lock: Mutex::new(()),
            abort: Mutex::new(None),
        });
        w.write(FeedKind::Started);
        w
    }

    pub fn finish(&self, outcome: &str, exit_code: u8) {
        self.write(FeedKind::Finished {
            outcome: outcome.to_string(),
            exit_code,
        });
        if let Ok(mut a) = self.abort.lock() {
            a.take();
        }
    }

    /// Holds the run's abort record until [`FeedWriter::finish`].
    pub fn hold(&self, guard: crate::interrupt::AbortGuard) {
        if let Ok(mut a) = self.abort.lock() {
            *a = Some(guard);
        }
    }

    fn write(&self, kind: FeedKind) {
        use std::os::unix::fs::OpenOptionsExt;
        let line = FeedLine {
            time: cutover_state::now_rfc3339(),
            run: self.run.clone(),
            actor: self.inv.actor.clone(),
            command: self.inv.command.clone(),
            kind,
        };
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        text.push('\n');
        let _one_at_a_time = self.lock.lock();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path);
        if let Ok(mut f) = file {
            // One write per line on an O_APPEND file: lines of two
            // processes never interleave.
            let _ = f.write_all(text.as_bytes());
        }
    }
}

impl Reporter for FeedWriter {
    fn event(&self, e: &Event) {
        self.write(FeedKind::Event { event: e.clone() });
    }
}

/// Sends each event to both reporters: the front end's and the feed.
pub struct Tee(pub Arc<dyn Reporter>, pub Arc<dyn Reporter>);

impl Reporter for Tee {
    fn event(&self, e: &Event) {
        self.0.event(e);
        self.1.event(e);
    }
}

/// Reads the feed's new lines as they are appended.
pub struct FeedTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// The file read (device, inode): another one is a feed started over.
    file: Option<(u64, u64)>,
}

impl FeedTail {
    /// Tails `workspace`'s feed from its current end.
    pub fn from_end(workspace: &Path) -> FeedTail {
        FeedTail::from_last(workspace, 0)
    }

    /// Tails `workspace`'s feed from about `bytes` before its end: the
    /// first poll gives the last lines written (a partial first line is
    /// skipped).
    pub fn from_last(workspace: &Path, bytes: u64) -> FeedTail {
        let path = workspace.join(FILE);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        let mut tail = FeedTail {
            file: std::fs::metadata(&path).ok().map(|m| id_of(&m)),
            path,
            offset: len.saturating_sub(bytes),
            partial: Vec::new(),
        };
        if tail.offset > 0 {
            // Start at a line boundary: after the first newline at or
            // past the byte before the offset.
            let start = tail.offset - 1;
            let mut buf = Vec::new();
            let found = std::fs::File::open(&tail.path).ok().and_then(|mut f| {
                f.seek(SeekFrom::Start(start)).ok()?;
                f.take(bytes + 1).read_to_end(&mut buf).ok()?;
                buf.iter().position(|b| *b == b'\n')
            });
            tail.offset = found.map_or(len, |at| start + at as u64 + 1);
        }
        tail
    }

    /// Reads and keeps the bytes appended since the last read, up to the
    /// last complete line; returns those complete lines' bytes.
    fn poll_raw(&mut self) -> Vec<u8> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let Ok(meta) = f.metadata() else {
            return Vec::new();
        };
        let len = meta.len();
        if len < self.offset || self.file.is_some_and(|id| id != id_of(&meta)) {
            self.offset = 0;
            self.partial.clear();
        }
        self.file = Some(id_of(&meta));
        if len == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        // At most 4 MiB a poll: the rest comes on the next.
        let Ok(n) = f.take(4 << 20).read_to_end(&mut buf) else {
            return Vec::new();
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(end + 1);
        std::mem::replace(&mut self.partial, rest)
    }

    /// The complete lines appended since the last call. A feed that
    /// started over is read from its beginning; a line that does not
    /// parse (a torn write after a crash) is skipped.
    pub fn poll(&mut self) -> Vec<FeedLine> {
        self.poll_raw()
            .split(|b| *b == b'\n')
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect()
    }
}

fn id_of(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_reads_whole_lines_of_every_writer_and_skips_torn_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tail = FeedTail::from_end(dir.path());
        let inv = Invocation {
            actor: "ana".into(),
            command: "cutover deploy".into(),
        };
        let w = FeedWriter::begin(dir.path(), &inv);
        w.event(&Event::Message { text: "one".into() });
        let lines = tail.poll();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(matches!(lines[0].kind, FeedKind::Started));
        // A torn line (a crash mid-write) is skipped once it is completed.
        let path = dir.path().join(FILE);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(b"{\"time\":").expect("write");
        assert!(tail.poll().is_empty());
        f.write_all(b"\n").expect("write");
        w.finish("success", 0);
        let lines = tail.poll();
        assert_eq!(lines.len(), 1);
        assert!(matches!(
            lines[0].kind,
            FeedKind::Finished { exit_code: 0, .. }
        ));
        // A tail from near the end starts at a line boundary.
        let last = FeedTail::from_last(dir.path(), 400).poll();
        assert!(!last.is_empty() && last.len() < 4, "{last:?}");
        assert!(matches!(
            last.last().map(|l| &l.kind),
            Some(FeedKind::Finished { .. })
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
