//! What cutover says equals what it does: every change that the
//! fingerprint covers rolls the job out, and a plan printed is the plan run.

use crate::support::*;

fn kinds(events: &[String]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| e.split_whitespace().next())
        .filter(|k| *k != "healthy")
        .collect()
}

/// A file matched by `watch` (outside the job dir, never shipped) and a
/// job.toml change other than `version` are part of the fingerprint: each
/// rolls the job out, by the restart policy in force.
#[test]
fn a_watched_file_or_a_manifest_change_rolls_the_job_out() {
    let (fleet, p) = web_fleet(1);
    let manifest = |policy: &str| {
        format!("version = \"1\"\nrestart_policy = \"{policy}\"\nwatch = [\"protos/**\"]\n")
    };
    p.job("api", &manifest("reload"));
    p.write("protos/api.proto", "message A {}\n");
    p.write("docs/notes.md", "not watched\n");
    p.expect(&["deploy"], 0);

    p.write("protos/api.proto", "message A { int32 x = 1; }\n");
    p.write("docs/notes.md", "still not watched\n");
    let plan = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        plan.stdout.contains("reload") && plan.stdout.contains("changed: protos/api.proto"),
        "{plan:?}"
    );
    p.expect(&["deploy"], 0);
    assert_eq!(
        kinds(&fleet.worker("w1").events("api")),
        ["start", "reload"]
    );
    assert!(
        !fleet.worker("w1").path("jobs/api/current/protos").exists(),
        "a watched file is fingerprinted, not shipped"
    );

    // job.toml: a new restart policy (same version) rolls out, and the new
    // policy decides how.
    p.job("api", &manifest("always"));
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("1 restart"), "{out:?}");
    assert_eq!(
        kinds(&fleet.worker("w1").events("api")),
        ["start", "reload", "restart"]
    );
    let plan = p.expect(&["deploy", "--dry-run"], 0);
    assert!(plan.stdout.contains("unchanged"), "{plan:?}");

    // An unwatched file outside the job changes nothing.
    p.write("docs/notes.md", "edited again\n");
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
}

