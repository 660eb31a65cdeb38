//! A real PostgreSQL server for a test: its own data dir (copied from a
//! cluster `initdb` made once under target/), its own port on 127.0.0.1,
//! run as the `postgres` user (the tests run as root, which PostgreSQL
//! refuses), stopped by pid when dropped.
//!
//! `CUTOVER_TEST_BACKEND=postgres` runs the whole end-to-end suite on it:
//! every test project gets a server, and its cutover.toml says
//! `backend = "postgres"`, its URL in `CUTOVER_STATE_URL`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The password of the `postgres` role over TCP (the URL carries it, and
/// no output of cutover may).
pub const PG_PASSWORD: &str = "pg-secret-4f1d";

/// Whether this run of the suite keeps its state in PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("CUTOVER_TEST_BACKEND").as_deref() == Ok("postgres")
}

pub struct PgServer {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

fn bindir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server is not installed (scripts/test.sh installs it)")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("postgres").exists())
            .collect();
        found.sort();
        found.pop().expect("no /usr/lib/postgresql/*/bin/postgres")
    })
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the postgres user")
    };
    (id("-u"), id("-g"))
}

fn as_postgres(program: &Path) -> Command {
    let (uid, gid) = postgres_ids();
    let mut cmd = Command::new(program);
    cmd.uid(uid)
        .gid(gid)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    cmd
}

fn chown_postgres(path: &Path) {
    let (uid, gid) = postgres_ids();
    let ok = Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(path)
        .status()
        .expect("chown");
    assert!(ok.success());
}

/// A cluster made by `initdb` once, copied for each server.
fn template() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pg-template");
        let data = base.join("data");
        if data.join("PG_VERSION").exists() {
            return data;
        }
        let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("pg-template.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).expect("mkdir");
        let pwfile = scratch.join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).expect("pwfile");
        chown_postgres(&scratch);
        let out = as_postgres(&bindir().join("initdb"))
            .arg("-D")
            .arg(scratch.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&pwfile);
        // Another test process may have made it meanwhile: either is good.
        if std::fs::rename(&scratch, &base).is_err() {
            let _ = std::fs::remove_dir_all(&scratch);
        }
        data
    })
}

impl PgServer {
    pub fn start() -> PgServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("cp")
            .args(["-a"])
            .arg(template())
            .arg(dir.path().join("data"))
            .status()
            .expect("cp");
        assert!(ok.success());
        chown_postgres(dir.path());
        let port = free_port();
        let mut server = PgServer {
            dir,
            port,
            child: None,
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("log")).expect("log");
        let child = as_postgres(&bindir().join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=40",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if self.psql("postgres", "SELECT 1").is_ok() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "postgres did not start: {}",
                std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `sql` in `db` over the server's socket; its output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(bindir().join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-c", sql])
            .env_remove("PGPASSWORD")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Every row of `db`, as `pg_dump` writes it, and the KV's values.
    pub fn dump(&self, db: &str) -> Vec<u8> {
        let out = Command::new(bindir().join("pg_dump"))
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "--data-only",
                db,
            ])
            .output()
            .expect("pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // pg_dump writes bytea as hex: the KV values as text too, so that
        // a plain value is found.
        let kv = self
            .psql(db, "SELECT encode(value, 'escape') FROM kv")
            .expect("kv");
        [out.stdout, kv.into_bytes()].concat()
    }

    /// A new, empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .expect("create database");
        self.url(name)
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// Stops the server at once (as a crash would) and starts it again on
    /// the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: an immediate shutdown, which ends every backend.
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The `[state]` table a test project on PostgreSQL gets, appended to its
/// cutover.toml unless it has its own.
pub fn with_backend(toml: &str) -> String {
    if on_postgres() && !toml.contains("[state]") {
        format!("{toml}\n[state]\nbackend = \"postgres\"\n")
    } else {
        toml.to_string()
    }
}
