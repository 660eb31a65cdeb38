//! One module per group of commands; `run` dispatches. Each command loads
//! what it needs once through [`Session`].

mod channel;
mod demo;
mod deploy;
mod init;
mod inspect;
mod kv;
pub mod playbook;
pub mod release;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cutover_engine::app::{self, Answer, Environment, Invocation};
use cutover_engine::{Context, EngineError, Reporter};
use cutover_model::Project;
use cutover_state::Store;

use crate::args::{
    CertsCommand, Cli, Command, Global, JobCommand, KeysCommand, LockCommand, Progress,
    StateCommand, WorkerCommand,
};
use crate::output::{self, LinePrinter, LiveProgress, Silent};

pub async fn run(cli: Cli) -> Result<u8, EngineError> {
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => init::run(g, a),
        Command::Check => inspect::check(g),
        Command::Demo => demo::run(g).await,
        Command::Deploy(a) => deploy::run(&Session::open(g, "deploy").await?, a).await,
        Command::Plan(a) => release::plan(&Session::open(g, "plan").await?, a).await,
        Command::Release(c) => {
            let prefix = match &c {
                crate::args::ReleaseCommand::Run { .. } => "release-run",
                crate::args::ReleaseCommand::Revert { .. } => "release-revert",
                crate::args::ReleaseCommand::State { .. } => "release-state",
                crate::args::ReleaseCommand::ReturnToMain => "release-return-to-main",
            };
            release::run(&Session::open(g, prefix).await?, c).await
        }
        Command::Playbook(c) => playbook::run(g, c).await,
        Command::Status(a) => inspect::status(&Session::open(g, "status").await?, a).await,
        Command::Drift(f) => inspect::drift(&Session::open(g, "drift").await?, f.jobs).await,
        Command::Cat(a) => inspect::cat(&Session::open(g, "cat").await?, a).await,
        Command::Kv(c) => kv::run(&Session::open(g, "kv").await?, c).await,
        Command::Secrets(c) => kv::secrets(&Session::open(g, "secrets").await?, c).await,
        Command::Job(JobCommand::Run {
            job,
            target,
            workers,
        }) => inspect::job_run(&Session::open(g, "job").await?, &job, &target, workers).await,
        Command::Job(JobCommand::Purge { job, yes }) => {
            inspect::job_purge(&Session::open(g, "job").await?, &job, yes).await
        }
        Command::Lock(LockCommand::Status) => {
            inspect::lock_status(&Session::open(g, "lock").await?).await
        }
        Command::State(StateCommand::Rebuild) => {
            inspect::state_rebuild(&Session::open(g, "state").await?).await
        }
        Command::State(StateCommand::Migrate { to }) => {
            inspect::state_migrate(&Session::open(g, "state").await?, &to).await
        }
        Command::Publish(a) => inspect::publish(&Session::open(g, "publish").await?, a).await,
        Command::Channel(c) => channel::run(&Session::open(g, "channel").await?, c).await,
        Command::Doctor => channel::doctor(g).await,
        Command::Serve(a) => serve(g, a).await,
        Command::Keys(KeysCommand::Generate { out }) => inspect::keys_generate(g, &out),
        Command::Keys(KeysCommand::List) => {
            inspect::keys_list(&Session::open(g, "keys").await?).await
        }
        Command::Certs(CertsCommand::List) => {
            inspect::certs_list(&Session::open(g, "certs").await?).await
        }
        Command::Logs(a) => inspect::logs(&Session::open(g, "logs").await?, a).await,
        Command::Worker(WorkerCommand::Forget { name }) => {
            inspect::worker_forget(&Session::open(g, "worker").await?, &name).await
        }
        Command::Lock(LockCommand::Release { force }) => {
            inspect::lock_release(&Session::open(g, "lock").await?, force).await
        }
    }
}

/// A loaded project with its store: what every project command needs.
pub struct Session {
    pub ctx: Context,
    pub json: bool,
}

impl Session {
    pub async fn open(g: &Global, prefix: &'static str) -> Result<Session, EngineError> {
        let root = project_root(g)?;
        Session::open_at(&root, g, prefix).await
    }

