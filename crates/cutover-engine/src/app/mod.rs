//! The application layer: what a command does around its engine call, the
//! same whichever front end asked. The CLI parses arguments and prints; the
//! server parses requests and renders pages. Both read the process
//! environment once into an [`Environment`], open the project with
//! [`open`], name who acts in an [`Invocation`], call the operations here,
//! and get back one [`Answer`]: the result document that renders as JSON
//! and carries the exit code (and so the HTTP status).
//!
//! The operations write the audit log and the shared event feed
//! themselves, so a UI action and the same CLI command leave the same
//! records, differing only in the actor.

pub mod admin;
mod answer;
pub mod env;
pub mod feed;
mod ops;
pub mod overview;
pub mod playbooks;
mod release;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cutover_model::{LoadOptions, Project, StateBackend};
use cutover_state::{PgStore, SqliteStore, Store};

pub use answer::Answer;
pub use ops::{channel, channel_command, channel_status, deploy, deploy_command, DeployRequest};
pub use overview::{audit_lines, deployments, overview, releases, Overview};
pub use release::{release_revert, release_run};

use crate::interrupt::Interrupt;
use crate::{Context, EngineError, Operator, Reporter};

/// The process environment as a front end read it, once.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    pub fn new(vars: impl IntoIterator<Item = (String, String)>) -> Environment {
        Environment {
            vars: vars.into_iter().collect(),
        }
    }

    /// A variable's value; an empty one counts as unset.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn flag(&self, name: &str) -> bool {
        self.var(name) == Some("1")
    }

    pub fn production(&self) -> bool {
        self.var(env::CUTOVER_ENV) == Some("production")
    }

    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            home: self.var(env::HOME).map(PathBuf::from),
        }
    }

    /// `$XDG_RUNTIME_DIR` when it is an absolute, existing dir; else the
    /// system temp dir. Either way cutover makes its own 0700 dirs in it.
    pub fn runtime_dir(&self) -> PathBuf {
        self.var(env::XDG_RUNTIME_DIR)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_dir())
            .unwrap_or_else(std::env::temp_dir)
    }

    /// Who runs this process: `CUTOVER_USER`, else `USER`, else the account.
    pub fn operator(&self) -> Operator {
        // A name with a control character (a newline, an escape) would
        // forge a line in the feed or drive a terminal: each one is shown
        // as U+FFFD.
        let user = self
            .var(env::CUTOVER_USER)
            .or_else(|| self.var(env::USER))
            .map(str::to_string)
            .unwrap_or_else(account_name)
            .chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Operator {
            user,
            host,
            pid: std::process::id(),
        }
    }

    /// The keys the environment names (and whether it is production).
    pub fn trust_env(&self) -> crate::keys::TrustEnv {
        crate::keys::TrustEnv {
            paths: self
                .var(env::CUTOVER_TRUST_PUBLIC_KEYS_PATH)
                .map(str::to_string),
            json: self
                .var(env::CUTOVER_TRUST_PUBLIC_KEYS_JSON)
                .map(str::to_string),
            signing_key_file: self
                .var(env::CUTOVER_SIGNING_KEY_FILE)
                .map(|v| {
                    v.split(':')
                        .filter(|p| !p.is_empty())
                        .map(PathBuf::from)
                        .collect()
                })
                .unwrap_or_default(),
            insecure_dev_keys: self.flag(env::CUTOVER_ALLOW_INSECURE_DEV_KEYS),
            production: self.production(),
        }
    }

    /// How `cutover serve` would authenticate, for doctor.
    pub fn admin_env(&self) -> crate::doctor::AdminEnv {
        crate::doctor::AdminEnv {
            unauthenticated: self.flag(env::CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN),
            token_source: [
                env::CUTOVER_ADMIN_TOKEN,
                env::CUTOVER_ADMIN_TOKEN_FILE,
                env::CUTOVER_ADMIN_TOKENS_FILE,
            ]
            .into_iter()
            .find(|n| self.var(n).is_some())
            .map(str::to_string),
            token_problem: None,
        }
    }
}

/// This process's account name from the system (`/etc/passwd`), for a
/// session without `$USER` (cron, systemd, `env -i`); else `uid N`.
fn account_name() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Who acts, and the command they ran (as the CLI would spell it), for the
/// lock, the records, the audit log and the event feed.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub actor: String,
    pub command: String,
}

