//! A worker as something to run commands on and push trees to.
//!
//! `Host` is an enum rather than a trait object: there are exactly two
//! transports, and enum dispatch keeps the async methods free of boxing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::command::{command_line, shell_quote, Command, Output};
use crate::delta::{self, Expected, LocalTree};
use crate::error::TransportError;
use crate::rsync::{self, Drift};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownHosts {
    Strict,
    AcceptNew,
}

/// Connection settings shared by every SSH worker of a run.
#[derive(Debug, Clone)]
pub struct SshOptions {
    pub user: Option<String>,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    pub known_hosts: KnownHosts,
    pub known_hosts_file: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Where the control sockets live (a private temporary directory).
    pub control_dir: PathBuf,
}

/// One worker's address.
#[derive(Debug, Clone)]
pub struct HostSpec {
    /// The worker's name, for messages.
    pub name: String,
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub local: bool,
    /// Makes the worker refuse this run once it has seen a newer holder
    /// of the project lock.
    pub fence: Option<Fence>,
}

/// A project lock's fencing token, as a worker keeps it: `file` holds the
/// store's id and the highest token the worker has seen. Every command of
/// a fenced run first reads it: a higher token of the same store refuses
/// the command (exit 75, before it starts); a higher token of this run
/// is written there.
#[derive(Debug, Clone)]
pub struct Fence {
    pub file: String,
    pub store_id: String,
    pub token: u64,
}

/// The exit code of a command a worker refused for its outdated token.
pub const FENCED: i32 = 75;

impl Fence {
    /// The shell text that runs before each command.
    fn prelude(&self) -> String {
        let f = shell_quote(&self.file);
        let id = shell_quote(&self.store_id);
        let t = self.token;
        format!(
            "{{ read -r cutover_fid cutover_ftok < {f}; }} 2>/dev/null; \
if [ \"$cutover_fid\" = {id} ] && [ \"$cutover_ftok\" -gt {t} ] 2>/dev/null; then \
echo \"cutover: refused: this worker has seen fencing token $cutover_ftok of the project lock, newer than this run's {t}: another operator took the lock over\" >&2; exit {FENCED}; fi; \
if [ \"$cutover_fid\" != {id} ] || [ \"$cutover_ftok\" -lt {t} ] 2>/dev/null; then \
printf '%s %s\\n' {id} {t} > {f}.$$ 2>/dev/null && mv -f {f}.$$ {f} 2>/dev/null; fi; "
        )
    }
}

/// Where a host may have kept a release dir of the tree a delta push
/// makes: the newest `<dir>/*<suffix>` (release dirs end with their tree's
/// digest).
#[derive(Debug, Clone, Copy)]
pub struct Kept<'a> {
    pub dir: &'a str,
    pub suffix: &'a str,
}

impl Kept<'_> {
    /// The newest kept release on this machine, other than `base` and
    /// `new`: its path and name.
    fn newest_local(&self, base: Option<&str>, new: &str) -> Option<(String, String)> {
        std::fs::read_dir(self.dir)
            .ok()?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(self.suffix) && release_name(n))
            .map(|n| (format!("{}/{n}", self.dir), n))
            .filter(|(path, _)| Some(path.as_str()) != base && path != new)
            .max_by(|a, b| a.1.cmp(&b.1))
    }
}

/// Whether a name a host gave can be a release dir's (and be shown).
fn release_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// What a delta push made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// The new dir, from the base and the changed files, checked.
    Made,
    /// The new dir, hard-linked whole from the kept release named, checked.
    Reused(String),
    /// The new dir is not as it should be: a full push completes it.
    Differs,
}

pub enum Host {
    Local {
        name: String,
        /// The fence prelude of every command, if the run is fenced.
        fence: Option<String>,
    },
    Ssh(Box<SshHost>),
}

pub struct SshHost {
    name: String,
    host: String,
    session: openssh::Session,
    fence: Option<String>,
}

