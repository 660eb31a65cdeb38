//! Private scratch directories of one run: the staged trees (rendered
//! files may hold secrets) and the ssh control sockets.
//!
//! Each is created 0700 under the operator's runtime dir (`$XDG_RUNTIME_DIR`
//! when the CLI finds one, else the system temp dir) with a random name,
//! and records its owner (pid, the process's start time, the project).
//! It is removed when the run ends, whatever the outcome; a run killed
//! with -9 leaves one behind, which the next run of the same project
//! removes once it can prove the owner is gone.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::EngineError;

const PREFIX: &str = "cutover-";
const OWNER: &str = ".owner";

/// A private directory, removed on drop.
pub(crate) struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// Creates `<base>/cutover-<kind>-<random>` (0700) owned by this process.
    pub fn create(base: &Path, kind: &str, project: &Path) -> Result<Scratch, EngineError> {
        let what = format!("creating a private {kind} directory in {}", base.display());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{kind}-"))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(base)
            .map_err(EngineError::io(what.clone()))?;
        let me = Owner::current(project);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.path().join(OWNER))
            .map_err(EngineError::io(what.clone()))?;
        f.write_all(me.to_text().as_bytes())
            .map_err(EngineError::io(what))?;
        Ok(Scratch { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Removes the scratch dirs under `base` whose owner process is gone
    /// (whatever project it ran: a dead run's dir is no one's). A dir whose
    /// owner still runs, or that this process cannot judge (another pid
    /// namespace, no /proc), is kept, whatever it holds. Returns what was
    /// removed.
    pub fn sweep(base: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(base) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().starts_with(PREFIX) {
                continue;
            }
            let dir = e.path();
            let Ok(text) = std::fs::read_to_string(dir.join(OWNER)) else {
                continue; // not ours to judge
            };
            let Some(owner) = Owner::parse(&text) else {
                continue;
            };
            if owner.gone() && std::fs::remove_dir_all(&dir).is_ok() {
                removed.push(dir);
            }
        }
        removed
    }
}

/// Who created a scratch dir.
#[derive(Debug, PartialEq)]
struct Owner {
    pid: u32,
    /// The process's start time (clock ticks since boot), so that a reused
    /// pid is not taken for the owner.
    start: Option<u64>,
    /// The pid namespace the pid belongs to (`pid:[4026531836]`).
    pid_ns: Option<String>,
    project: PathBuf,
}

impl Owner {
    fn current(project: &Path) -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start: start_time(pid),
            pid_ns: pid_namespace(),
            project: project.to_path_buf(),
        }
    }

    fn to_text(&self) -> String {
        format!(
            "pid={}\nstart={}\npidns={}\nproject={}\n",
            self.pid,
            self.start.map(|s| s.to_string()).unwrap_or_default(),
            self.pid_ns.clone().unwrap_or_default(),
            self.project.display()
        )
    }

    fn parse(text: &str) -> Option<Owner> {
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
        };
        Some(Owner {
            pid: field("pid")?.parse().ok()?,
            start: field("start").and_then(|s| s.parse().ok()),
            pid_ns: field("pidns").filter(|s| !s.is_empty()).map(str::to_string),
            project: PathBuf::from(field("project")?),
        })
    }

    /// Whether the owner is provably gone: its pid, in this pid
    /// namespace, no longer runs the process that made the dir.
    fn gone(&self) -> bool {
        self.pid_ns == pid_namespace() && !self.alive()
    }

    /// Whether the owner process still runs. Without /proc to ask, it is
    /// taken as alive: a dir is never removed on a guess.
    fn alive(&self) -> bool {
        if !Path::new("/proc/self/stat").exists() {
            return true;
        }
        match start_time(self.pid) {
            None => false,
            Some(now) => self.start.is_none_or(|s| s == now),
        }
    }
}

/// This process's pid namespace, as /proc names it.
fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Field 22 of /proc/PID/stat: when the process started.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it do not.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_round_trips_and_this_process_is_alive() {
        let me = Owner::current(Path::new("/srv/p"));
        assert!(me.start.is_some());
        assert_eq!(Owner::parse(&me.to_text()), Some(me));
        let me = Owner::current(Path::new("/srv/p"));
        assert!(me.alive());
        let reused = Owner {
            start: me.start.map(|s| s + 1),
            ..me
        };
        assert!(!reused.alive(), "a reused pid is not the owner");
    }

    #[test]
    fn sweep_removes_only_dead_owners_of_this_project() {
        let base = tempfile::tempdir().expect("tmp");
        let project = Path::new("/srv/p");
        let live = Scratch::create(base.path(), "stage", project).expect("live");
        let dead = base.path().join("cutover-stage-dead");
        std::fs::create_dir(&dead).expect("mkdir");
        let ns = pid_namespace().unwrap_or_default();
        std::fs::write(
            dead.join(OWNER),
            format!("pid=4194999\nstart=1\npidns={ns}\nproject=/srv/p\n"),
        )
        .expect("w");
        let elsewhere = base.path().join("cutover-stage-elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::fs::write(
            elsewhere.join(OWNER),
            "pid=4194999\nstart=1\npidns=pid:[1]\nproject=/srv/q\n",
        )
        .expect("w");
        assert_eq!(Scratch::sweep(base.path()), vec![dead.clone()]);
        assert!(live.path().exists() && elsewhere.exists() && !dead.exists());
        let mode = std::fs::metadata(live.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
