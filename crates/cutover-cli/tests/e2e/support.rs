//! Test support: a fleet of real sshd workers on 127.0.0.x, a project
//! builder, and a runner for the real `cutover` binary.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::pgserver::{on_postgres, with_backend, PgServer};

pub const BIN: &str = env!("CARGO_BIN_EXE_cutover");

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sshd_path() -> PathBuf {
    for p in ["/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("sshd not found: run scripts/test.sh, which installs openssh-server");
}

/// The child gets SIGKILL when the thread that started it ends, so a test
/// binary that is killed (or a test that panics past its drops) leaves no
/// sshd behind.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// One worker: an sshd on its own loopback address, with its own host key
/// and deploy root. Killed (by pid) on drop.
pub struct SshWorker {
    pub name: String,
    pub ip: String,
    pub port: u16,
    pub root: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl SshWorker {
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let mut cmd = Command::new(sshd_path());
        cmd.args(["-D", "-e", "-f"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start sshd");
        self.child = Some(child);
        let addr: SocketAddr = format!("{}:{}", self.ip, self.port).parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd for {} did not come up",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A path under this worker's root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// Where `current` of a job points (the release id), if anywhere.
    pub fn current(&self, job: &str) -> Option<String> {
        let link = std::fs::read_link(self.path(&format!("jobs/{job}/current"))).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }

    pub fn releases(&self, job: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path(&format!("jobs/{job}/releases")))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Lines of the job's lifecycle log (kept in `shared/` across releases).
    pub fn events(&self, job: &str) -> Vec<String> {
        self.read(&format!("jobs/{job}/shared/events.log"))
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for SshWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// N sshd workers on 127.0.0.2, 127.0.0.3, ... with a shared client key.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub workers: Vec<SshWorker>,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub user: String,
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind(format!("{ip}:0"))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Fleet {
    pub fn start(n: usize) -> Fleet {
        Fleet::start_at(n, 2)
    }

    /// Workers on 127.0.0.{first}..; tests running in parallel use disjoint ranges.
    pub fn start_at(n: usize, first: usize) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("client_key");
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key),
        );
        let authorized = dir.path().join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized).expect("authorized_keys");
        let user = run_ok(Command::new("id").arg("-un")).trim().to_string();
        if user == "root" {
            // Debian's sshd needs its privilege separation directory.
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        // Programs put here shadow the system's on every worker (a test
        // wraps `rsync` to hold an upload at a gate).
        std::fs::create_dir_all(dir.path().join("shims")).expect("shims");
        let mut known = String::new();
        let mut workers = Vec::new();
        for i in 0..n {
            let ip = format!("127.0.0.{}", first + i);
            let port = free_port(&ip);
            let wdir = dir.path().join(format!("w{}", i + 1));
            let root = wdir.join("root");
            std::fs::create_dir_all(&root).expect("root");
            let host_key = wdir.join("host_key");
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(&host_key),
            );
            let pubkey = std::fs::read_to_string(host_key.with_extension("pub")).expect("host pub");
            let mut parts = pubkey.split_whitespace();
            known.push_str(&format!(
                "[{ip}]:{port} {} {}\n",
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default()
            ));
            let config = wdir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "ListenAddress {ip}:{port}\n\
                     HostKey {hk}\n\
                     PidFile {pid}\n\
                     AuthorizedKeysFile {auth}\n\
                     StrictModes no\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     PermitRootLogin prohibit-password\n\
                     MaxSessions 200\n\
                     MaxStartups 200\n\
                     LogLevel ERROR\n\
                     SetEnv SHLVL=1 PATH={shims}:/usr/local/bin:/usr/bin:/bin\n",
                    shims = dir.path().join("shims").display(),
                    hk = host_key.display(),
                    pid = wdir.join("sshd.pid").display(),
                    auth = authorized.display(),
                ),
            )
            .expect("sshd_config");
            let mut w = SshWorker {
                name: format!("w{}", i + 1),
                ip,
                port,
                root,
                config,
                child: None,
            };
            w.start();
            workers.push(w);
        }
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, known).expect("known_hosts");
        // The developer's ~/.ssh/config must not apply to the test fleet.
        std::fs::write(dir.path().join("ssh_config"), "").expect("ssh_config");
        Fleet {
            dir,
            workers,
            key,
            known_hosts,
            user,
        }
    }

    pub fn worker(&self, name: &str) -> &SshWorker {
        self.workers
            .iter()
            .find(|w| w.name == name)
            .expect("worker")
    }

    pub fn worker_mut(&mut self, name: &str) -> &mut SshWorker {
        self.workers
            .iter_mut()
            .find(|w| w.name == name)
            .expect("worker")
    }

    /// Puts an executable `name` with `script` first on the workers' PATH.
    pub fn shim(&self, name: &str, script: &str) {
        write_executable(&self.dir.path().join("shims").join(name), script);
    }

    /// cutover.toml settings that reach this fleet.
    pub fn project_toml(&self) -> String {
        format!(
            "name = \"test\"\n\n[ssh]\nuser = \"{}\"\nidentity_file = \"{}\"\nknown_hosts = \"strict\"\nknown_hosts_file = \"{}\"\nconfig_file = \"{}\"\nconnect_timeout = \"20s\"\ncommand_timeout = \"60s\"\n",
            self.user,
            self.key.display(),
            self.known_hosts.display(),
            self.dir.path().join("ssh_config").display()
        )
    }

    /// A workers.toml entry for each worker, with the given labels.
    pub fn workers_toml(&self, labels: &[(&str, &[&str])]) -> String {
        let mut s = String::new();
        for w in &self.workers {
            let l = labels
                .iter()
                .find(|(n, _)| *n == w.name)
                .map(|(_, l)| l.to_vec())
                .unwrap_or_default();
            s.push_str(&format!(
                "[[worker]]\nname = \"{}\"\nhost = \"{}\"\nport = {}\nroot = \"{}\"\nlabels = {:?}\n\n",
                w.name,
                w.ip,
                w.port,
                w.root.display(),
                l
            ));
        }
        s
    }
}

