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

/// Runs on the worker right before an upload, in the upload's own remote
/// command (before rsync's receiver or the delta script): creates the
/// job's dirs. A `release` dir already there is an upload of this run cut
/// short, and is removed, unless `current` points at it: that is never
/// written into. Nothing is pruned here, so an upload that fails has
/// touched no existing release.
pub(crate) fn upload_setup(job_dir: &str, release: &str, timeout: Duration) -> Command {
    // Plain sh: in the usual case it starts no process at all.
    script(
        r#"d=$1 new=$2
{ [ -d "$d/releases" ] && [ -d "$d/shared" ]; } || mkdir -p "$d/releases" "$d/shared" || exit
[ -e "$d/releases/$new" ] || exit 0
c=$(readlink "$d/current" 2>/dev/null)
[ "${c#releases/}" != "$new" ] || { echo "cutover: $new is the running release; not writing into it" >&2; exit 1; }
rm -rf -- "$d/releases/$new""#,
        &[job_dir, release],
    )
    .timeout(timeout)
}

/// `[store] worker_fetch`: downloads an artifact from the store on the
/// worker (the URL, which carries a signature, comes on stdin as a curl
/// config line, never on a command line), checks its sha256 before
/// anything reads it, and unpacks it into a private dir under the job dir,
/// whose path it prints. What an earlier fetch left there is removed
/// first: only one deploy runs at a time.
pub(crate) fn fetch_artifact(job_dir: &str, sha256: &str, size: u64, timeout: Duration) -> Command {
    let size = size.to_string();
    script(
        r#"d=$1 sha=$2 size=$3
rm -rf -- "$d"/.fetch.* 2>/dev/null
tmp=$(mktemp -d "$d/.fetch.XXXXXXXX") || exit 90
if ! curl -fsS --max-time 600 --max-filesize "$size" -o "$tmp/a" -K - 2>"$tmp/err"; then
    echo "cutover: cannot download the artifact from the store: $(head -c 500 "$tmp/err")" >&2
    rm -rf -- "$tmp"; exit 91
fi
got=$(wc -c <"$tmp/a")
if [ "$got" -ne "$size" ]; then
    echo "cutover: the downloaded artifact is $got bytes, not $size: refused before unpacking" >&2
    rm -rf -- "$tmp"; exit 92
fi
set -- $(sha256sum "$tmp/a")
if [ "$1" != "$sha" ]; then
    echo "cutover: the downloaded artifact has sha256 $1, not $sha: refused before unpacking" >&2
    rm -rf -- "$tmp"; exit 92
fi
if ! { mkdir "$tmp/t" && zstd -dcq "$tmp/a" | tar -x -p -f - -C "$tmp/t"; }; then
    echo "cutover: cannot unpack the artifact (the worker needs zstd and GNU tar)" >&2
    rm -rf -- "$tmp"; exit 93
fi
rm -f -- "$tmp/a" "$tmp/err"
printf '%s\n' "$tmp/t""#,
        &[job_dir, sha256, &size],
    )
    .timeout(timeout)
}

/// What pruning after a switch keeps: the newest `keep` release dirs and,
/// whatever their age, the ones named here (the release the store calls
/// promoted: the last healthy one, which a failed batch or a revert
/// switches back to). `current` and the release it pointed at before the
/// switch are always kept.
pub(crate) struct Prune {
    pub keep: usize,
    pub protect: Vec<String>,
}

impl Prune {
    fn args(&self) -> [String; 2] {
        [self.keep.to_string(), self.protect.join(" ")]
    }
}