/// The action list of a plan in a JSON report: one line per stop and per
/// allocation (job, worker, action, reason, batch). A job with a
/// `pre_deploy` hook is left out: only a real run runs the hook, which may
/// change the plan (the dry run says so).
fn plan_lines(plan: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for s in plan["stops"].as_array().into_iter().flatten() {
        out.push(format!("stop {} {} {}", s["job"], s["worker"], s["why"]));
    }
    for wave in plan["waves"].as_array().into_iter().flatten() {
        for job in wave["jobs"].as_array().into_iter().flatten() {
            if job["pre_deploy"] == true {
                continue;
            }
            for a in job["allocations"].as_array().into_iter().flatten() {
                out.push(format!(
                    "{} {} {} {} batch={}",
                    job["job"], a["worker"], a["action"], a["why"], a["batch"]
                ));
            }
        }
    }
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// `deploy --dry-run` prints the plan the deploy then runs, line for line.
#[test]
fn a_deploy_runs_the_plan_its_dry_run_printed() {
    let (_fleet, p) = web_fleet(2);
    p.job("api", "version = \"1\"\nmax_concurrent_upgrades = 1\n");
    p.job("web", "version = \"1\"\ndepends_on = [\"api\"]\n");
    p.expect(&["deploy"], 0);
    p.write("jobs/api/conf.txt", "v2\n");
    p.job("web", "version = \"2\"\ndepends_on = [\"api\"]\n");
    let dry = plan_lines(&json(&p.expect(&["--json", "deploy", "--dry-run"], 0))["report"]["plan"]);
    let real = plan_lines(&json(&p.expect(&["--json", "deploy"], 0))["report"]["plan"]);
    assert_eq!(dry.len(), 4, "{dry:#?}");
    assert_eq!(dry, real);
}

/// `plan --incoming`, `release run --dry-run` and the release's migrate
/// phase plan the same actions for the same merge, on a clone made (and
/// run) under umask 002, where a checkout's modes differ from git's
/// defaults.
#[test]
fn a_release_runs_the_plan_its_dry_run_printed() {
    let fleet = Fleet::start(2);
    let (_base, origin, dev) = git_origin();
    let labels: Vec<(&str, &[&str])> = vec![("w1", &["web"][..]), ("w2", &["web"][..])];
    write_file(&dev, "cutover.toml", &fleet.project_toml());
    write_file(&dev, "workers.toml", &fleet.workers_toml(&labels));
    write_file(&dev, ".gitignore", ".cutover/\n");
    write_job(&dev, "api", "version = \"1\"\nselectors = [\"web\"]\n");
    write_job(&dev, "web", "version = \"1\"\nselectors = [\"web\"]\n");
    commit_and_push(&dev, "initial");
    let p = Project::new();
    run_ok(
        std::process::Command::new("sh")
            .args([
                "-c",
                "umask 002 && git clone -q \"$0\" .",
                origin.to_str().expect("utf8"),
            ])
            .current_dir(p.path()),
    );
    git(p.path(), &["config", "user.name", "Ops"]);
    git(p.path(), &["config", "user.email", "ops@example.com"]);
    p.umask.set(Some("002"));
    p.expect(&["deploy"], 0);

    merge_branch(&dev, "feat/7", &[("jobs/api/conf.txt", "v2\n")]);
    git(p.path(), &["fetch", "-q", "origin"]);
    let planned = json(&p.expect(&["--json", "plan", "--incoming", "origin/main"], 0));
    let dry = json(&p.expect(&["--json", "release", "run", "7", "--dry-run"], 0));
    let real = json(&p.expect(&["--json", "release", "run", "7"], 0));
    let planned = plan_lines(&planned["report"]["plan"]);
    let dry = plan_lines(&dry["report"]["plan"]);
    let real = plan_lines(&real["report"]["plan"]);
    assert_eq!(
        dry,
        [
            "\"api\" \"w1\" \"restart\" \"changed: conf.txt\" batch=1",
            "\"api\" \"w2\" \"restart\" \"changed: conf.txt\" batch=2",
        ],
        "{dry:#?}"
    );
    assert_eq!(planned, dry);
    assert_eq!(real, dry);
}

/// `pre_deploy` runs before anything is rendered or planned, whether or
/// not the job has work: the KV it writes reaches the templates and the
/// `rollout_order` of the same deploy.
#[test]
fn pre_deploy_writes_what_the_same_deploy_renders_and_orders() {
    let (fleet, p) = web_fleet(2);
    let hook = format!(
        "\"{BIN}\" kv put api greeting \"hello $NEW_VERSION\" >/dev/null && \"{BIN}\" kv put api rollout_order \"w2 w1\" >/dev/null && echo ran >> pre.log"
    );
    p.write("hooks/pre.sh", &hook);
    let manifest = |v: &str| {
        format!("version = \"{v}\"\nmax_concurrent_starts = 1\nmax_concurrent_upgrades = 1\n[hooks]\npre_deploy = \"sh hooks/pre.sh\"\n")
    };
    p.job("api", &manifest("1"));
    p.write("jobs/api/greeting.txt.tpl", "{{ kv.greeting }}\n");
    let dry = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        dry.stdout
            .contains("not planned: a real run runs pre_deploy first")
            && dry.stdout.contains("undefined variable kv.greeting"),
        "a dry run runs no hook: {dry:?}"
    );
    let out = p.expect(&["--json", "deploy"], 0);
    let report = json(&out);
    let order: Vec<String> = report["report"]["plan"]["waves"][0]["jobs"][0]["allocations"]
        .as_array()
        .expect("allocations")
        .iter()
        .map(|a| format!("{}:{}", a["worker"], a["batch"]))
        .collect();
    assert_eq!(order, ["\"w2\":1", "\"w1\":2"]);
    assert_eq!(
        fleet.worker("w1").read("jobs/api/current/greeting.txt"),
        "hello 1\n"
    );

    // Before the skip check: it runs on a deploy with nothing to do too.
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(p.path().join("pre.log")).expect("log"),
        "ran\nran\n"
    );
    let dry = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        dry.stdout.contains("note: api has a pre_deploy hook"),
        "{dry:?}"
    );
}

/// A failed `post_deploy` is recorded and run again by the next deploy,
/// alone when nothing else changed, until it succeeds.
#[test]
fn a_failed_post_deploy_runs_again_on_the_next_deploy() {
    let (fleet, p) = web_fleet(1);
    p.write(
        "hooks/post.sh",
        "echo \"post $CUTOVER_WORKERS\" >> post.log; test -f post-ok || { echo 'notify: 503' >&2; exit 7; }\n",
    );
    p.job(
        "api",
        "version = \"1\"\n[hooks]\npost_deploy = \"sh hooks/post.sh\"\n",
    );
    let out = p.expect(&["deploy"], 1);
    assert!(
        out.all().contains("notify: 503")
            && out.all().contains("the next deploy runs post_deploy again"),
        "{out:?}"
    );
    assert!(
        fleet.worker("w1").current("api").is_some(),
        "the rollout itself is promoted"
    );

    let dry = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        dry.stdout.contains("post_deploy")
            && dry.stdout.contains("retry: the last post_deploy failed"),
        "{dry:?}"
    );
    assert!(
        dry.stdout.contains("1 unchanged, 1 post_deploy retry"),
        "{dry:?}"
    );
    // Still failing: still failed, still due.
    p.expect(&["deploy"], 1);
    std::fs::write(p.path().join("post-ok"), "").expect("fix");
    let out = p.expect(&["deploy"], 0);
    assert!(!out.stdout.contains("nothing to do"), "{out:?}");
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
    let log = std::fs::read_to_string(p.path().join("post.log")).expect("log");
    assert_eq!(log, "post w1\npost w1\npost w1\n");
    assert_eq!(
        fleet
            .worker("w1")
            .events("api")
            .iter()
            .filter(|e| e.starts_with("start"))
            .count(),
        1
    );
}