impl Host {
    /// Opens the worker's connection: for SSH, the master connection that
    /// every later command and rsync of this run reuses.
    pub async fn connect(spec: &HostSpec, opts: &SshOptions) -> Result<Host, TransportError> {
        if spec.local {
            return Ok(Host::Local {
                name: spec.name.clone(),
                fence: spec.fence.as_ref().map(Fence::prelude),
            });
        }
        let mut b = openssh::SessionBuilder::default();
        b.known_hosts_check(match opts.known_hosts {
            KnownHosts::Strict => openssh::KnownHosts::Strict,
            KnownHosts::AcceptNew => openssh::KnownHosts::Add,
        })
        .port(spec.port.unwrap_or(opts.port))
        .connect_timeout(opts.connect_timeout)
        .server_alive_interval(Duration::from_secs(15))
        // A run closes its masters; if it is killed, they exit once idle
        // instead of living forever.
        .control_persist(openssh::ControlPersist::IdleFor(
            std::num::NonZeroUsize::new(60).unwrap_or(std::num::NonZeroUsize::MIN),
        ))
        .control_directory(&opts.control_dir);
        if let Some(user) = spec.user.as_ref().or(opts.user.as_ref()) {
            b.user(user.clone());
        }
        if let Some(k) = &opts.identity_file {
            b.keyfile(k);
        }
        if let Some(f) = &opts.known_hosts_file {
            b.user_known_hosts_file(f);
        }
        if let Some(f) = &opts.config_file {
            b.config_file(f);
        }
        let session = b
            .connect_mux(&spec.host)
            .await
            .map_err(|e| TransportError::Connect {
                host: spec.name.clone(),
                detail: describe_ssh_error(&e),
            })?;
        Ok(Host::Ssh(Box::new(SshHost {
            name: spec.name.clone(),
            host: spec.host.clone(),
            session,
            fence: spec.fence.as_ref().map(Fence::prelude),
        })))
    }

    /// Whether trees reach this worker by a native copy rather than rsync.
    pub fn is_local(&self) -> bool {
        matches!(self, Host::Local { .. })
    }

    pub fn name(&self) -> &str {
        match self {
            Host::Local { name, .. } => name,
            Host::Ssh(s) => &s.name,
        }
    }

    /// `line`, after the fence's check when the run is fenced.
    fn fenced(&self, line: String) -> String {
        let fence = match self {
            Host::Local { fence, .. } => fence,
            Host::Ssh(s) => &s.fence,
        };
        match fence {
            Some(prelude) => format!("{prelude}{line}"),
            None => line,
        }
    }

    /// Runs a command; a non-zero exit is an `Ok` output, not an error.
    ///
    /// A command marked `kill_on_timeout` has its timeout enforced on the
    /// host itself (see [`Command::kill_on_timeout`]): nothing it started
    /// keeps running. This side then waits a little longer, for a host
    /// without `timeout` or a connection that hangs.
    pub async fn run(&self, cmd: &Command) -> Result<Output, TransportError> {
        let line = self.fenced(command_line(cmd));
        let wait = if cmd.kill_on_timeout {
            cmd.timeout + GRACE
        } else {
            cmd.timeout
        };
        let started = std::time::Instant::now();
        let result = self.run_line(&line, None, wait, || label(cmd)).await;
        if !cmd.kill_on_timeout || started.elapsed() < cmd.timeout {
            return result;
        }
        // Past its time, the command ended as `timeout` ends it: 124, or
        // (it ignored TERM) killed 5 s later with its whole group, `timeout`
        // included, which the connection reports as a process gone.
        let killed = match &result {
            Ok(out) => matches!(out.code, Some(TIMED_OUT) | Some(137) | None),
            Err(TransportError::Spawn { .. }) => true,
            Err(_) => false,
        };
        if killed {
            return Err(TransportError::Timeout {
                host: self.name().to_string(),
                command: label(cmd),
                after: cmd.timeout,
            });
        }
        result
    }