/// A fleet of `n` workers labelled `web`, and a project that reaches them.
pub fn web_fleet(n: usize) -> (Fleet, Project) {
    let fleet = Fleet::start(n);
    let p = Project::new();
    p.write("cutover.toml", &fleet.project_toml());
    let names: Vec<String> = fleet.workers.iter().map(|w| w.name.clone()).collect();
    let labels: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &["web"][..])).collect();
    p.write("workers.toml", &fleet.workers_toml(&labels));
    (fleet, p)
}

/// A Makefile whose targets record what ran (release, versions, a
/// timestamp) in the job's shared/events.log, and whose health target
/// passes while `health.txt` (if any) says `ok`.
pub const MAKEFILE: &str = "\
start:
\t@test -f \"$(CUTOVER_SHARED)/data.txt\" || echo \"data-$(NEW_VERSION)\" > \"$(CUTOVER_SHARED)/data.txt\"
\t@echo \"start $(CUTOVER_RELEASE) $(NEW_VERSION) $$(date +%s%N)\" >> \"$(CUTOVER_SHARED)/events.log\"
\t@echo running > \"$(CUTOVER_SHARED)/state\"
restart:
\t@echo \"restart $(CUTOVER_RELEASE) $(CURRENT_VERSION)->$(NEW_VERSION) $$(date +%s%N)\" >> \"$(CUTOVER_SHARED)/events.log\"
\t@echo running > \"$(CUTOVER_SHARED)/state\"
reload:
\t@echo \"reload $(CUTOVER_RELEASE) $$(date +%s%N)\" >> \"$(CUTOVER_SHARED)/events.log\"
stop:
\t@echo \"stop $(CUTOVER_JOB) $(CUTOVER_WORKER)\" >> \"$(CUTOVER_ROOT)/stopped.log\"
backup:
\t@id=b$$(date +%s%N); cp \"$(CUTOVER_SHARED)/data.txt\" \"$(CUTOVER_SHARED)/$$id\"; echo \"saved $$id\"; echo $$id
restore:
\t@cp \"$(CUTOVER_SHARED)/$(BACKUP)\" \"$(CUTOVER_SHARED)/data.txt\"
health:
\t@test \"$$(cat \"$(CUTOVER_SHARED)/data.txt\" 2>/dev/null)\" != corrupt
\t@test \"$$(cat health.txt 2>/dev/null || echo ok)\" = ok
\t@grep -qx running \"$(CUTOVER_SHARED)/state\"
\t@echo \"healthy $$(date +%s%N)\" >> \"$(CUTOVER_SHARED)/events.log\"
.PHONY: start restart reload stop health backup restore
";

/// Writes `text` to `dir/rel`, creating directories.
pub fn write_file(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    let text = if rel == "cutover.toml" {
        with_backend(text)
    } else {
        text.to_string()
    };
    std::fs::write(p, text).expect("write");
}