    pub async fn open_at(
        root: &Path,
        g: &Global,
        prefix: &'static str,
    ) -> Result<Session, EngineError> {
        let reporter: Arc<dyn Reporter> = if g.json {
            Arc::new(Silent)
        } else {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
            match (g.progress, tty) {
                (Progress::Never, _) => Arc::new(LinePrinter::new(prefix, false)),
                (_, true) => Arc::new(LiveProgress::new(prefix)),
                // Not a terminal: `always` prints every per-host step as a line.
                (Progress::Always, false) => Arc::new(LinePrinter::new(prefix, true)),
                (Progress::Auto, false) => Arc::new(LinePrinter::new(prefix, false)),
            }
        };
        let ctx = app::open(root, environment(), reporter, crate::interrupt()).await?;
        OPENED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ctx.store.clone());
        Ok(Session { ctx, json: g.json })
    }

    /// This operator running `command` (as the app layer spells it).
    pub fn invocation_of(&self, command: String) -> Invocation {
        Invocation {
            actor: self.ctx.operator.user.clone(),
            command,
        }
    }
}

/// Every store this process opened, closed before it exits.
static OPENED: std::sync::Mutex<Vec<Arc<Store>>> = std::sync::Mutex::new(Vec::new());

/// Lets go of the locks and connections of every store opened here.
pub async fn close_stores() {
    let stores = std::mem::take(&mut *OPENED.lock().unwrap_or_else(|e| e.into_inner()));
    for store in stores {
        store.close().await;
    }
}

/// The environment of this process, read once.
pub fn environment() -> &'static Environment {
    static ENV: std::sync::OnceLock<Environment> = std::sync::OnceLock::new();
    // A variable that is not UTF-8 is not one cutover reads: skipped, not
    // a panic of every command.
    ENV.get_or_init(|| {
        Environment::new(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    })
}

pub fn project_root(g: &Global) -> Result<PathBuf, EngineError> {
    let start = match &g.project {
        Some(p) => p.clone(),
        None => std::env::current_dir().map_err(|e| {
            EngineError::usage(
                format!("cannot read the current directory: {e}"),
                "pass --project DIR",
            )
        })?,
    };
    if g.project.is_some() {
        if start.join(cutover_model::project::PROJECT_FILE).is_file() {
            return Ok(start);
        }
        return Err(EngineError::usage(
            format!("{} has no cutover.toml", start.display()),
            format!(
                "create a project there with `cutover init {}`",
                start.display()
            ),
        ));
    }
    Project::find_root(&start).ok_or_else(|| {
        EngineError::usage(
            format!("no cutover.toml in {} or any directory above it", start.display()),
            "run cutover inside a project, pass --project DIR, or create one with `cutover init DIR --example`",
        )
    })
}

pub fn load_project(root: &Path) -> Result<Project, EngineError> {
    app::load(root, environment())
}

pub fn job_set(jobs: Option<Vec<String>>) -> Option<BTreeSet<String>> {
    jobs.map(|j| j.into_iter().filter(|s| !s.is_empty()).collect())
}

/// The command line as typed, for records and the audit log.
/// A URL's password (`state migrate --to postgres://USER:PASSWORD@...`)
/// never reaches the lock record, the audit log or the feed.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| {
            if a.contains("://") && a.contains('@') {
                cutover_state::redact_url(&a)
            } else {
                a
            }
        })
        .collect();
    format!("cutover {}", args.join(" "))
}

pub fn print_answer(answer: &Answer) {
    output::json(&answer.to_json());
}

/// `cutover serve`: until a signal.
async fn serve(g: &Global, a: crate::args::ServeArgs) -> Result<u8, EngineError> {
    let root = project_root(g)?;
    let opts = cutover_serve::ServeOptions {
        root,
        listen: a.listen,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        insecure_http: a.insecure_http,
        env: environment().clone(),
        interrupt: crate::interrupt(),
    };
    cutover_serve::serve(opts, |url| {
        println!("cutover serve: listening on {url} (Ctrl-C stops)");
    })
    .await?;
    println!("cutover serve: stopped");
    Ok(0)
}
