//! Deploy hooks: operator scripts run on this machine, in the project dir.

use std::path::Path;
use std::time::Duration;

use cutover_transport::{Command, Host};

pub(crate) struct HookEnv<'a> {
    pub project: &'a Path,
    pub job: &'a str,
    pub event: &'a str,
    pub workers: Vec<String>,
    pub current_version: &'a str,
    pub new_version: &'a str,
}

/// Runs `hook` with `sh -c`; an error carries the tail of its output.
pub(crate) async fn run(hook: &str, env: &HookEnv<'_>, timeout: Duration) -> Result<(), String> {
    let cmd = Command::shell(hook)
        .cwd(env.project.display().to_string())
        .env("CUTOVER_PROJECT", env.project.display().to_string())
        .env("CUTOVER_JOB", env.job)
        .env("CUTOVER_EVENT", env.event)
        .env("CUTOVER_WORKERS", env.workers.join(" "))
        .env("CURRENT_VERSION", env.current_version)
        .env("NEW_VERSION", env.new_version)
        .timeout(timeout)
        .label(format!("hook {hook}"))
        .kill_on_timeout();
    let local = Host::Local {
        name: "this machine".into(),
        fence: None,
    };
    let out = local.run(&cmd).await.map_err(|e| e.to_string())?;
    if out.success() {
        Ok(())
    } else {
        Err(format!(
            "hook `{hook}` ({}) exited {}: {}",
            env.event,
            out.code.map_or("by signal".into(), |c| c.to_string()),
            out.tail(5)
        ))
    }
}