/// A job with the test Makefile and, unless the manifest has one, a health check.
pub fn write_job(dir: &Path, name: &str, manifest: &str) {
    let health = if manifest.contains("[health]") {
        String::new()
    } else {
        "\n[health]\ncommand = \"make -s health\"\nattempts = 2\ninterval = \"100ms\"\n".to_string()
    };
    write_file(
        dir,
        &format!("jobs/{name}/job.toml"),
        &format!("{manifest}{health}"),
    );
    write_file(dir, &format!("jobs/{name}/Makefile"), MAKEFILE);
}

/// Runs git in `dir` and returns its stdout; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    run_ok(Command::new("git").args(args).current_dir(dir))
        .trim()
        .to_string()
}

/// A bare `origin` whose branch is `main`, and a developer's clone of it
/// (`dev`, on `main`, with an identity), in a new temporary dir.
pub fn git_origin() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let base = tempfile::tempdir().expect("tempdir");
    let origin = base.path().join("origin.git");
    let url = origin.to_str().expect("utf8");
    git(base.path(), &["init", "-q", "--bare", "-b", "main", url]);
    git(base.path(), &["clone", "-q", url, "dev"]);
    let dev = base.path().join("dev");
    git(&dev, &["config", "user.name", "Dev"]);
    git(&dev, &["config", "user.email", "dev@example.com"]);
    git(&dev, &["checkout", "-q", "-b", "main"]);
    (base, origin, dev)
}

/// Commits everything in `dev` and pushes `main` to origin.
pub fn commit_and_push(dev: &Path, message: &str) {
    git(dev, &["add", "-A"]);
    git(dev, &["commit", "-q", "-m", message]);
    git(dev, &["push", "-q", "-u", "origin", "main"]);
}

/// Commits `files` on a feature branch of `dev`, merges it into main with
/// a merge commit, and pushes main.
pub fn merge_branch(dev: &Path, branch: &str, files: &[(&str, &str)]) {
    git(dev, &["checkout", "-q", "-b", branch]);
    for (rel, text) in files {
        write_file(dev, rel, text);
    }
    git(dev, &["add", "-A"]);
    git(dev, &["commit", "-q", "-m", &format!("work on {branch}")]);
    git(dev, &["checkout", "-q", "main"]);
    let message = format!("Merge {branch}");
    git(dev, &["merge", "-q", "--no-ff", "-m", &message, branch]);
    git(dev, &["push", "-q", "origin", "main"]);
}

/// The deploy host's clone of `origin`: a project where cutover runs.
pub fn deploy_clone(origin: &Path) -> Project {
    let p = Project::new();
    git(
        p.path(),
        &["clone", "-q", origin.to_str().expect("utf8"), "."],
    );
    git(p.path(), &["config", "user.name", "Ops"]);
    git(p.path(), &["config", "user.email", "ops@example.com"]);
    p
}

/// A project directory with helpers to write files and run cutover in it.
pub struct Project {
    pub dir: tempfile::TempDir,
    /// cutover's TMPDIR in this test: where its private scratch dirs go.
    pub tmp: tempfile::TempDir,
    /// Whether dropping the project asserts that TMPDIR is empty.
    pub check_tmp: std::cell::Cell<bool>,
    /// The umask cutover runs under, when a test sets one (`002` is a
    /// common login default).
    pub umask: std::cell::Cell<Option<&'static str>>,
    /// Environment variables every run of cutover in this project gets.
    pub env: std::cell::RefCell<Vec<(String, String)>>,
    /// The project's PostgreSQL store, when the suite runs on it.
    pub pg: Option<PgServer>,
    /// Its URL, in every run's CUTOVER_STATE_URL.
    pub state_url: Option<String>,
}

impl Drop for Project {
    /// Every test asserts that cutover cleaned up its scratch dirs (staged
    /// trees may hold secrets), unless it is already failing.
    fn drop(&mut self) {
        if !std::thread::panicking() && self.check_tmp.get() {
            let left = self.leftovers();
            assert!(left.is_empty(), "cutover left {left:?} in its TMPDIR");
        }
        // On PostgreSQL, nothing falls back to a local store.
        let on_pg = std::fs::read_to_string(self.path().join("cutover.toml"))
            .is_ok_and(|t| t.contains("backend = \"postgres\""));
        if !std::thread::panicking() && on_pg && self.pg.is_some() {
            let db = self.path().join(".cutover/state.db");
            assert!(!db.exists(), "{} was made on PostgreSQL", db.display());
        }
    }
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Writes `script` to `path`, mode 0755.
pub fn write_executable(path: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, script).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

impl Output {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Project {
    pub fn new() -> Project {
        let pg = on_postgres().then(PgServer::start);
        let state_url = pg.as_ref().map(|pg| pg.database("cutover"));
        Project::with(pg, state_url)
    }