impl Invocation {
    /// Records this command's audit line (see [`crate::audit::record`]).
    pub async fn audit(&self, ctx: &Context, outcome: &str, rc: u8, detail: &str) {
        let op = Operator {
            user: self.actor.clone(),
            ..ctx.operator.clone()
        };
        crate::audit::record(ctx, &op, &self.command, outcome, i32::from(rc), detail).await;
    }
}

/// Loads the project at `root` and opens its state store.
pub async fn open(
    root: &Path,
    environment: &Environment,
    reporter: Arc<dyn Reporter>,
    interrupt: Arc<Interrupt>,
) -> Result<Context, EngineError> {
    let project = load(root, environment)?;
    let workspace = root.join(".cutover");
    let store = open_store(&project.config.state, &workspace, environment).await?;
    let ctx = Context {
        project: Arc::new(project),
        store: Arc::new(store),
        workspace,
        operator: environment.operator(),
        env: environment.vars().clone(),
        reporter,
        runtime_dir: environment.runtime_dir(),
        interrupt,
        load: environment.load_options(),
        trust_env: environment.trust_env(),
    };
    if ctx.store.is_shared() {
        bind_to_project(&ctx).await?;
    }
    // A shared store's release files, copied here for what reads them.
    crate::release::pull_files(&ctx).await?;
    Ok(ctx)
}

/// A shared store belongs to one project, named on its first use: a
/// store of another project (a leftover CUTOVER_STATE_URL) would have the
/// deploy stop every job this project lacks.
async fn bind_to_project(ctx: &Context) -> Result<(), EngineError> {
    const KEY: &str = "project";
    let name = &ctx.project.config.name;
    match ctx.store.meta_get(KEY).await? {
        Some(owner) if owner == *name => Ok(()),
        Some(owner) => Err(EngineError::usage(
            format!(
                "the state store at {} belongs to project `{owner}`, not `{name}`: nothing was done",
                ctx.store.location()
            ),
            "point CUTOVER_STATE_URL (or [state] url) at this project's own database; if the project was renamed, set `name` in cutover.toml back",
        )),
        None => Ok(ctx.store.meta_put(KEY, name).await?),
    }
}

/// Opens the store `[state]` names: `.cutover/state.db`, or PostgreSQL at
/// `CUTOVER_STATE_URL`, else `[state] url`.
pub async fn open_store(
    backend: &StateBackend,
    workspace: &Path,
    environment: &Environment,
) -> Result<Store, EngineError> {
    // The operator's own files (the audit copy, the secret key, the
    // feed) live here whichever backend holds the state.
    std::fs::create_dir_all(workspace)
        .map_err(EngineError::io(format!("making {}", workspace.display())))?;
    match backend {
        StateBackend::Sqlite => Ok(Store::Sqlite(SqliteStore::open(workspace).await?)),
        StateBackend::Postgres { url, lease } => {
            let Some(url) = environment.var(env::CUTOVER_STATE_URL).or(url.as_deref()) else {
                return Err(EngineError::usage(
                    "cutover.toml: [state] backend = \"postgres\" has no url, and CUTOVER_STATE_URL is not set",
                    "set CUTOVER_STATE_URL=postgres://USER:PASSWORD@HOST/DB (keeps the password out of git), or url = \"postgres://USER@HOST/DB\" under [state]",
                ));
            };
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(EngineError::usage(
                    format!(
                        "the PostgreSQL store's URL `{}` does not start with postgres://",
                        cutover_state::redact_url(url)
                    ),
                    "write it as postgres://USER:PASSWORD@HOST:PORT/DB",
                ));
            }
            Ok(Store::Postgres(Box::new(PgStore::open(url, *lease).await?)))
        }
    }
}

pub fn load(root: &Path, environment: &Environment) -> Result<Project, EngineError> {
    Project::load(root, &environment.load_options()).map_err(EngineError::Config)
}

/// HEAD of the project's git repository and whether the tree is dirty.
pub fn git_head(root: &Path) -> (Option<String>, bool) {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "HEAD"]);
    let dirty = head.is_some() && git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    (head, dirty)
}

/// Spells `value` as one shell word, for a command line that is shown or
/// recorded (never run): bare when plain, else single-quoted.
pub fn shell_word(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@:+/=,".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}
