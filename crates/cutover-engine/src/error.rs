//! Engine errors: what failed, where, and the detail the operator needs.

use cutover_model::Diagnostics;
use cutover_state::{LockHolder, StateError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The project files are invalid.
    #[error("{0}")]
    Config(Diagnostics),
    /// The command asked for something that does not exist or cannot be.
    #[error("{message}")]
    Usage {
        message: String,
        help: Option<String>,
    },
    #[error("the project lock is held by {0}")]
    Locked(Box<LockHolder>),
    #[error(transparent)]
    State(StateError),
    #[error("{0}")]
    Template(#[from] cutover_model::tree::TreeError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Verification refused what was read (a release index, an
    /// artifact): nothing was changed because of it. Exit 4.
    #[error("verification refused: {0}")]
    Refused(String),
    /// An operation ran and failed (a build).
    #[error("{0}")]
    Failed(String),
    /// A bug: cutover itself failed (a task panicked).
    #[error("internal error: {0}; please report it")]
    Internal(String),
}

impl From<StateError> for EngineError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Locked(h) => EngineError::Locked(h),
            other => EngineError::State(other),
        }
    }
}

impl EngineError {
    /// The exit code of SPEC section 11 for this error: decided here, once.
    pub fn exit_code(&self) -> u8 {
        match self {
            EngineError::Config(_)
            | EngineError::Usage { .. }
            | EngineError::Template(_)
            | EngineError::State(StateError::TooNew { .. } | StateError::Config(_)) => 2,
            EngineError::Locked(_) | EngineError::State(StateError::KeyChanged) => 3,
            EngineError::Refused(_) => 4,
            EngineError::State(_)
            | EngineError::Io { .. }
            | EngineError::Failed(_)
            | EngineError::Internal(_) => 1,
        }
    }

    /// What to do next, when there is something to say beyond the message.
    pub fn help(&self) -> Option<String> {
        use cutover_model::tree::TreeError;
        match self {
            EngineError::Usage { help, .. } => help.clone(),
            EngineError::Locked(_) => Some(
                "wait for it to finish; if that process is gone, the next run takes the lock over (see `cutover lock status`)".into(),
            ),
            EngineError::State(StateError::Db { path, .. } | StateError::Unreachable(path))
                if path.starts_with("postgres") =>
            {
                Some(
                    "check that the PostgreSQL server is up and that this machine reaches it, and the URL in CUTOVER_STATE_URL or [state] url; nothing was changed by this command".into(),
                )
            }
            EngineError::State(StateError::Secret { job, key, .. }) => Some(format!(
                "if that value is damaged, delete it (`cutover kv delete {job} {key}`), run the command again, and set the value again with `cutover kv put {job} {key} - --secret`"
            )),
            EngineError::State(StateError::KeyChanged) => Some(
                "run the command again: it reads the new key".into(),
            ),
            EngineError::State(StateError::Fenced { .. } | StateError::LockLost(_)) => Some(
                "see who holds the lock now with `cutover lock status`; once it is free, run the command again: what this run did not finish, the next one does".into(),
            ),
            EngineError::State(StateError::Db { path, .. }) => Some(format!(
                "if {path} is damaged, move it aside (with its -wal and -shm files) and run \
                 `cutover state rebuild`: the workers carry what they run"
            )),
            EngineError::State(StateError::TooNew { .. }) => Some(
                "upgrade cutover to the version your team uses (nothing was changed); an older cutover never writes to a newer store".into(),
            ),
            EngineError::Template(TreeError::Template { .. }) => Some(
                "fix the template, or set the missing value with `cutover kv put JOB KEY VALUE`".into(),
            ),
            EngineError::Template(TreeError::Refused { .. }) => Some(
                "remove or rename it: a job tree holds files, directories and symlinks with UTF-8 names, one per path on the worker".into(),
            ),
            _ => None,
        }
    }

    pub fn usage(message: impl Into<String>, help: impl Into<String>) -> Self {
        EngineError::Usage {
            message: message.into(),
            help: Some(help.into()),
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
        let context = context.into();
        move |source| EngineError::Io { context, source }
    }
}