/// Deletes the oldest release dirs beyond `$KEEP`, never `$NEW`, `$p` (the
/// previous `current`) or one of `$PROTECT`. Errors are not fatal: a
/// release that could not be pruned is pruned next time.
const PRUNE: &str = r#"
( cd "$1/releases" 2>/dev/null || exit 0
  keep=$KEEP prot=" $PROTECT $NEW $p "
  set -- *
  [ -e "$1" ] || exit 0
  n=$(($# - keep))
  for r; do
    [ "$n" -gt 0 ] || break
    case "$prot" in *" $r "*) continue ;; esac
    n=$((n - 1))
    rm -rf -- "$r"
  done ) || true"#;

/// The switch of `current`, by an atomic rename of a new symlink. It prints
/// the release `current` pointed at before (the one to switch back to) as
/// the line `cutover-previous=NAME`, empty for a first release.
const SWITCH: &str = r#"p=$(readlink "$1/current" 2>/dev/null); p=${p#releases/}
test -d "$1/releases/$2" && ln -sfn "releases/$2" "$1/.current.tmp" && mv -Tf "$1/.current.tmp" "$1/current""#;
const PREVIOUS: &str = "cutover-previous=";

/// Points `current` at a release (and prunes, when asked).
pub(crate) fn switch(
    job_dir: &str,
    release: &str,
    prune: Option<&Prune>,
    timeout: Duration,
) -> Command {
    let mut text = format!("{SWITCH} || exit\necho \"{PREVIOUS}$p\"");
    let [keep, protect] = prune.map(Prune::args).unwrap_or_default();
    if prune.is_some() {
        text.push_str(&format!("\nKEEP=$3 PROTECT=$4 NEW=$2{PRUNE}"));
    }
    script(&text, &[job_dir, release, &keep, &protect])
        .timeout(timeout)
        .label("switch current")
}

/// The release `current` pointed at before a switch, from its output.
pub(crate) fn previous_release(out: &cutover_transport::Output) -> Option<String> {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(PREVIOUS))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

const SWITCH_FAILED: i32 = 97;
const SWITCH_MARK: &str = "cutover: cannot switch current";
const HEALTH_FAILED: i32 = 98;
const HEALTH_MARK: &str = "cutover: health command";

/// A health command to run right after the lifecycle target, in the same
/// remote command.
pub(crate) struct FoldedHealth<'a> {
    pub command: &'a str,
    pub timeout: Duration,
}

