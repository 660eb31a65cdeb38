//! The project's git clone, driven through the system `git`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cutover_model::classify::{parse_name_status, Change};

#[derive(Debug, thiserror::Error)]
#[error("`git {args}` failed in {dir}: {stderr}")]
pub struct GitError {
    pub args: String,
    pub dir: String,
    pub stderr: String,
}

pub struct Git {
    dir: PathBuf,
}

impl Git {
    pub fn new(dir: &Path) -> Git {
        Git {
            dir: dir.to_path_buf(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Result<String, GitError> {
        let fail = |stderr: String| GitError {
            args: args.join(" "),
            dir: self.dir.display().to_string(),
            stderr,
        };
        // git blocks (a fetch may take seconds): the async runtime is told.
        let out = tokio::task::block_in_place(|| {
            Command::new("git")
                .args(args)
                .current_dir(&self.dir)
                // Its own process group: a Ctrl-C reaches cutover, which
                // decides what stops, not a fetch or a push half-way.
                .process_group(0)
                .env("GIT_TERMINAL_PROMPT", "0")
                .output()
        })
        .map_err(|e| fail(format!("cannot run git: {e}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if msg.is_empty() {
                msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            Err(fail(msg))
        }
    }

    pub fn is_repo(&self) -> bool {
        self.run(&["rev-parse", "--git-dir"]).is_ok()
    }

    pub fn head(&self) -> Result<String, GitError> {
        self.run(&["rev-parse", "HEAD"])
    }

    pub fn rev_parse(&self, rev: &str) -> Result<String, GitError> {
        self.run(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
    }

    /// The checked-out branch; `None` when HEAD is detached.
    pub fn branch(&self) -> Option<String> {
        self.run(&["symbolic-ref", "--short", "-q", "HEAD"])
            .ok()
            .filter(|b| !b.is_empty())
    }

    /// Uncommitted changes, one `git status --porcelain` line each.
    pub fn dirty(&self) -> Result<Vec<String>, GitError> {
        Ok(self
            .run(&["status", "--porcelain"])?
            .lines()
            .map(str::to_string)
            .collect())
    }

    pub fn changes(&self, base: &str, target: &str) -> Result<Vec<Change>, GitError> {
        let out = self.run(&["diff", "--name-status", "-z", "-M", base, target])?;
        Ok(parse_name_status(&out))
    }

    /// Parents of a commit (two or more for a merge).
    pub fn parents(&self, sha: &str) -> Result<Vec<String>, GitError> {
        let line = self.run(&["rev-list", "--parents", "-n", "1", sha])?;
        Ok(line
            .split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect())
    }

    /// Writes the tree of `rev` into `dir` (for planning another revision,
    /// or rebuilding a pruned release). Modes are what a checkout by this
    /// process would make (git keeps only 644 and 755, then applies the
    /// umask): they are part of a tree's fingerprint, so a plan made from
    /// the export equals the plan of the checkout.
    pub fn export(&self, rev: &str, dir: &Path) -> Result<(), GitError> {
        let fail = |stderr: String| GitError {
            args: format!("archive {rev}"),
            dir: self.dir.display().to_string(),
            stderr,
        };
        let archive = Command::new("git")
            .args(["-c", "tar.umask=user", "archive", "--format=tar", rev])
            .current_dir(&self.dir)
            .process_group(0)
            .output()
            .map_err(|e| fail(e.to_string()))?;
        if !archive.status.success() {
            return Err(fail(
                String::from_utf8_lossy(&archive.stderr).trim().to_string(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        // Unpacked here rather than by a `tar` program: the machine may not
        // have one. The tar crate keeps every entry inside `dir`.
        let mut archive = tar::Archive::new(archive.stdout.as_slice());
        archive.set_preserve_permissions(true);
        archive
            .unpack(dir)
            .map_err(|e| fail(format!("cannot unpack the archive: {e}")))
    }
}
