//! What every engine operation needs: the project, the store, the
//! workspace, who is operating, and where to report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cutover_model::{LoadOptions, Project};
use cutover_state::{LockHolder, Store};

use crate::events::Reporter;

/// Who runs the command, for the lock, the audit log and deployment records.
#[derive(Debug, Clone)]
pub struct Operator {
    pub user: String,
    pub host: String,
    pub pid: u32,
}

pub struct Context {
    pub project: Arc<Project>,
    pub store: Arc<Store>,
    /// `.cutover/` of the project.
    pub workspace: PathBuf,
    pub operator: Operator,
    /// The operator's environment, for templates' `env`.
    pub env: BTreeMap<String, String>,
    pub reporter: Arc<dyn Reporter>,
    /// Where private scratch dirs go (staging, ssh control sockets): the
    /// operator's `$XDG_RUNTIME_DIR` if there is one, else the temp dir.
    pub runtime_dir: PathBuf,
    /// Signals received: a run starts nothing new once one came.
    pub interrupt: Arc<crate::interrupt::Interrupt>,
    /// How to load the project again after git changed it (a release's pull).
    pub load: LoadOptions,
    /// Trusted and signing keys the environment names.
    pub trust_env: crate::keys::TrustEnv,
}

impl Context {
    /// The same context over the project as it is now on disk.
    pub fn reload(&self) -> Result<Context, crate::EngineError> {
        let project =
            Project::load(&self.project.root, &self.load).map_err(crate::EngineError::Config)?;
        Ok(self.with_project(project))
    }

    /// The same context, reporting to `reporter`.
    pub fn with_reporter(&self, reporter: Arc<dyn Reporter>) -> Context {
        Context {
            reporter,
            ..self.with_project((*self.project).clone())
        }
    }

    pub fn with_project(&self, project: Project) -> Context {
        Context {
            project: Arc::new(project),
            store: self.store.clone(),
            workspace: self.workspace.clone(),
            operator: self.operator.clone(),
            env: self.env.clone(),
            reporter: self.reporter.clone(),
            runtime_dir: self.runtime_dir.clone(),
            interrupt: self.interrupt.clone(),
            load: self.load.clone(),
            trust_env: self.trust_env.clone(),
        }
    }

    /// What templates see as `env`: only the variables that
    /// `[templates] env` in cutover.toml allows, never the whole environment.
    pub fn template_env(&self) -> BTreeMap<String, String> {
        self.project.config.template_env.filter(&self.env)
    }

    pub fn holder(&self, command: &str, ticket: Option<&str>) -> LockHolder {
        LockHolder {
            user: self.operator.user.clone(),
            host: self.operator.host.clone(),
            pid: self.operator.pid,
            command: command.to_string(),
            ticket: ticket.map(str::to_string),
            since: cutover_state::now_rfc3339(),
        }
    }
}