/// Switches `current` and runs the lifecycle target, then (if given) the
/// first attempt of the health command, all in one round trip.
///
/// Each step's failure is told apart: a failed switch exits 97 and a failed
/// health command exits 98, each with a marker line on stderr; any other
/// failure is the target's own exit status.
pub(crate) fn switch_and_run(
    env: &LifecycleEnv<'_>,
    target: &str,
    health: Option<&FoldedHealth<'_>>,
    prune: &Prune,
    promoted: Option<&str>,
    views: Option<&Views<'_>>,
    timeout: Duration,
) -> Command {
    let job_dir = env.worker.job_dir(&env.job.name);
    let mut text = format!(
        r#"{{ {SWITCH}; }} || {{ echo "{SWITCH_MARK} to $2" >&2; exit {SWITCH_FAILED}; }}
echo "{PREVIOUS}$p"
KEEP=$6 PROTECT=$7 NEW=$2{PRUNE}"#
    );
    let (command, secs) = match health {
        None if promoted.is_none() => {
            text.push_str("\nexec make --no-print-directory -C \"$1/current\" \"$3\"");
            (String::new(), String::new())
        }
        None => {
            text.push_str("\nmake --no-print-directory -C \"$1/current\" \"$3\" || exit");
            (String::new(), String::new())
        }
        Some(h) => {
            text.push_str(&format!(
                r#"
make --no-print-directory -C "$1/current" "$3" || exit
cd "$1/current" || exit {HEALTH_FAILED}
if command -v timeout >/dev/null 2>&1; then timeout -k 1 "$5" sh -c "$4"; else sh -c "$4"; fi
rc=$?
[ "$rc" -eq 0 ] || {{ echo "{HEALTH_MARK} exited $rc" >&2; exit {HEALTH_FAILED}; }}"#
            ));
            (
                h.command.to_string(),
                format!("{:.3}", h.timeout.as_secs_f64()),
            )
        }
    };
    // When nothing else decides the promotion (no other check, no hook),
    // what the worker carries is written here, once the target (and the
    // health command) passed: no round trip of its own.
    if promoted.is_some() {
        text.push_str(&format!(
            "\nprintf '%s\\n' \"$8\" > \"$1/.{PROMOTED_FILE}.tmp\" && mv -f \"$1/.{PROMOTED_FILE}.tmp\" \"$1/{PROMOTED_FILE}\" \
             || echo \"{CARRY_FAILED}\" >&2"
        ));
        // The worker's fleet view too, as `write_views` writes it.
        if views.is_some() {
            text.push_str(&format!(
                "\n( {} ) || echo \"{VIEWS_FAILED}\" >&2",
                views_inline("$9", "${10}", "${11}")
            ));
        }
    }
    let [keep, protect] = prune.args();
    let mut args = vec![
        job_dir.as_str(),
        env.release,
        target,
        &command,
        &secs,
        &keep,
        &protect,
        promoted.unwrap_or_default(),
    ];
    if let Some(v) = views.filter(|_| promoted.is_some()) {
        args.extend([v.root, v.worker_json, v.jobs_json]);
    }
    env.apply(script(&text, &args))
        .timeout(timeout + health.map_or(Duration::ZERO, |h| h.timeout))
        .label(format!("switch, make {target}"))
        .kill_on_timeout()
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

/// After `switch_and_run` with a health command: `None` if the target
/// failed (the health command did not run), else the health result.
pub(crate) fn folded_health(
    command: &str,
    out: &cutover_transport::Output,
) -> Option<Result<(), String>> {
    if out.success() {
        return Some(Ok(()));
    }
    if out.code != Some(HEALTH_FAILED) {
        return None;
    }
    let rc = out
        .stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(HEALTH_MARK)?.trim().strip_prefix("exited "))?;
    if rc == "124" {
        return Some(Err(format!("`{command}` timed out")));
    }
    // What the command printed, without cutover's own lines.
    let without = |text: &str, mark: &str| -> String {
        text.lines()
            .filter(|l| !l.starts_with(mark))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let printed = cutover_transport::Output {
        code: out.code,
        stdout: without(&out.stdout, PREVIOUS),
        stderr: without(&out.stderr, HEALTH_MARK),
    };
    Some(Err(format!("`{command}` exited {rc}: {}", printed.tail(3))))
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

/// Views whose two files, shell-quoted, take up to this many bytes travel
/// as arguments, which the script writes with shell builtins; larger ones
/// come on stdin. The whole command line is one argument of the worker's
/// shell (Linux: at most 128 KiB), and a command with a timeout holds its
/// body twice (see `cutover_transport::command_line`).
const VIEWS_INLINE_MAX: usize = 48 * 1024;

/// Whether a view is small enough for the arguments of a command.
pub(crate) fn views_fit(worker_json: &str, jobs_json: &str) -> bool {
    use cutover_transport::shell_quote;
    shell_quote(worker_json).len() + shell_quote(jobs_json).len() <= VIEWS_INLINE_MAX
}

/// A worker's fleet view, for a command that writes it from its arguments.
pub(crate) struct Views<'a> {
    pub root: &'a str,
    pub worker_json: &'a str,
    pub jobs_json: &'a str,
}

/// Shell text that writes a view: each file into `<root>/.view/` (`$t`),
/// mode 0644, by `write_worker` and `write_jobs`, then both renamed into
/// place by one `mv`, so that a reader sees each file whole, old or new.
/// Ends the shell it runs in.
fn views_text(root: &str, write_worker: &str, write_jobs: &str) -> String {
    format!(
        r#"umask 022; t="{root}/.view"
{{ [ -d "$t" ] || mkdir -p "$t"; }} && {write_worker} && {write_jobs} && exec mv -f "$t/worker.json" "$t/jobs.json" "{root}/""#
    )
}

/// [`views_text`] for a view given as positional parameters (`root`,
/// `worker`, `jobs` name them: `$1`, `${10}`): with nothing else to do it
/// costs the shell's builtins and one `mv`.
fn views_inline(root: &str, worker: &str, jobs: &str) -> String {
    views_text(
        root,
        &format!(r#"printf '%s' "{worker}" > "$t/worker.json""#),
        &format!(r#"printf '%s' "{jobs}" > "$t/jobs.json""#),
    )
}

/// What the activation command says on stderr when it could not write the
/// fleet view (the allocation is promoted all the same; the view is
/// written at the end of the deploy).
pub(crate) const VIEWS_FAILED: &str = "cutover: cannot write worker.json and jobs.json";

/// Writes `<root>/worker.json` and `<root>/jobs.json` (see `views_text`).
/// Returns the command and, for views too large to be arguments, what it
/// reads on stdin (worker.json, whose length is its second argument, then
/// jobs.json).
pub(crate) fn write_views(
    root: &str,
    worker_json: &str,
    jobs_json: &str,
    timeout: Duration,
) -> (Command, Option<String>) {
    let (cmd, input) = if views_fit(worker_json, jobs_json) {
        (
            script(
                &views_inline("$1", "$2", "$3"),
                &[root, worker_json, jobs_json],
            ),
            None,
        )
    } else {
        let text = views_text(
            "$1",
            r#"dd bs=1 count="$2" of="$t/worker.json" 2>/dev/null"#,
            r#"cat > "$t/jobs.json""#,
        );
        let cmd = script(&text, &[root, &worker_json.len().to_string()]);
        (cmd, Some(format!("{worker_json}{jobs_json}")))
    };
    let cmd = cmd
        .timeout(timeout)
        .label("write worker.json and jobs.json");
    (cmd, input)
}

/// `make -C <job>/current <target>`.
pub(crate) fn lifecycle(env: &LifecycleEnv<'_>, target: &str, timeout: Duration) -> Command {
    let current = format!("{}/current", env.worker.job_dir(&env.job.name));
    env.apply(Command::new([
        "make",
        "--no-print-directory",
        "-C",
        current.as_str(),
        target,
    ]))
    .timeout(timeout)
    .label(format!("make {target}"))
    .kill_on_timeout()
}

/// `make stop` in `current`, if there is a current release.
pub(crate) fn stop(job_dir: &str, env: Vec<(String, String)>, timeout: Duration) -> Command {
    let mut cmd = script(
        r#"if [ -e "$1/current" ]; then exec make --no-print-directory -C "$1/current" stop; fi"#,
        &[job_dir],
    )
    .timeout(timeout)
    .label("make stop")
    .kill_on_timeout();
    cmd.env = env;
    cmd
}

/// Removes a job's directory, data included, from the worker (only when
/// the operator asked: `--purge-data`, `cutover job purge`).
pub(crate) fn remove_job(job_dir: &str, timeout: Duration) -> Command {
    script(r#"rm -rf -- "$1""#, &[job_dir]).timeout(timeout)
}

/// Removes a stopped job's releases, `current` and `promoted.json` (it
/// runs nothing now) from the worker, and keeps its `shared/` data.
pub(crate) fn remove_releases(job_dir: &str, timeout: Duration) -> Command {
    script(
        r#"[ ! -e "$1" ] || rm -rf -- "$1/current" "$1/.current.tmp" "$1/releases" "$1/promoted.json""#,
        &[job_dir],
    )
    .timeout(timeout)
}

/// The file on each worker that says what an allocation runs, written at
/// promote: a lost state store is rebuilt from these.
pub(crate) const PROMOTED_FILE: &str = "promoted.json";

/// What the activation command says on stderr when it could not write
/// `promoted.json` (the target and health passed all the same).
pub(crate) const CARRY_FAILED: &str = "cutover: cannot write promoted.json";

/// Writes `<job>/promoted.json` atomically (temp file, rename).
pub(crate) fn record_promoted(job_dir: &str, json: &str, timeout: Duration) -> Command {
    script(
        &format!(
            r#"printf '%s\n' "$2" > "$1/.{PROMOTED_FILE}.tmp" && mv -f "$1/.{PROMOTED_FILE}.tmp" "$1/{PROMOTED_FILE}""#
        ),
        &[job_dir, json],
    )
    .timeout(timeout)
}

/// Prints, for each job dir under `<root>/jobs/`, a line `JOB<TAB>CURRENT<TAB>JSON`:
/// the release `current` points at and the content of promoted.json.
pub(crate) fn read_promoted(root: &str, timeout: Duration) -> Command {
    script(
        &format!(
            r#"for d in "$1"/jobs/*/; do
  [ -f "${{d}}{PROMOTED_FILE}" ] || continue
  j=${{d%/}}; j=${{j##*/}}
  c=$(readlink "$d/current" 2>/dev/null); c=${{c#releases/}}
  printf '%s\t%s\t%s\n' "$j" "$c" "$(tr -d '\n' < "${{d}}{PROMOTED_FILE}")"
done"#
        ),
        &[root],
    )
    .timeout(timeout)
}

/// Removes `promoted.json` from a job dir: it runs nothing now, or not
/// what the file says.
pub(crate) fn forget_promoted(job_dir: &str, timeout: Duration) -> Command {
    script(&format!(r#"rm -f -- "$1/{PROMOTED_FILE}""#), &[job_dir]).timeout(timeout)
}