    fn with(pg: Option<PgServer>, state_url: Option<String>) -> Project {
        Project {
            dir: tempfile::tempdir().expect("tempdir"),
            tmp: tempfile::tempdir().expect("tempdir"),
            check_tmp: std::cell::Cell::new(true),
            umask: std::cell::Cell::new(None),
            env: Default::default(),
            pg,
            state_url,
        }
    }

    /// A project whose state is in the PostgreSQL database at `url`
    /// (shared with other projects: two operators' clones).
    pub fn with_store(url: &str) -> Project {
        Project::with(None, Some(url.to_string()))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> &Self {
        write_file(self.dir.path(), rel, text);
        self
    }

    pub fn remove(&self, rel: &str) -> &Self {
        let p = self.dir.path().join(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(p).expect("rm -r");
        } else {
            std::fs::remove_file(p).expect("rm");
        }
        self
    }

    /// A job with the test Makefile and a `command` health check.
    pub fn job(&self, name: &str, manifest: &str) -> &Self {
        let health = if manifest.contains("[health]") {
            String::new()
        } else {
            "\n[health]\ncommand = \"make -s health\"\nattempts = 2\ninterval = \"100ms\"\n"
                .to_string()
        };
        self.write(
            &format!("jobs/{name}/job.toml"),
            &format!("{manifest}{health}"),
        );
        self.write(&format!("jobs/{name}/Makefile"), MAKEFILE);
        self
    }

    pub fn cutover(&self, args: &[&str]) -> Output {
        self.cutover_env(args, &[])
    }

    /// The cutover command every test runs: in the project, with its own
    /// TMPDIR and nothing of the developer's environment that cutover reads.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.umask.get() {
            Some(mask) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("umask {mask} && exec \"$0\" \"$@\""), BIN]);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("CUTOVER_USER", "tester")
            .env("TMPDIR", self.tmp.path())
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("CUTOVER_PROJECT")
            .envs(self.state_url.iter().map(|u| ("CUTOVER_STATE_URL", u)))
            .envs(
                self.env
                    .borrow()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .stdin(Stdio::null());
        cmd
    }

    pub fn cutover_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = self
            .command(args)
            .envs(env.iter().copied())
            .output()
            .expect("run cutover");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Everything the state store holds, as bytes to search: state.db and
    /// its WAL, or a dump of the PostgreSQL database.
    pub fn store_bytes(&self) -> Vec<u8> {
        if let Some(pg) = &self.pg {
            return pg.dump("cutover");
        }
        ["state.db", "state.db-wal"]
            .iter()
            .filter_map(|f| std::fs::read(self.path().join(".cutover").join(f)).ok())
            .flatten()
            .collect()
    }

    /// The one bytes value that `sql` (a query of one row and column, in
    /// the SQL both backends share) reads from the store, as stored.
    pub fn store_blob(&self, sql: &str) -> Vec<u8> {
        if let Some(pg) = &self.pg {
            let hex = pg
                .psql("cutover", &format!("SELECT encode(({sql}), 'hex')"))
                .expect("query");
            return (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
        }
        let path = self.path().join(".cutover/state.db");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("open state.db");
            let value: Vec<u8> = sqlx::query_scalar(sql)
                .fetch_one(&mut conn)
                .await
                .expect("query");
            value
        })
    }

