//! The CLI's errors and the one place that maps them to exit codes.

use cutover_engine::EngineError;

#[derive(Debug)]
pub enum CliError {
    Engine(EngineError),
    /// Bad input that the CLI itself found.
    Usage {
        message: String,
        help: String,
    },
}

impl From<EngineError> for CliError {
    fn from(e: EngineError) -> Self {
        CliError::Engine(e)
    }
}

impl From<cutover_state::StateError> for CliError {
    fn from(e: cutover_state::StateError) -> Self {
        CliError::Engine(e.into())
    }
}

impl CliError {
    pub fn usage(message: impl Into<String>, help: impl Into<String>) -> Self {
        CliError::Usage {
            message: message.into(),
            help: help.into(),
        }
    }

    /// SPEC section 11.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage { .. } => 2,
            CliError::Engine(e) => e.exit_code(),
        }
    }

    fn kind(&self) -> &'static str {
        match self.exit_code() {
            2 => "invalid",
            3 => "locked",
            4 => "refused",
            _ => "error",
        }
    }

    fn help(&self) -> Option<String> {
        match self {
            CliError::Usage { help, .. } => Some(help.clone()),
            CliError::Engine(EngineError::Usage { help, .. }) => help.clone(),
            CliError::Engine(EngineError::Locked(_)) => Some(
                "wait for it to finish; if that process is gone, the next run takes the lock over (see `cutover lock status`)".into(),
            ),
            CliError::Engine(EngineError::State(cutover_state::StateError::Db { path, .. })) => {
                Some(format!(
                    "if {path} is damaged, move it aside (with its -wal and -shm files) and run \
                     `cutover state rebuild`: the workers carry what they run"
                ))
            }
            CliError::Engine(EngineError::Template(cutover_model::tree::TreeError::Template {
                ..
            })) => Some(
                "fix the template, or set the missing value with `cutover kv put JOB KEY VALUE`".into(),
            ),
            CliError::Engine(EngineError::Template(cutover_model::tree::TreeError::Refused {
                ..
            })) => Some(
                "remove or rename it: a job tree holds files, directories and symlinks with UTF-8 names, one per path on the worker".into(),
            ),
            _ => None,
        }
    }

    pub fn print(&self, json: bool) {
        let message = match self {
            CliError::Usage { message, .. } => message.clone(),
            CliError::Engine(e) => e.to_string(),
        };
        if json {
            let mut doc = serde_json::json!({
                "outcome": self.kind(),
                "exit_code": self.exit_code(),
                "error": message,
                "help": self.help(),
            });
            if let CliError::Engine(EngineError::Config(d)) = self {
                doc["diagnostics"] =
                    d.0.iter()
                        .map(|d| {
                            serde_json::json!({
                                "file": d.file.display().to_string(),
                                "line": d.line, "column": d.column,
                                "message": d.message, "help": d.help,
                            })
                        })
                        .collect();
            }
            println!("{doc}");
            return;
        }
        match self {
            CliError::Engine(EngineError::Config(d)) => {
                eprintln!("{d}");
                eprintln!(
                    "error: {} problem(s) found; fix them and run `cutover check`",
                    d.0.len()
                );
            }
            _ => {
                eprintln!("error: {message}");
                if let Some(h) = self.help() {
                    eprintln!("  help: {h}");
                }
            }
        }
    }
}
