//! `cutover logs`: each allocation's log, line by line, prefixed with its
//! worker: the job's `logs` Makefile target when it has one (it sees
//! `LINES` and `FOLLOW`), else the files under `shared/logs/`.

use std::collections::BTreeSet;

use cutover_transport::Command;

use crate::fleet::Fleet;
use crate::remote::LifecycleEnv;
use crate::{Context, EngineError};

/// What to show.
pub struct LogsOptions {
    pub job: String,
    /// Only these workers (`None`: every worker of the job).
    pub workers: Option<BTreeSet<String>>,
    /// Lines from the end of each log.
    pub lines: usize,
    /// Keep printing new lines until interrupted.
    pub follow: bool,
}

/// The remote script: `$1` the job dir, `$2` lines, `$3` 1 to follow.
const SCRIPT: &str = r#"d=$1 n=$2 f=$3
if [ -d "$d/current" ] && make --no-print-directory -s -n -C "$d/current" logs >/dev/null 2>&1; then
    LINES=$n FOLLOW=$f exec make --no-print-directory -s -C "$d/current" logs
fi
set -- "$d"/shared/logs/*
if [ ! -e "$1" ]; then
    echo "cutover: no \`logs\` target in the job's Makefile and nothing under $d/shared/logs/" >&2
    exit 3
fi
if [ "$f" = 1 ]; then exec tail -n "$n" -F -- "$@"; fi
exec tail -n "$n" -- "$@""#;

/// Streams the logs of every allocation of the job at once; `on_line`
/// gets (worker, line). Returns the workers whose log could not be read,
/// with why.
pub async fn logs(
    ctx: &Context,
    opts: &LogsOptions,
    on_line: impl Fn(&str, &str) + Send + Sync,
) -> Result<Vec<(String, String)>, EngineError> {
    let Some(job) = ctx.project.jobs.get(&opts.job) else {
        let known: Vec<&str> = ctx.project.jobs.keys().map(String::as_str).collect();
        return Err(EngineError::usage(
            format!("no job named `{}`", opts.job),
            format!("jobs: {}", known.join(", ")),
        ));
    };
    let all: Vec<_> = ctx.project.workers_for(job).cloned().collect();
    if let Some(wanted) = &opts.workers {
        for w in wanted {
            if !all.iter().any(|x| &x.name == w) {
                return Err(EngineError::usage(
                    format!("--workers names `{w}`, which does not run {}", job.name),
                    format!(
                        "{} runs on: {}",
                        job.name,
                        all.iter()
                            .map(|w| w.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    let workers: Vec<_> = all
        .into_iter()
        .filter(|w| opts.workers.as_ref().is_none_or(|s| s.contains(&w.name)))
        .collect();
    let records = ctx.store.allocations().await?;
    // A log may print a secret: it is redacted like every other output.
    let redactor = crate::kv::for_templates(ctx).await?.redactor();
    let on_line = move |w: &str, l: &str| on_line(w, &redactor.redact(l));
    let fleet = Fleet::lazy(ctx, workers.clone())?;
    let lines = opts.lines.to_string();
    let follow = if opts.follow { "1" } else { "0" };
    let on_line = &on_line;
    let streams = crate::join::join_all(workers.iter().map(|w| {
        let (fleet, lines, records) = (&fleet, &lines, &records);
        async move {
            let host = fleet.host(&w.name).await?;
            let rec = records
                .iter()
                .find(|r| r.job == job.name && r.worker == w.name);
            let version = rec.and_then(|r| r.version.clone()).unwrap_or_default();
            let release = rec.and_then(|r| r.release_id.clone()).unwrap_or_default();
            let env = LifecycleEnv {
                job,
                worker: w,
                release: &release,
                current_version: &version,
                new_version: &version,
            };
            let dir = w.job_dir(&job.name);
            let cmd = env.apply(
                Command::new([
                    "sh",
                    "-c",
                    SCRIPT,
                    "sh",
                    dir.as_str(),
                    lines.as_str(),
                    follow,
                ])
                .label("logs"),
            );
            match host.stream(&cmd, |l| on_line(&w.name, l)).await {
                Ok(Some(0)) => Ok(()),
                Ok(code) => Err(format!(
                    "reading the log exited {}",
                    code.map_or("by signal".into(), |c| c.to_string())
                )),
                Err(e) => Err(e.to_string()),
            }
        }
    }));
    // Following ends at the first Ctrl-C (or SIGTERM): the streams are
    // dropped, which ends them.
    let results = tokio::select! {
        r = streams => r,
        () = ctx.interrupt.signalled() => Vec::new(),
    };
    fleet.close().await;
    Ok(workers
        .iter()
        .zip(results)
        .filter_map(|(w, r)| r.err().map(|e| (w.name.clone(), e)))
        .collect())
}