    /// Runs a shell line, feeding it `input` on stdin (else no stdin).
    /// Local commands get a process group of their own, so that a Ctrl-C
    /// at the terminal reaches cutover alone, which decides what stops.
    async fn run_line(
        &self,
        line: &str,
        input: Option<&[u8]>,
        timeout: Duration,
        label: impl Fn() -> String,
    ) -> Result<Output, TransportError> {
        use tokio::io::AsyncWriteExt;
        let spawn_err = |detail: String| TransportError::Spawn {
            host: self.name().to_string(),
            command: label(),
            detail,
        };
        let stdin = || match input {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        };
        // Written while the output is read, so neither side can block the other.
        async fn feed(pipe: Option<impl tokio::io::AsyncWrite + Unpin>, input: Option<&[u8]>) {
            if let (Some(mut pipe), Some(input)) = (pipe, input) {
                // A command that exits early closes its stdin: its exit says why.
                let _ = pipe.write_all(input).await;
                let _ = pipe.shutdown().await;
            }
        }
        let fut = async {
            match self {
                Host::Local { .. } => {
                    let mut child = tokio::process::Command::new("sh")
                        .arg("-c")
                        .arg(line)
                        .process_group(0)
                        .stdin(stdin())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .kill_on_drop(true)
                        .spawn()
                        .map_err(|e| spawn_err(e.to_string()))?;
                    let pipe = child.stdin.take();
                    let (_, out) = tokio::join!(feed(pipe, input), child.wait_with_output());
                    out.map(Output::from_std)
                        .map_err(|e| spawn_err(e.to_string()))
                }
                Host::Ssh(s) => {
                    let stdin = match input {
                        Some(_) => openssh::Stdio::piped(),
                        None => openssh::Stdio::null(),
                    };
                    let mut child = s
                        .session
                        .raw_command(line)
                        .stdin(stdin)
                        .stdout(openssh::Stdio::piped())
                        .stderr(openssh::Stdio::piped())
                        .spawn()
                        .await
                        .map_err(|e| spawn_err(describe_ssh_error(&e)))?;
                    let pipe = child.stdin().take();
                    let (_, out) = tokio::join!(feed(pipe, input), child.wait_with_output());
                    out.map(Output::from_std)
                        .map_err(|e| spawn_err(describe_ssh_error(&e)))
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout {
                host: self.name().to_string(),
                command: label(),
                after: timeout,
            }),
        }
    }

    /// Runs a command with `input` on its stdin (for content too large for
    /// an argument); a non-zero exit is an `Ok` output.
    pub async fn run_with_input(
        &self,
        cmd: &Command,
        input: &[u8],
    ) -> Result<Output, TransportError> {
        let line = self.fenced(command_line(cmd));
        self.run_line(&line, Some(input), cmd.timeout, || label(cmd))
            .await
    }

    /// Runs a command and hands each line of its output (stdout and
    /// stderr, as they come) to `on_line`, until it exits (no timeout:
    /// `cutover logs --follow` runs until it is stopped; dropping the
    /// future ends the command). Returns its exit code.
    pub async fn stream(
        &self,
        cmd: &Command,
        on_line: impl Fn(&str) + Send + Sync,
    ) -> Result<Option<i32>, TransportError> {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let line = self.fenced(command_line(cmd));
        let spawn_err = |detail: String| TransportError::Spawn {
            host: self.name().to_string(),
            command: label(cmd),
            detail,
        };
        async fn pump(
            pipe: Option<impl tokio::io::AsyncRead + Unpin>,
            on_line: &(impl Fn(&str) + Sync),
        ) {
            let Some(pipe) = pipe else { return };
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                on_line(&l);
            }
        }
        match self {
            Host::Local { .. } => {
                let mut child = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&line)
                    .process_group(0)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| spawn_err(e.to_string()))?;
                let (out, err) = (child.stdout.take(), child.stderr.take());
                tokio::join!(pump(out, &on_line), pump(err, &on_line));
                let status = child.wait().await.map_err(|e| spawn_err(e.to_string()))?;
                Ok(status.code())
            }
            Host::Ssh(s) => {
                let mut child = s
                    .session
                    .raw_command(&line)
                    .stdin(openssh::Stdio::null())
                    .stdout(openssh::Stdio::piped())
                    .stderr(openssh::Stdio::piped())
                    .spawn()
                    .await
                    .map_err(|e| spawn_err(describe_ssh_error(&e)))?;
                let (out, err) = (child.stdout().take(), child.stderr().take());
                tokio::join!(pump(out, &on_line), pump(err, &on_line));
                let status = child
                    .wait()
                    .await
                    .map_err(|e| spawn_err(describe_ssh_error(&e)))?;
                Ok(status.code())
            }
        }
    }

    /// Makes `remote_dir` a copy of `local` from `base`, a release dir the
    /// host already has whose files differ from `local` only in `changed`
    /// (relative paths, to send or to remove): `base` is hard-linked, the
    /// changed files travel as a tar stream, all in one remote command after
    /// `setup`. With `kept`, a release dir of `local`'s tree that the host
    /// kept is looked for first, in the same command, and hard-linked whole
    /// (the stream is not read); without a `base`, only such a release can
    /// make the dir. Says whether `remote_dir` now passes
    /// rsync's quick check against `local` (see `delta`); when it does not
    /// (the host's `base` was edited or is gone, the host lacks GNU tar or
    /// find), a `push` into the same dir completes it.
    #[allow(clippy::too_many_arguments)]
    pub async fn push_delta(
        &self,
        local: &LocalTree,
        remote_dir: &str,
        base: Option<&str>,
        changed: &[String],
        setup: Option<&Command>,
        kept: Option<Kept<'_>>,
        timeout: Duration,
    ) -> Result<Delta, TransportError> {
        if let Host::Local { .. } = self {
            let reused = kept.and_then(|k| k.newest_local(base, remote_dir));
            let from = reused.as_ref().map(|(dir, _)| dir.as_str()).or(base);
            self.push(local, remote_dir, from, setup, timeout).await?;
            let found = self.native(timeout, {
                let dir = PathBuf::from(remote_dir);
                move || crate::local::read_listing(&dir)
            });
            return Ok(if found.await? != *local.listing() {
                Delta::Differs
            } else if let Some((_, name)) = reused {
                Delta::Reused(name)
            } else {
                Delta::Made
            });
        }
        let input = delta::archive(local.root(), changed).map_err(|e| TransportError::Spawn {
            host: self.name().to_string(),
            command: "delta upload".into(),
            detail: format!("reading {}: {e}", local.root().display()),
        })?;
        let removed = changed.iter().any(|p| !local.listing().contains_key(p));
        let mut argv = vec![
            "sh".to_string(),
            "-c".into(),
            delta::SCRIPT.into(),
            "sh".into(),
            remote_dir.into(),
            base.unwrap_or_default().into(),
            if removed { "1" } else { "0" }.into(),
            kept.map(|k| k.dir).unwrap_or_default().into(),
            kept.map(|k| k.suffix).unwrap_or_default().into(),
        ];
        argv.extend(changed.iter().cloned());
        let mut line = command_line(&Command::new(argv));
        if let Some(setup) = setup {
            line = format!("{} && {line}", crate::command::shell_line(setup, false));
        }
        let line = self.fenced(line);
        let out = self
            .run_line(&line, Some(&input), timeout, || "delta upload".into())
            .await?;
        if !out.success() || delta::parse_listing(&out.stdout).as_ref() != Some(local.listing()) {
            return Ok(Delta::Differs);
        }
        // The name as the host told it, shown only if it is one a release
        // dir can have.
        let reused = out
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix(delta::REUSED))
            .map(str::trim)
            .filter(|n| release_name(n));
        Ok(match reused {
            Some(name) => Delta::Reused(name.to_string()),
            None => Delta::Made,
        })
    }

    /// Sends `local` into `remote_dir` (created if missing), hard-linking
    /// unchanged files to `link_dest` (an absolute path on the host; one
    /// that does not exist only costs the hard links).
    ///
    /// `setup` runs on the host first, and the push fails if it fails. Over
    /// ssh it runs in the same remote command as rsync's receiver (through
    /// `--rsync-path`), so it costs no round trip of its own.
    pub async fn push(
        &self,
        local: &LocalTree,
        remote_dir: &str,
        link_dest: Option<&str>,
        setup: Option<&Command>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let mut args = Vec::new();
        match (self, setup) {
            (Host::Ssh(_), Some(setup)) => {
                args.push(format!(
                    "--rsync-path={}",
                    self.fenced(format!(
                        "{} && rsync",
                        crate::command::shell_line(setup, false)
                    ))
                ));
            }
            (Host::Local { .. }, Some(setup)) => {
                let out = self.run(setup).await?;
                if !out.success() {
                    return Err(TransportError::Rsync {
                        host: self.name().to_string(),
                        code: out.code.unwrap_or(-1),
                        stderr: out.tail(5),
                    });
                }
            }
            (_, None) => {}
        }
        if let Host::Local { .. } = self {
            let (tree, dest) = (local.clone(), PathBuf::from(remote_dir));
            let link = link_dest.map(PathBuf::from);
            return self
                .native(timeout, move || {
                    crate::local::copy_tree(&tree, &dest, link.as_deref())
                })
                .await;
        }
        args.extend(rsync::push_args(
            local.root(),
            &self.rsync_dest(remote_dir),
            link_dest,
        ));
        let out = self.rsync(args, timeout).await?;
        if out.success() {
            Ok(())
        } else {
            Err(TransportError::Rsync {
                host: self.name().to_string(),
                code: out.code.unwrap_or(-1),
                stderr: out.tail(5),
            })
        }
    }

    /// Compares `local` with `remote_dir` by checksum; lists every difference.
    pub async fn diff(
        &self,
        local: &Path,
        remote_dir: &str,
        timeout: Duration,
    ) -> Result<Vec<Drift>, TransportError> {
        if let Host::Local { .. } = self {
            let (src, dest) = (local.to_path_buf(), PathBuf::from(remote_dir));
            return self
                .native(timeout, move || crate::local::content_diff(&src, &dest))
                .await;
        }
        let out = self
            .rsync(
                rsync::diff_args(local, &self.rsync_dest(remote_dir)),
                timeout,
            )
            .await?;
        if out.success() {
            Ok(rsync::parse_itemized(&out.stdout))
        } else {
            Err(TransportError::Rsync {
                host: self.name().to_string(),
                code: out.code.unwrap_or(-1),
                stderr: out.tail(5),
            })
        }
    }

    /// Compares `local` with `remote_dir` by rsync's quick check (type,
    /// mode, size, mtime to the nanosecond, symlink target), reading no
    /// file content: one `find` on the host. Hosts without GNU find get the
    /// checksum comparison of [`Host::diff`] instead.
    pub async fn quick_diff(
        &self,
        local: &LocalTree,
        remote_dir: &str,
        timeout: Duration,
    ) -> Result<Vec<Drift>, TransportError> {
        if let Host::Local { .. } = self {
            let dir = PathBuf::from(remote_dir);
            let found = self
                .native(timeout, move || crate::local::read_listing(&dir))
                .await?;
            return Ok(delta::differences(local.listing(), &found));
        }
        let dir = format!("{}/", remote_dir.trim_end_matches('/'));
        let out = self
            .run(&Command::new(["sh", "-c", delta::LIST, "sh", dir.as_str()]).timeout(timeout))
            .await?;
        match delta::parse_listing(&out.stdout).filter(|_| out.success()) {
            Some(found) => Ok(delta::differences(local.listing(), &found)),
            None => self.diff(local.root(), remote_dir, timeout).await,
        }
    }

    /// Runs file work for a local worker off the async threads, within
    /// `timeout`.
    async fn native<T: Send + 'static>(
        &self,
        timeout: Duration,
        work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, TransportError> {
        let fail = |detail: String| TransportError::Spawn {
            host: self.name().to_string(),
            command: "local copy".into(),
            detail,
        };
        match tokio::time::timeout(timeout, tokio::task::spawn_blocking(work)).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(fail(e.to_string())),
            Ok(Err(e)) => Err(fail(e.to_string())),
            // A thread cannot be stopped: say so, rather than "stopped".
            Err(_) => Err(fail(format!(
                "timed out after {}s; it may still finish in the background (into a new release dir: the running release is untouched)",
                timeout.as_secs_f64()
            ))),
        }
    }

    /// Compares `remote_dir` with what a promoted tree must look like (see
    /// [`Expected`]): one listing of the dir, no file read. A host without
    /// GNU find cannot be listed: an error.
    pub async fn compare_expected(
        &self,
        expected: &Expected,
        remote_dir: &str,
        timeout: Duration,
    ) -> Result<Vec<Drift>, TransportError> {
        let found = if let Host::Local { .. } = self {
            let dir = PathBuf::from(remote_dir);
            self.native(timeout, move || crate::local::read_listing(&dir))
                .await?
        } else {
            let dir = format!("{}/", remote_dir.trim_end_matches('/'));
            let out = self
                .run(&Command::new(["sh", "-c", delta::LIST, "sh", dir.as_str()]).timeout(timeout))
                .await?;
            match delta::parse_listing(&out.stdout).filter(|_| out.success()) {
                Some(found) => found,
                None => {
                    return Err(TransportError::Spawn {
                        host: self.name().to_string(),
                        command: format!("find {dir}"),
                        detail: format!("cannot list it (it needs GNU find): {}", out.tail(2)),
                    })
                }
            }
        };
        Ok(expected.differences(&found))
    }

    fn rsync_dest(&self, remote_dir: &str) -> String {
        match self {
            Host::Local { .. } => remote_dir.to_string(),
            Host::Ssh(s) => format!("{}:{remote_dir}", s.host),
        }
    }

    async fn rsync(&self, args: Vec<String>, timeout: Duration) -> Result<Output, TransportError> {
        let mut cmd = tokio::process::Command::new("rsync");
        if let Host::Ssh(s) = self {
            // Through the master connection: no new handshake per transfer.
            let ctl = s.session.control_socket();
            cmd.arg("-e")
                .arg(format!("ssh -o BatchMode=yes -S {}", ctl.display()));
        }
        // Its own process group: a Ctrl-C at the terminal must not cut the
        // transfer; cutover lets it finish.
        cmd.args(&args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .process_group(0);
        let out = tokio::time::timeout(timeout, cmd.output()).await;
        match out {
            Ok(Ok(o)) => Ok(Output::from_std(o)),
            Ok(Err(e)) => Err(TransportError::Spawn {
                host: self.name().to_string(),
                command: "rsync".into(),
                detail: format!("{e} (is rsync installed on this machine?)"),
            }),
            Err(_) => Err(TransportError::Timeout {
                host: self.name().to_string(),
                command: "rsync".into(),
                after: timeout,
            }),
        }
    }

    /// Closes the master connection.
    pub async fn close(self) {
        if let Host::Ssh(s) = self {
            let _ = s.session.close().await;
        }
    }
}

fn describe_ssh_error(e: &openssh::Error) -> String {
    use std::error::Error as _;
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        source = s.source();
    }
    msg.trim().to_string()
}

/// GNU `timeout`'s exit status when the command ran out of time.
const TIMED_OUT: i32 = 124;
/// How much longer than a command's own timeout this side waits for it.
const GRACE: Duration = Duration::from_secs(10);

/// A command as errors name it: the program and its first words, or the
/// first line of a script.
fn label(cmd: &Command) -> String {
    if let Some(label) = &cmd.label {
        return label.clone();
    }
    let text = match cmd.argv.as_slice() {
        [sh, c, script, ..] if sh == "sh" && c == "-c" => {
            script.lines().next().unwrap_or_default().to_string()
        }
        argv => argv.join(" "),
    };
    if text.chars().count() > 80 {
        format!("{}...", text.chars().take(77).collect::<String>())
    } else {
        text
    }
}