/// `drift` reports both kinds apart: files on the worker that differ from
/// what was promoted (named), and a project that moved on since.
#[test]
fn drift_names_tampered_files_even_when_the_project_moved_on() {
    let (fleet, p) = web_fleet(2);
    p.job("api", "version = \"1\"\n");
    p.write("jobs/api/app.conf", "port = 1\n");
    p.expect(&["deploy"], 0);
    std::fs::write(
        fleet.worker("w1").path("jobs/api/current/app.conf"),
        "port = 666\n",
    )
    .expect("tamper");
    p.write("jobs/api/app.conf", "port = 2\n");
    let out = p.expect(&["drift"], 4);
    assert!(
        out.stdout.contains("api@w1: DRIFT in 1 file(s):")
            && out.stdout.contains("modified app.conf")
            && out
                .stdout
                .contains("and the project has changed since the promote"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("api@w2: outdated: the project has changed"),
        "{out:?}"
    );
    let doc = json(&p.expect(&["--json", "drift"], 4));
    let w1 = &doc["allocations"][0];
    assert_eq!(
        (w1["state"].as_str(), w1["outdated"].as_bool()),
        (Some("drifted"), Some(true))
    );
    assert_eq!(w1["files"][0]["path"], "app.conf");
}

/// `status` checks health now, not as recorded at the last deploy, and
/// shows each allocation's drift; `--no-health` shows the recorded health.
#[test]
fn status_shows_live_health_and_drift() {
    let (fleet, p) = web_fleet(2);
    p.job("api", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    let row = |out: &Output, w: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(&format!("api  {w}")))
            .unwrap_or_default()
            .to_string()
    };
    let out = p.expect(&["status"], 0);
    assert!(
        row(&out, "w1").contains("healthy") && row(&out, "w1").contains("clean"),
        "{out:?}"
    );

    // w1's service dies and a file is edited there; w2 is untouched.
    std::fs::write(
        fleet.worker("w1").path("jobs/api/shared/state"),
        "stopped\n",
    )
    .expect("kill");
    std::fs::write(
        fleet.worker("w1").path("jobs/api/current/Makefile"),
        "edited\n",
    )
    .expect("edit");
    let out = p.expect(&["status"], 0);
    assert!(row(&out, "w1").contains("unhealthy"), "{out:?}");
    assert!(row(&out, "w1").contains("1 file(s): Makefile"), "{out:?}");
    assert!(
        row(&out, "w2").contains("healthy") && row(&out, "w2").contains("clean"),
        "{out:?}"
    );

    let out = p.expect(&["status", "--no-health"], 0);
    assert!(
        row(&out, "w1").contains("not checked (last recorded: healthy)"),
        "{out:?}"
    );
    let doc = json(&p.expect(&["--json", "status"], 0));
    assert_eq!(doc["allocations"][0]["drift"], "1 file(s): Makefile");
}

