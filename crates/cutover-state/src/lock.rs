//! The project lock for the embedded backend: an exclusive `flock` on
//! `.cutover/lock`, whose content names the holder.
//!
//! The kernel drops a `flock` when its holder dies, so a lock left by a
//! killed process is free to take; its leftover content tells who it was,
//! and the taker reports that it took over a stale lock.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::StateError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub command: String,
    pub ticket: Option<String>,
    pub since: String,
}

impl LockHolder {
    /// A holder whose record cannot be read.
    pub(crate) fn unknown() -> LockHolder {
        LockHolder {
            user: "?".into(),
            host: "?".into(),
            pid: 0,
            command: "?".into(),
            ticket: None,
            since: "?".into(),
        }
    }
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} (pid {}, `{}`",
            self.user, self.host, self.pid, self.command
        )?;
        if let Some(t) = &self.ticket {
            write!(f, ", ticket {t}")?;
        }
        write!(f, ", since {})", self.since)
    }
}

/// Held while a deploy or release runs; released on drop.
#[derive(Debug)]
pub struct ProjectLock {
    file: Option<File>,
    /// PostgreSQL's: tells the lease's heartbeat task to let go.
    lease: Option<tokio::sync::oneshot::Sender<()>>,
    /// The holder of a stale lock this one replaced, to be audited.
    pub took_over: Option<LockHolder>,
    /// The fencing token of this acquisition (PostgreSQL; 0 for a file
    /// lock, which no one takes over from a live holder).
    pub token: u64,
}

impl ProjectLock {
    pub(crate) fn acquire(path: &Path, holder: &LockHolder) -> Result<ProjectLock, StateError> {
        let io = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file).unwrap_or_else(LockHolder::unknown);
                return Err(StateError::Locked(Box::new(holder)));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let took_over = read_holder(&mut file);
        let json = serde_json::to_string(holder).unwrap_or_default();
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(json.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(ProjectLock {
            file: Some(file),
            lease: None,
            took_over,
            token: 0,
        })
    }

    pub(crate) fn leased(
        release: tokio::sync::oneshot::Sender<()>,
        took_over: Option<LockHolder>,
        token: u64,
    ) -> ProjectLock {
        ProjectLock {
            file: None,
            lease: Some(release),
            took_over,
            token,
        }
    }

    pub(crate) fn status(path: &Path) -> Option<LockHolder> {
        let mut file = File::open(path).ok()?;
        match file.try_lock() {
            // Free: whatever content is left belongs to a dead holder.
            Ok(()) => None,
            Err(_) => read_holder(&mut file),
        }
    }

    /// Empties the holder record of a free lock file; returns what it said.
    pub(crate) fn clear(path: &PathBuf) -> Option<LockHolder> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .ok()?;
        let holder = read_holder(&mut file);
        let _ = file.set_len(0);
        holder
    }
}

impl Drop for ProjectLock {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = file.set_len(0);
            let _ = file.unlock();
        }
        if let Some(release) = self.lease.take() {
            let _ = release.send(());
        }
    }
}

fn read_holder(file: &mut File) -> Option<LockHolder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}