    /// Deletes `.cutover/state.db` with its WAL files (or drops the
    /// PostgreSQL database and makes an empty one): a lost store.
    pub fn lose_store(&self) {
        if let Some(pg) = &self.pg {
            pg.psql("postgres", "DROP DATABASE cutover WITH (FORCE)")
                .expect("drop");
            pg.database("cutover");
            return;
        }
        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            let _ = std::fs::remove_file(self.path().join(".cutover").join(f));
        }
    }

    /// Starts cutover in the background (for tests that signal or kill it).
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.background(args, Stdio::piped())
    }

    /// Like [`Project::spawn`], with stderr written to `log` as it comes.
    pub fn spawn_logged(&self, args: &[&str], log: &Path) -> Child {
        self.background(args, std::fs::File::create(log).expect("log").into())
    }

    fn background(&self, args: &[&str], stderr: Stdio) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn cutover")
    }

    /// What cutover left in its TMPDIR (nothing, after a run that ended).
    pub fn leftovers(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.tmp.path())
            .expect("tmp")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A run of cutover with what it must give, in the style of just's
    /// tests: by default exit 0 and an empty stderr; `.stdout(..)` makes
    /// stdout exact. A mismatch shows a line diff.
    pub fn run<'a>(&'a self, args: &'a [&'a str]) -> Expect<'a> {
        Expect {
            p: self,
            args,
            code: 0,
            stdout: None,
            stderr: Some(String::new()),
        }
    }

    /// Runs cutover and asserts the exit code.
    #[track_caller]
    pub fn expect(&self, args: &[&str], code: i32) -> Output {
        let out = self.cutover(args);
        assert_eq!(out.code, code, "cutover {}:\n{out:?}", args.join(" "));
        out
    }
}