/// `deploy --verify` never calls an unreachable worker verified: exit 1,
/// naming it.
#[test]
fn verify_with_unreachable_workers_fails_naming_them() {
    let (mut fleet, p) = web_fleet(2);
    p.job("api", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    fleet.worker_mut("w1").stop();
    fleet.worker_mut("w2").stop();
    let out = p.expect(&["deploy", "--verify"], 1);
    assert!(
        out.stdout.contains("NOT verified (unreachable): api@w1")
            && out.stdout.contains("NOT verified (unreachable): api@w2")
            && !out.stdout.contains("up to date"),
        "{out:?}"
    );
    let doc = json(&p.expect(&["--json", "deploy", "--verify"], 1));
    assert_eq!(doc["outcome"], "failed");
    assert_eq!(
        doc["report"]["unverified"].as_array().map(Vec::len),
        Some(2)
    );
}

/// Small truths: a usage error under `--json` is one JSON document;
/// `cat deployments --jobs` filters; the audit log names the account when
/// `$USER` is unset.
#[test]
fn json_usage_errors_deployment_filters_and_the_audit_user() {
    let (_fleet, p) = web_fleet(1);
    let out = p.expect(&["--json", "deploy", "--no-such-flag"], 2);
    let doc = json(&out);
    assert_eq!(
        (doc["outcome"].as_str(), doc["exit_code"].as_i64()),
        (Some("invalid"), Some(2))
    );
    assert!(
        doc["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--no-such-flag"),
        "{out:?}"
    );

    p.job("api", "version = \"1\"\n");
    p.job("web", "version = \"1\"\n");
    p.expect(&["deploy", "--jobs", "api"], 0);
    p.expect(&["deploy", "--jobs", "web"], 0);
    let out = p.expect(&["cat", "deployments", "--jobs", "web"], 0);
    let rows: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{out:?}");
    assert!(
        rows[0].starts_with("2 ") && rows[0].contains(" web "),
        "{out:?}"
    );

    p.job("api", "version = \"2\"\n");
    let account = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("id");
    let account = String::from_utf8_lossy(&account.stdout).trim().to_string();
    let out = p.cutover_env(&["deploy"], &[("CUTOVER_USER", ""), ("USER", "")]);
    assert_eq!(out.code, 0, "{out:?}");
    let audit = std::fs::read_to_string(p.path().join(".cutover/audit.log")).expect("audit");
    let last = audit.lines().last().unwrap_or_default();
    assert!(last.contains(&format!("user={account}")), "{last}");
}

/// A worker removed from workers.toml that cannot be reached is orphaned:
/// warned about by every deploy and by status, failing none, until
/// `cutover worker forget` drops it.
#[test]
fn an_unreachable_removed_worker_is_orphaned_until_forgotten() {
    let (mut fleet, p) = web_fleet(2);
    p.job("api", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    let toml = fleet.workers_toml(&[("w1", &["web"][..])]);
    let w1_only = toml.split("\n\n").next().expect("w1 block");
    p.write("workers.toml", &format!("{w1_only}\n"));
    fleet.worker_mut("w2").stop();
    let out = p.expect(&["deploy"], 0);
    assert!(
        out.stdout
            .contains("warning: api@w2: orphaned: removed from workers.toml and unreachable")
            && out.stdout.contains("cutover worker forget w2"),
        "{out:?}"
    );
    let status = p.expect(&["status"], 0);
    assert!(status.stdout.contains("orphaned"), "{status:?}");

    // An unrelated deploy still succeeds, and still warns.
    p.job("api", "version = \"2\"\n");
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("api@w2: orphaned"), "{out:?}");

    let out = p.expect(&["worker", "forget", "w1"], 2);
    assert!(
        out.stderr.contains("worker `w1` is in workers.toml"),
        "{out:?}"
    );
    let out = p.expect(&["worker", "forget", "w2"], 0);
    assert!(out.stdout.contains("forgot w2"), "{out:?}");
    let out = p.expect(&["deploy"], 0);
    assert!(
        out.stdout.contains("nothing to do") && !out.stdout.contains("orphaned"),
        "{out:?}"
    );
    assert!(!p.expect(&["status"], 0).stdout.contains("w2"));
    p.expect(&["worker", "forget", "w2"], 2);
}

/// When reconcile stops some allocations of a job, the ones left are
/// health-checked before the waves; unhealthy, the deploy stops there.
#[test]
fn survivors_of_a_reconcile_are_health_checked_before_the_waves() {
    let (fleet, p) = web_fleet(2);
    p.job("api", "version = \"1\"\nselectors = [\"web\"]\n");
    p.job("web", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    // w2 leaves the api pool; w1, which keeps it, is down.
    p.write(
        "workers.toml",
        &fleet.workers_toml(&[("w1", &["web"][..]), ("w2", &[][..])]),
    );
    std::fs::write(
        fleet.worker("w1").path("jobs/api/shared/state"),
        "stopped\n",
    )
    .expect("down");
    p.job("web", "version = \"2\"\n");
    let out = p.expect(&["deploy"], 1);
    assert!(
        out.stdout.contains(
            "what still runs it is unhealthy after reconcile stopped allocations: api@w1"
        ),
        "{out:?}"
    );
    assert!(
        fleet
            .worker("w1")
            .events("web")
            .iter()
            .all(|e| !e.starts_with("restart")),
        "no wave ran: {out:?}"
    );
    // Healthy again: the deploy goes on.
    std::fs::write(
        fleet.worker("w1").path("jobs/api/shared/state"),
        "running\n",
    )
    .expect("up");
    p.expect(&["deploy"], 0);
    assert!(fleet
        .worker("w1")
        .events("web")
        .iter()
        .any(|e| e.starts_with("restart")));
}

/// `cutover logs`: the job's `logs` target where it has one, else the
/// files under shared/logs/; each line prefixed with its worker; `-n`;
/// `--follow` until Ctrl-C.
#[test]
fn logs_shows_each_allocation_log_prefixed_with_its_worker() {
    let (fleet, p) = web_fleet(2);
    p.job("api", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    for (w, n) in [("w1", 3), ("w2", 2)] {
        let lines: String = (1..=n).map(|i| format!("{w} line {i}\n")).collect();
        let dir = fleet.worker(w).path("jobs/api/shared/logs");
        std::fs::create_dir_all(&dir).expect("logs dir");
        std::fs::write(dir.join("api.log"), lines).expect("log");
    }
    let out = p.expect(&["logs", "api", "-n", "2"], 0);
    let mut lines: Vec<&str> = out.stdout.lines().filter(|l| l.contains("line")).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "w1 | w1 line 2",
            "w1 | w1 line 3",
            "w2 | w2 line 1",
            "w2 | w2 line 2"
        ],
        "{out:?}"
    );
    let out = p.expect(&["logs", "api", "--workers", "w2", "-n", "1"], 0);
    assert_eq!(out.stdout.trim(), "w2 | w2 line 2", "{out:?}");
    p.expect(&["logs", "api", "--workers", "w9"], 2);

    // A job with a `logs` target: it is what runs, with LINES.
    p.write(
        "jobs/api/Makefile",
        &format!("{MAKEFILE}logs:\n\t@echo \"target says $(LINES) from $(CUTOVER_WORKER)\"\n"),
    );
    p.expect(&["deploy"], 0);
    let out = p.expect(&["logs", "api", "-n", "7"], 0);
    assert!(out.stdout.contains("w1 | target says 7 from w1"), "{out:?}");

    // --follow prints lines as they come, and Ctrl-C ends it.
    p.write("jobs/api/Makefile", MAKEFILE);
    p.expect(&["deploy"], 0);
    // The last line shows once tail follows the file; only then is the
    // new one written (a sleep would race a slow start).
    let mut child = p.spawn(&["logs", "api", "--workers", "w1", "-n", "1", "--follow"]);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let seen = seen.clone();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                seen.lock().expect("lines").push(line);
            }
        })
    };
    let shows = |want: &str| seen.lock().expect("lines").iter().any(|l| l == want);
    wait_until(|| shows("w1 | w1 line 3"));
    let file = fleet.worker("w1").path("jobs/api/shared/logs/api.log");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .expect("open");
    std::io::Write::write_all(&mut f, b"fresh line\n").expect("append");
    wait_until(|| shows("w1 | fresh line"));
    signal(&child, "INT");
    let out = finish(child);
    reader.join().expect("reader");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        *seen.lock().expect("lines"),
        ["w1 | w1 line 3", "w1 | fresh line"],
        "{out:?}"
    );
}

