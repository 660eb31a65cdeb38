//! The steps cutover runs on a worker, each one command. Scripts take their
//! data as positional parameters (`sh -c SCRIPT sh ARG...`), so no value is
//! ever spliced into shell text.

use std::time::Duration;

use cutover_model::{Job, Worker};
use cutover_transport::Command;

fn script(text: &str, args: &[&str]) -> Command {
    let mut argv = vec!["sh", "-c", text, "sh"];
    argv.extend_from_slice(args);
    Command::new(argv)
}

/// Creates the job's dirs; prints what `current` points at (empty if none).
pub(crate) fn prepare(job_dir: &str, timeout: Duration) -> Command {
    script(
        r#"mkdir -p "$1/releases" "$1/shared" && { readlink "$1/current" || true; }"#,
        &[job_dir],
    )
    .timeout(timeout)
}

/// Points `current` at a release by an atomic rename of a new symlink.
pub(crate) fn switch(job_dir: &str, release: &str, timeout: Duration) -> Command {
    script(
        r#"test -d "$1/releases/$2" && ln -sfn "releases/$2" "$1/.current.tmp" && mv -Tf "$1/.current.tmp" "$1/current""#,
        &[job_dir, release],
    )
    .timeout(timeout)
}

const SWITCH_FAILED: i32 = 97;
const SWITCH_MARK: &str = "cutover: cannot switch current";

/// Switches `current` and runs the lifecycle target, in one round trip.
/// A failed switch exits 97 with a marker line, so it is never mistaken for
/// a failed target (which runs only after the switch).
pub(crate) fn switch_and_run(env: &LifecycleEnv<'_>, target: &str, timeout: Duration) -> Command {
    let job_dir = env.worker.job_dir(&env.job.name);
    let text = format!(
        r#"{{ test -d "$1/releases/$2" && ln -sfn "releases/$2" "$1/.current.tmp" && mv -Tf "$1/.current.tmp" "$1/current"; }} || {{ echo "{SWITCH_MARK} to $2" >&2; exit {SWITCH_FAILED}; }}
exec make -C "$1/current" "$3""#
    );
    env.apply(script(&text, &[&job_dir, env.release, target]))
        .timeout(timeout)
}

/// The message for a lifecycle target that failed.
pub(crate) fn target_failed(target: &str, out: &cutover_transport::Output) -> String {
    format!(
        "make {target} exited {}: {}",
        out.code.map_or("by signal".into(), |c| c.to_string()),
        out.tail(5)
    )
}

pub(crate) fn switch_failed(out: &cutover_transport::Output) -> bool {
    out.code == Some(SWITCH_FAILED) && out.stderr.contains(SWITCH_MARK)
}

/// What the lifecycle targets and health commands see.
pub(crate) struct LifecycleEnv<'a> {
    pub job: &'a Job,
    pub worker: &'a Worker,
    pub release: &'a str,
    pub current_version: &'a str,
    pub new_version: &'a str,
}

impl LifecycleEnv<'_> {
    pub fn apply(&self, cmd: Command) -> Command {
        let dir = self.worker.job_dir(&self.job.name);
        cmd.env("CUTOVER_JOB", &self.job.name)
            .env("CUTOVER_WORKER", &self.worker.name)
            .env("CUTOVER_ROOT", &self.worker.root)
            .env("CUTOVER_SHARED", format!("{dir}/shared"))
            .env("CUTOVER_RELEASE", self.release)
            .env("CURRENT_VERSION", self.current_version)
            .env("NEW_VERSION", self.new_version)
    }
}

/// `make -C <job>/current <target>`.
pub(crate) fn lifecycle(env: &LifecycleEnv<'_>, target: &str, timeout: Duration) -> Command {
    let current = format!("{}/current", env.worker.job_dir(&env.job.name));
    env.apply(Command::new(["make", "-C", current.as_str(), target]))
        .timeout(timeout)
}

/// `make stop` in `current`, if there is a current release.
pub(crate) fn stop(job_dir: &str, env: Vec<(String, String)>, timeout: Duration) -> Command {
    let mut cmd = script(
        r#"if [ -e "$1/current" ]; then exec make -C "$1/current" stop; fi"#,
        &[job_dir],
    )
    .timeout(timeout);
    cmd.env = env;
    cmd
}

/// Removes a job's directory from the worker.
pub(crate) fn remove_job(job_dir: &str, timeout: Duration) -> Command {
    script(r#"rm -rf -- "$1""#, &[job_dir]).timeout(timeout)
}

/// Deletes the oldest release dirs beyond `keep`, never `current` or the
/// release before it (the one a failed batch switches back to).
pub(crate) fn prune(
    job_dir: &str,
    keep: usize,
    current: &str,
    previous: &str,
    timeout: Duration,
) -> Command {
    let keep = keep.to_string();
    script(
        r#"cd "$1/releases" || exit 0
ls -1 | sort -r | awk -v k="$2" 'NR > k' | while IFS= read -r r; do
  [ "$r" = "$3" ] || [ "$r" = "$4" ] || rm -rf -- "$r"
done"#,
        &[job_dir, &keep, current, previous],
    )
    .timeout(timeout)
}