/// Every file under `dir`: path, mode, and content or link target.
pub fn snapshot(dir: &Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u32, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            let rel = p.strip_prefix(base).expect("prefix").display().to_string();
            let meta = std::fs::symlink_metadata(&p).expect("meta");
            let mode = meta.permissions().mode();
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&p).expect("link");
                out.push((rel, mode, t.display().to_string().into_bytes()));
            } else if meta.is_dir() {
                out.push((rel.clone(), mode, Vec::new()));
                walk(base, &p, out);
            } else {
                out.push((rel, mode, std::fs::read(&p).expect("read")));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Waits (up to 30 s) until `path` exists: how a test knows a remote step
/// has reached a gate.
#[track_caller]
pub fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A make recipe line that says it was reached (`GATES/reached`) and
/// waits for the test's `GATES/go`: where a test holds a remote step.
pub fn gate_line(gates: &Path) -> String {
    format!(
        "\t@touch {g}/reached; while [ ! -e {g}/go ]; do sleep 0.05; done\n",
        g = gates.display()
    )
}

/// Two local workers, `a` and `b`, under the project's `local-workers/`.
/// A project on two local workers under `local-workers/`.
pub fn local_project() -> Project {
    let p = Project::new();
    p.write("cutover.toml", "name = \"t\"\n");
    p.write("workers.toml", TWO_LOCAL_WORKERS);
    p
}

pub const TWO_LOCAL_WORKERS: &str = "[[worker]]\nname = \"a\"\ntransport = \"local\"\nroot = \"local-workers/a\"\n\n[[worker]]\nname = \"b\"\ntransport = \"local\"\nroot = \"local-workers/b\"\n";

/// The test Makefile with `target` held at a gate (see [`gate_line`]) in
/// the gates dir returned.
pub fn gated_makefile(p: &Project, job: &str, target: &str) -> tempfile::TempDir {
    let gates = tempfile::tempdir().expect("gates");
    p.write(
        &format!("jobs/{job}/Makefile"),
        &MAKEFILE.replacen(
            &format!("{target}:\n"),
            &format!("{target}:\n{}", gate_line(gates.path())),
            1,
        ),
    );
    gates
}

/// Waits (up to 30 s) until `done` says so.
#[track_caller]
pub fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` to a child process.
pub fn signal(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// Sends `signal` to the process `pid`.
pub fn signal_pid(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// Waits for a spawned cutover and collects what it printed.
pub fn finish(child: Child) -> Output {
    let out = child.wait_with_output().expect("wait");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether a process with this pid exists.
pub fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{}", pid.trim())).exists()
}

/// See [`Project::run`].
pub struct Expect<'a> {
    p: &'a Project,
    args: &'a [&'a str],
    code: i32,
    stdout: Option<String>,
    stderr: Option<String>,
}

impl Expect<'_> {
    pub fn status(mut self, code: i32) -> Self {
        self.code = code;
        self
    }

    pub fn stdout(mut self, text: &str) -> Self {
        self.stdout = Some(text.to_string());
        self
    }

    /// Exact stderr; `.any_stderr()` to not check it.
    pub fn stderr(mut self, text: &str) -> Self {
        self.stderr = Some(text.to_string());
        self
    }

    pub fn any_stderr(mut self) -> Self {
        self.stderr = None;
        self
    }

    #[track_caller]
    pub fn check(self) -> Output {
        let out = self.p.cutover(self.args);
        let what = format!("cutover {}", self.args.join(" "));
        assert_eq!(out.code, self.code, "{what}: exit code\n{out:?}");
        if let Some(want) = &self.stdout {
            assert!(
                out.stdout == *want,
                "{what}: stdout\n{}",
                diff(want, &out.stdout)
            );
        }
        if let Some(want) = &self.stderr {
            assert!(
                out.stderr == *want,
                "{what}: stderr\n{}",
                diff(want, &out.stderr)
            );
        }
        out
    }
}

/// Expected and actual, line by line: `-` expected only, `+` actual only.
fn diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let mut out = String::new();
    for i in 0..w.len().max(g.len()) {
        match (w.get(i), g.get(i)) {
            (Some(a), Some(b)) if a == b => out.push_str(&format!("  {a}\n")),
            (a, b) => {
                if let Some(a) = a {
                    out.push_str(&format!("- {a}\n"));
                }
                if let Some(b) = b {
                    out.push_str(&format!("+ {b}\n"));
                }
            }
        }
    }
    out
}

/// A real S3 API on a loopback port: `moto_server` from the venv that
/// scripts/test.sh installs under target/, killed (by pid) on drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let bin = root.join("target/moto-venv/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: scripts/test.sh installs moto[server] there",
            bin.display()
        );
        let port = free_port("127.0.0.1");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Runs boto3 (from the same venv) against this server: `op` is
    /// `create_bucket BUCKET`, `get BUCKET KEY` (the object on stdout) or
    /// `put BUCKET KEY` (the object on stdin).
    pub fn boto(&self, op: &[&str], input: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let script = "import sys, boto3\n\
s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n\
op = sys.argv[2]\n\
if op == 'create_bucket': s3.create_bucket(Bucket=sys.argv[3])\n\
elif op == 'get': sys.stdout.buffer.write(s3.get_object(Bucket=sys.argv[3], Key=sys.argv[4])['Body'].read())\n\
elif op == 'put': s3.put_object(Bucket=sys.argv[3], Key=sys.argv[4], Body=sys.stdin.buffer.read())\n";
        let mut child = Command::new(root.join("target/moto-venv/bin/python"))
            .arg("-c")
            .arg(script)
            .arg(&self.endpoint)
            .args(op)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run boto3");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write");
        let out = child.wait_with_output().expect("boto3");
        assert!(
            out.status.success(),
            "boto3 {op:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The AWS settings that point cutover at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `cutover serve` of a project, on a free loopback port; stopped (and
/// waited for) on drop.
pub struct Served {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Served {
    /// Starts `cutover serve --listen 127.0.0.1:0` with `env`, and waits
    /// for the line that says where it listens.
    pub fn start(p: &Project, env: &[(&str, &str)]) -> Served {
        Served::start_with(p, &[], env)
    }

    /// [`Served::start`] with more flags (`--tls-cert`, ...).
    pub fn start_with(p: &Project, flags: &[&str], env: &[(&str, &str)]) -> Served {
        use std::io::BufRead;
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let mut child = p
            .command(&args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cutover serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| panic!("cutover serve said: {line:?}"));
        Served {
            child,
            base: url.trim_end_matches("/_admin").to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (an exited child not yet waited for is gone
    /// all the same).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Stops it with SIGTERM and returns its exit code.
    pub fn stop(mut self) -> i32 {
        signal(&self.child, "TERM");
        self.child.wait().expect("wait").code().unwrap_or(-1)
    }

    /// Waits for it to exit (after a signal sent otherwise).
    pub fn stop_wait(mut self) -> i32 {
        self.child.wait().expect("wait").code().unwrap_or(-1)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client for the tests (reqwest on a runtime of its own).
pub struct Http {
    rt: tokio::runtime::Runtime,
    pub client: reqwest::Client,
}

/// An HTTP answer: status, headers and body.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}\n{}", self.status, self.body)
    }
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Http {
    pub fn new() -> Http {
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // A fresh connection per request: a server that answered early
                // (413) closes its connection, and a reused one would break.
                .pool_max_idle_per_host(0)
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    /// A client of the test's own making (one that trusts a test CA, say).
    pub fn with_client(client: reqwest::Client) -> Http {
        Http {
            client,
            ..Http::new()
        }
    }

    pub fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        self.rt.block_on(async {
            let resp = req.send().await.expect("request");
            Reply {
                status: resp.status().as_u16(),
                headers: resp.headers().clone(),
                body: resp.text().await.expect("body"),
            }
        })
    }

    /// Runs `f` on this client's runtime (for concurrent requests).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}