/// Each worker carries the fleet view: worker.json (itself) and jobs.json
/// (every job, its version, the workers that run it), refreshed when it
/// changes; templates see the same as `fleet`.
#[test]
fn workers_carry_the_fleet_view_and_templates_see_it() {
    let (fleet, p) = web_fleet(2);
    p.job("api", "version = \"1\"\nselectors = [\"web\"]\n");
    p.job("db", "version = \"3\"\n");
    p.write(
        "jobs/api/upstreams.conf.tpl",
        "{% for w in fleet.jobs.db.workers %}db {{ w.name }} {{ w.host }}\n{% endfor %}",
    );
    p.expect(&["deploy"], 0);
    let w1 = fleet.worker("w1");
    let me: serde_json::Value = serde_json::from_str(&w1.read("worker.json")).expect("worker.json");
    assert_eq!(me["name"], "w1");
    assert_eq!(me["labels"], serde_json::json!(["web"]));
    let jobs: serde_json::Value = serde_json::from_str(&w1.read("jobs.json")).expect("jobs.json");
    assert_eq!(jobs["db"]["version"], "3");
    let names: Vec<&str> = jobs["api"]["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["w1", "w2"]);
    let conf = w1.read("jobs/api/current/upstreams.conf");
    assert_eq!(conf.lines().count(), 2, "{conf}");
    assert!(conf.starts_with("db w1 127.0.0."), "{conf}");

    // w2 leaves db: jobs.json changes everywhere, and api, whose template
    // reads the view, rolls out.
    p.write(
        "workers.toml",
        &fleet.workers_toml(&[("w1", &["web", "db"][..]), ("w2", &["web"][..])]),
    );
    p.job("db", "version = \"3\"\nselectors = [\"db\"]\n");
    p.expect(&["deploy"], 0);
    let jobs: serde_json::Value =
        serde_json::from_str(&fleet.worker("w2").read("jobs.json")).expect("jobs.json");
    assert_eq!(jobs["db"]["workers"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        fleet
            .worker("w2")
            .read("jobs/api/current/upstreams.conf")
            .lines()
            .count(),
        1
    );

    // A label no selector reads: nothing to roll out, but the views (which
    // show labels) are rewritten; once written, nothing is written again.
    p.write(
        "workers.toml",
        &fleet.workers_toml(&[("w1", &["web", "db", "ssd"][..]), ("w2", &["web"][..])]),
    );
    let out = p.expect(&["deploy"], 0);
    assert!(
        out.stdout.contains("nothing to do")
            && out
                .stdout
                .contains("wrote worker.json and jobs.json on 2 worker(s)"),
        "{out:?}"
    );
    let me: serde_json::Value =
        serde_json::from_str(&fleet.worker("w1").read("worker.json")).expect("worker.json");
    assert_eq!(me["labels"], serde_json::json!(["web", "db", "ssd"]));
    let out = p.expect(&["deploy"], 0);
    assert!(!out.stdout.contains("wrote worker.json"), "{out:?}");
}

/// A deploy that starts no new allocation (a new version, say) writes a
/// worker's view in the activation of its allocation there, once that is
/// healthy: a later batch already sees it. A deploy that starts one writes
/// views at its end, so that no view lists a worker before it runs the
/// job. Views too large for a command line still arrive whole.
#[test]
fn views_are_written_with_a_healthy_allocation_unless_the_deploy_starts_one() {
    use std::os::unix::fs::PermissionsExt;
    let (fleet, p) = web_fleet(3);
    let labels = |w3: &[&'static str], extra: &[String]| {
        let mut w1: Vec<&str> = vec!["web", "api"];
        w1.extend(extra.iter().map(String::as_str));
        p.write(
            "workers.toml",
            &fleet.workers_toml(&[("w1", &w1[..]), ("w2", &["web", "api"][..]), ("w3", w3)]),
        );
    };
    labels(&["web"], &[]);
    // At its restart, an allocation keeps a copy of w1's jobs.json as it
    // stands then (the workers share this machine).
    let w1_jobs = fleet.worker("w1").path("jobs.json");
    let makefile = MAKEFILE.replacen(
        "restart:\n",
        &format!(
            "restart:\n\t@cp {:?} \"$(CUTOVER_SHARED)/w1-jobs-seen.json\"\n",
            w1_jobs.display().to_string()
        ),
        1,
    );
    let api = |v: u32| {
        p.job(
            "api",
            &format!(
                "version = \"{v}\"\nselectors = [\"api\"]\nrestart_policy = \"always\"\n\
                 max_concurrent_starts = 1\nmax_concurrent_upgrades = 1\n"
            ),
        );
        p.write("jobs/api/Makefile", &makefile);
    };
    api(1);
    p.expect(&["deploy"], 0);
    let version = |json: &str| -> (String, usize) {
        let v: serde_json::Value = serde_json::from_str(json).expect("jobs.json");
        (
            v["api"]["version"].as_str().unwrap_or_default().to_string(),
            v["api"]["workers"].as_array().map_or(0, Vec::len),
        )
    };
    let seen_by_w2 = || version(&fleet.worker("w2").read("jobs/api/shared/w1-jobs-seen.json"));

    // A new version: w1 (batch 1) has it in its view before w2 (batch 2)
    // restarts.
    api(2);
    p.expect(&["deploy"], 0);
    assert_eq!(seen_by_w2(), ("2".to_string(), 2));
    for w in ["w1", "w2"] {
        let w = fleet.worker(w);
        assert_eq!(version(&w.read("jobs.json")), ("2".to_string(), 2));
        for f in ["worker.json", "jobs.json"] {
            let mode = std::fs::metadata(w.path(f))
                .expect("view")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644, "{f}");
        }
        let left: Vec<_> = std::fs::read_dir(w.path(".view")).expect(".view").collect();
        assert!(left.is_empty(), "{left:?}");
    }

    // w3 joins: it starts (batch 1), then w1 and w2 upgrade. No view lists
    // w3 before the deploy ends: w2 still saw w1's old one.
    labels(&["web", "api"], &[]);
    api(3);
    p.expect(&["deploy"], 0);
    assert_eq!(seen_by_w2(), ("2".to_string(), 2));
    for w in ["w1", "w2", "w3"] {
        assert_eq!(
            version(&fleet.worker(w).read("jobs.json")),
            ("3".to_string(), 3),
            "{w}"
        );
    }

    // Views over 48 KiB (many labels) are not arguments: they come on
    // stdin, at the end of the deploy, whole. (Between 48 and 64 KiB, a
    // view carried by the activation once made its command line too long.)
    let many: Vec<String> = (0..1100).map(|i| format!("label-{i:05}-of-w1")).collect();
    labels(&["web", "api"], &many);
    api(4);
    p.expect(&["deploy"], 0);
    assert_eq!(seen_by_w2(), ("3".to_string(), 3));
    let me: serde_json::Value =
        serde_json::from_str(&fleet.worker("w1").read("worker.json")).expect("worker.json");
    assert_eq!(me["labels"].as_array().map(Vec::len), Some(1102));
    assert_eq!(me["labels"][1101], "label-01099-of-w1");
    let size =
        fleet.worker("w1").read("worker.json").len() + fleet.worker("w1").read("jobs.json").len();
    assert!((48 * 1024..64 * 1024).contains(&size), "{size}");
    for w in ["w1", "w2", "w3"] {
        let jobs = fleet.worker(w).read("jobs.json");
        assert_eq!(version(&jobs), ("4".to_string(), 3), "{w}");
    }
}

/// `[certs]`: each allocation gets a CA certificate, its own certificate
/// (SANs: the worker's host and name, and `names`) and key (0600), kept
/// while valid (no rollout) and renewed, with a rollout, when under a
/// third of its validity is left; `certs list` shows expiries.
#[test]
fn jobs_with_certs_get_them_from_the_project_ca_and_renew_them() {
    use std::os::unix::fs::PermissionsExt;
    let (fleet, p) = web_fleet(2);
    p.job(
        "api",
        "version = \"1\"\n[certs]\nnames = [\"api.internal\"]\nvalidity = \"30s\"\n",
    );
    p.expect(&["deploy"], 0);
    // Issued by now: due for renewal 20 s after this at the latest.
    let issued = std::time::Instant::now();
    let w1 = fleet.worker("w1");
    let dir = w1.path("jobs/api/current/certs");
    let mode = |f: &str| {
        std::fs::metadata(dir.join(f))
            .expect("cert file")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        (mode("ca.crt"), mode("api.crt"), mode("api.key")),
        (0o644, 0o644, 0o600)
    );
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert!(openssl(&["verify", "-CAfile", "ca.crt", "api.crt"]).contains("api.crt: OK"));
    let san = openssl(&["x509", "-in", "api.crt", "-noout", "-ext", "subjectAltName"]);
    assert!(
        san.contains("IP Address:127.0.0.")
            && san.contains("DNS:w1")
            && san.contains("DNS:api.internal"),
        "{san}"
    );
    let pub_of_key = openssl(&["pkey", "-in", "api.key", "-pubout"]);
    let pub_of_cert = openssl(&["x509", "-in", "api.crt", "-noout", "-pubkey"]);
    assert_eq!(pub_of_key, pub_of_cert, "the key is the certificate's");
    let first = w1.read("jobs/api/current/certs/api.crt");
    assert_ne!(
        first,
        fleet.worker("w2").read("jobs/api/current/certs/api.crt")
    );

    // Still valid: kept, nothing to do.
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
    let list = p.expect(&["certs", "list"], 0);
    assert!(
        list.stdout.contains("(ca)") && list.stdout.contains("api.internal"),
        "{list:?}"
    );

    // Under a third of 30 s left: renewed, and the job rolls out.
    let due = issued + std::time::Duration::from_secs(21);
    std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
    let list = p.expect(&["certs", "list"], 0);
    assert!(
        list.stdout.contains("renewed at the next deploy"),
        "{list:?}"
    );
    let dry = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        dry.stdout.contains("changed: certs/api.crt, certs/api.key"),
        "{dry:?}"
    );
    p.expect(&["deploy"], 0);
    let renewed = w1.read("jobs/api/current/certs/api.crt");
    assert_ne!(renewed, first);
    assert!(openssl(&["verify", "-CAfile", "ca.crt", "api.crt"]).contains("api.crt: OK"));
    assert!(w1.events("api").iter().any(|e| e.starts_with("restart")));
}

