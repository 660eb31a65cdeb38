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
/// allocation (job, worker, action, reason, batch).
fn plan_lines(plan: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for s in plan["stops"].as_array().into_iter().flatten() {
        out.push(format!("stop {} {} {}", s["job"], s["worker"], s["why"]));
    }
    for wave in plan["waves"].as_array().into_iter().flatten() {
        for job in wave["jobs"].as_array().into_iter().flatten() {
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