/// What the hostile review found in `[certs]`: a `certs` path of the
/// job's own (a symlink could be written through) is refused everywhere
/// alike; bad names and a zero validity are refused at their line; a lost
/// state.db keeps the CA (no rollout); a changed validity reissues.
#[test]
fn certs_refuse_what_they_would_overwrite_and_survive_a_lost_store() {
    let p = local_project();
    let victim = p.tmp.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").expect("victim");
    p.job(
        "api",
        "version = \"1\"\n[certs]\nnames = [\"api.internal\"]\n",
    );
    std::os::unix::fs::symlink(p.tmp.path(), p.path().join("jobs/api/certs")).expect("symlink");
    for args in [&["check"][..], &["deploy", "--dry-run"], &["deploy"]] {
        let out = p.expect(args, 2);
        assert!(
            out.stderr
                .contains("jobs/api/certs is refused: the job has [certs]"),
            "{args:?}: {out:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n"
    );
    std::fs::remove_file(victim).expect("rm victim");
    p.remove("jobs/api/certs");

    p.job(
        "api",
        "version = \"1\"\n[certs]\nnames = [\"bad name\", \"ünï.com\"]\nvalidity = \"0s\"\n",
    );
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr.contains("`bad name` is not a certificate name")
            && out.stderr.contains("`ünï.com` is not a certificate name")
            && out.stderr.contains("expired when issued"),
        "{out:?}"
    );

    p.job(
        "api",
        "version = \"1\"\n[certs]\nnames = [\"api.internal\"]\nvalidity = \"30d\"\n",
    );
    p.expect(&["deploy"], 0);
    let crt = || {
        std::fs::read_to_string(
            p.path()
                .join("local-workers/a/jobs/api/current/certs/api.crt"),
        )
        .expect("crt")
    };
    let first = crt();
    p.lose_store();
    p.expect(&["state", "rebuild"], 0);
    let out = p.expect(&["deploy"], 0);
    assert!(
        out.stdout.contains("nothing to do"),
        "a lost store keeps the CA: {out:?}"
    );
    assert_eq!(crt(), first);

    // A new validity: a new certificate.
    p.job(
        "api",
        "version = \"1\"\n[certs]\nnames = [\"api.internal\"]\nvalidity = \"7d\"\n",
    );
    p.expect(&["deploy"], 0);
    assert_ne!(crt(), first);
    let list = p.expect(&["certs", "list"], 0);
    let days: Vec<&str> = list
        .stdout
        .lines()
        .filter(|l| l.starts_with("api"))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert!(
        days.iter().all(|d| *d == "6" || *d == "7") && days.len() == 2,
        "{list:?}"
    );
}

/// A local worker's root may not overlap the project; watch globs never
/// see local workers' files; `--jobs` typos and empty `--workers` are
/// refused; a closed stdout is no panic; the audit log cannot be forged
/// through CUTOVER_USER.
#[test]
fn hostile_inputs_from_the_review_are_refused_or_harmless() {
    let p = local_project();
    p.job("api", "version = \"1\"\nwatch = [\"**\"]\n");
    p.write(
        "workers.toml",
        "[[worker]]\nname = \"a\"\ntransport = \"local\"\nroot = \".\"\n",
    );
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr
            .contains("the root of local worker `a` overlaps the project"),
        "{out:?}"
    );
    p.write(
        "workers.toml",
        "[[worker]]\nname = \"a\"\ntransport = \"local\"\nroot = \"jobs/api/x\"\n",
    );
    p.expect(&["check"], 2);
    p.write(
        "workers.toml",
        "[[worker]]\nname = \"a\"\ntransport = \"local\"\nroot = \"local-workers/a\"\n",
    );
    p.expect(&["deploy"], 0);
    let out = p.expect(&["deploy"], 0);
    assert!(
        out.stdout.contains("nothing to do"),
        "watch `**` settles: {out:?}"
    );

    p.expect(&["status", "--jobs", "nope"], 2);
    p.expect(&["cat", "allocations", "--jobs", "nope"], 2);
    p.expect(&["logs", "api", "--workers", ""], 2);

    // stdout closed by its reader: the command still ends normally.
    let mut child = p
        .command(&["status"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));

    let forged =
        "bob\n2026-01-01T00:00:00+00:00 user=alice command=\"cutover deploy\" outcome=success rc=0";
    let out = p.cutover_env(&["kv", "put", "api", "k", "v"], &[("CUTOVER_USER", forged)]);
    assert_eq!(out.code, 0, "{out:?}");
    let audit = std::fs::read_to_string(p.path().join(".cutover/audit.log")).expect("audit");
    assert!(
        !audit.lines().any(|l| l.starts_with("2026-01-01")),
        "{audit}"
    );
    // The name's newline is shown as U+FFFD (in the feed too), and quoted.
    assert!(audit.contains("user=\"bob\u{fffd}2026"), "{audit}");
}
