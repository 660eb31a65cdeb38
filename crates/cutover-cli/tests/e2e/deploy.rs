//! `cutover deploy` against a fleet of real sshd workers.

use crate::support::{snapshot, Fleet, Project};

fn setup(n: usize) -> (Fleet, Project) {
    crate::support::web_fleet(n)
}

fn count(lines: &[String], prefix: &str) -> usize {
    lines.iter().filter(|l| l.starts_with(prefix)).count()
}

#[test]
fn first_deploy_uploads_switches_and_starts_on_every_worker() {
    let (fleet, p) = setup(3);
    p.job("api", "version = \"1.0.0\"\nselectors = [\"web\"]\n");
    p.write("jobs/api/conf/app.conf", "port = 8080\n");
    p.write(
        "jobs/api/hello.txt.tpl",
        "hello {{ worker.name }} v{{ job.version }}\n",
    );
    let out = p.expect(&["deploy"], 0);
    assert!(
        out.stdout.contains("deployment 1: success (3 start)"),
        "{out:?}"
    );

    for w in &fleet.workers {
        let current = w.current("api").expect("current symlink");
        assert!(current.starts_with("r000001-"), "{current}");
        assert_eq!(w.read("jobs/api/current/conf/app.conf"), "port = 8080\n");
        assert_eq!(
            w.read("jobs/api/current/hello.txt"),
            format!("hello {} v1.0.0\n", w.name)
        );
        assert!(
            !w.path("jobs/api/current/hello.txt.tpl").exists(),
            "templates are rendered, not shipped"
        );
        assert!(!w.path("jobs/api/current/job.toml").exists());
        let events = w.events("api");
        assert_eq!(count(&events, "start r000001-"), 1, "{events:?}");
        assert!(
            events[0].contains(" 1.0.0 "),
            "NEW_VERSION reaches make: {events:?}"
        );
        assert_eq!(w.read("jobs/api/shared/state"), "running\n");
    }
    let status = p.expect(&["status"], 0);
    assert_eq!(status.stdout.matches("promoted").count(), 3, "{status:?}");
    let audit = std::fs::read_to_string(p.path().join(".cutover/audit.log")).expect("audit log");
    assert_eq!(audit.lines().count(), 1);
    assert!(
        audit.contains("user=tester") && audit.contains("outcome=success rc=0"),
        "{audit}"
    );
}

#[test]
fn noop_redeploy_touches_nothing_and_one_file_change_reloads_or_restarts() {
    let (fleet, p) = setup(2);
    p.job(
        "api",
        "version = \"1.0.0\"\nrestart_policy = \"reload\"\nrestart_globs = [\"bin/**\"]\nmax_concurrent_upgrades = 2\n",
    );
    p.write("jobs/api/app.conf", "a = 1\n");
    p.write("jobs/api/bin/run", "#!/bin/sh\necho v1\n");
    p.expect(&["deploy"], 0);
    let before: Vec<_> = fleet.workers.iter().map(|w| snapshot(&w.root)).collect();

    // No-op: nothing restarted, nothing uploaded, no worker touched at all.
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
    let after: Vec<_> = fleet.workers.iter().map(|w| snapshot(&w.root)).collect();
    assert_eq!(before, after, "a no-op deploy changed a worker");

    // A plain file: reload.
    p.write("jobs/api/app.conf", "a = 2\n");
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("api@w1: reload ok"), "{out:?}");
    for w in &fleet.workers {
        let ev = w.events("api");
        assert_eq!(count(&ev, "reload r000002-"), 1, "{ev:?}");
        assert_eq!(count(&ev, "restart"), 0, "{ev:?}");
        assert_eq!(w.read("jobs/api/current/app.conf"), "a = 2\n");
        // The unchanged file is a hard link to the previous release's copy.
        use std::os::unix::fs::MetadataExt;
        let cur = std::fs::metadata(w.path("jobs/api/current/bin/run")).expect("meta");
        assert!(
            cur.nlink() >= 2,
            "unchanged files are hard-linked, not re-sent"
        );
    }

    // A file matching restart_globs: restart.
    p.write("jobs/api/bin/run", "#!/bin/sh\necho v2\n");
    let out = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        out.stdout.contains("restart_globs match bin/run"),
        "{out:?}"
    );
    p.expect(&["deploy"], 0);
    for w in &fleet.workers {
        let ev = w.events("api");
        assert_eq!(count(&ev, "restart r000003-"), 1, "{ev:?}");
    }
}

#[test]
fn version_bump_alone_rolls_out_with_both_versions() {
    let (fleet, p) = setup(2);
    p.job("api", "version = \"1.0.0\"\nmax_concurrent_upgrades = 2\n");
    p.expect(&["deploy"], 0);
    p.job("api", "version = \"1.1.0\"\nmax_concurrent_upgrades = 2\n");
    let plan = p.expect(&["deploy", "--dry-run"], 0);
    assert!(plan.stdout.contains("version 1.0.0 -> 1.1.0"), "{plan:?}");
    p.expect(&["deploy"], 0);
    for w in &fleet.workers {
        let ev = w.events("api");
        assert!(
            ev.iter()
                .any(|l| l.starts_with("restart r000002-") && l.contains("1.0.0->1.1.0")),
            "{ev:?}"
        );
    }
}

/// Parses `<verb> <release> ... <nanos>` lines into nanosecond stamps.
fn stamp(line: &str) -> u128 {
    line.split_whitespace()
        .last()
        .and_then(|s| s.parse().ok())
        .expect("timestamp")
}

#[test]
fn upgrades_roll_in_batches_in_rollout_order() {
    let (fleet, p) = setup(5);
    let manifest = "version = \"1\"\nmax_concurrent_upgrades = 2\n";
    p.job("api", manifest);
    // Each restart records when it began and ended.
    let timed = crate::support::MAKEFILE.replace(
        "restart:\n",
        "restart:\n\t@echo \"begin $$(date +%s%N)\" >> \"$(CUTOVER_SHARED)/events.log\"\n\t@sleep 0.2\n",
    );
    p.write("jobs/api/Makefile", &timed);
    p.expect(&["deploy"], 0);
    p.expect(&["kv", "put", "api", "rollout_order", "w5,w4,w3,w2,w1"], 0);
    p.job("api", &manifest.replace("\"1\"", "\"2\""));
    p.write("jobs/api/Makefile", &timed);

    let plan = p.expect(&["deploy", "--dry-run"], 0);
    let rows: Vec<Vec<&str>> = plan
        .stdout
        .lines()
        .filter(|l| l.contains(" restart "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let order: Vec<(&str, &str)> = rows.iter().map(|r| (r[2], r[4])).collect();
    assert_eq!(
        order,
        [
            ("w5", "1/3"),
            ("w4", "1/3"),
            ("w3", "2/3"),
            ("w2", "2/3"),
            ("w1", "3/3")
        ],
        "{plan:?}"
    );

    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("api: batch 1/3: w5 w4"), "{out:?}");
    let span = |w: &str| {
        let ev = fleet.worker(w).events("api");
        let begin = stamp(ev.iter().find(|l| l.starts_with("begin")).expect("began"));
        let end = stamp(
            ev.iter()
                .find(|l| l.starts_with("restart"))
                .expect("restarted"),
        );
        (begin, end)
    };
    let batches = [vec!["w5", "w4"], vec!["w3", "w2"], vec!["w1"]];
    for pair in batches.windows(2) {
        let prev_end = pair[0].iter().map(|w| span(w).1).max().expect("max");
        let next_begin = pair[1].iter().map(|w| span(w).0).min().expect("min");
        assert!(
            next_begin > prev_end,
            "batch {:?} began before {:?} ended",
            pair[1],
            pair[0]
        );
    }
}

#[test]
fn a_dependent_job_starts_after_its_dependency_is_healthy() {
    let (fleet, p) = setup(2);
    p.job("db", "version = \"1\"\n");
    p.job("api", "version = \"1\"\ndepends_on = [\"db\"]\n");
    let plan = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        plan.stdout.contains("1     db") && plan.stdout.contains("2     api"),
        "{plan:?}"
    );
    p.expect(&["deploy"], 0);
    for w in &fleet.workers {
        let db = w.events("db");
        let api = w.events("api");
        let db_healthy = stamp(
            db.iter()
                .find(|l| l.starts_with("healthy"))
                .expect("db healthy"),
        );
        let api_start = stamp(
            api.iter()
                .find(|l| l.starts_with("start"))
                .expect("api start"),
        );
        assert!(
            api_start > db_healthy,
            "api started before db was healthy on {}",
            w.name
        );
    }
}

#[test]
fn failing_health_check_halts_the_job_at_the_failed_batch() {
    let (fleet, p) = setup(3);
    p.job("api", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    p.write("jobs/api/health.txt", "bad\n");
    let out = p.expect(&["deploy"], 1);
    assert!(
        out.stdout
            .contains("api@w1: restart FAILED: unhealthy after 2 attempts"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("batch 1/3 failed and was halted"),
        "{out:?}"
    );
    // The failed worker runs the new (broken) release; the others were not touched.
    assert!(fleet
        .worker("w1")
        .current("api")
        .expect("current")
        .starts_with("r000002-"));
    for w in ["w2", "w3"] {
        assert!(
            fleet
                .worker(w)
                .current("api")
                .expect("current")
                .starts_with("r000001-"),
            "{w}"
        );
        assert_eq!(count(&fleet.worker(w).events("api"), "restart"), 0);
    }
    let status = p.expect(&["status"], 0);
    let w1_row: Vec<&str> = status
        .stdout
        .lines()
        .find(|l| l.contains(" w1 "))
        .expect("w1 row")
        .split_whitespace()
        .collect();
    assert_eq!(w1_row[2], "failed", "{status:?}");
    assert!(
        w1_row.iter().any(|c| c.starts_with("r000001-")),
        "the store still names the promoted release: {status:?}"
    );

    // Fixed: the re-run finishes the job.
    p.write("jobs/api/health.txt", "ok\n");
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("success (3 restart)"), "{out:?}");
    for w in &fleet.workers {
        assert!(
            w.current("api").expect("current").starts_with("r000003-"),
            "{}",
            w.name
        );
    }
}

#[test]
fn failing_health_check_under_revert_runs_the_old_release_again() {
    let (fleet, p) = setup(2);
    p.job("api", "version = \"1\"\non_failure = \"revert\"\n");
    p.write("jobs/api/page.html", "old\n");
    p.expect(&["deploy"], 0);
    let old = fleet.worker("w1").current("api").expect("current");
    p.write("jobs/api/health.txt", "bad\n");
    p.write("jobs/api/page.html", "new\n");
    let out = p.expect(&["deploy"], 1);
    assert!(
        out.stdout.contains("switched back to the previous release"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("batch 1/2 failed and was reverted"),
        "{out:?}"
    );
    let w1 = fleet.worker("w1");
    assert_eq!(
        w1.current("api").as_deref(),
        Some(old.as_str()),
        "current points at the old release again"
    );
    assert_eq!(w1.read("jobs/api/current/page.html"), "old\n");
    let ev = w1.events("api");
    let last = ev.last().expect("events");
    assert!(
        last.starts_with(&format!("restart {old}")),
        "the old release was restarted: {ev:?}"
    );
    assert_eq!(
        fleet.worker("w2").current("api").as_deref(),
        Some(old.as_str())
    );
}

#[test]
fn an_unreachable_worker_fails_alone_and_the_rerun_finishes_the_job() {
    let (mut fleet, p) = setup(3);
    p.job("api", "version = \"1\"\n");
    fleet.worker_mut("w2").stop();
    let out = p.expect(&["deploy"], 1);
    assert!(out.stdout.contains("w2: unreachable"), "{out:?}");
    assert!(out.stdout.contains("api@w2: start FAILED"), "{out:?}");
    assert!(fleet.worker("w1").current("api").is_some());
    assert!(fleet.worker("w3").current("api").is_some());
    assert!(fleet.worker("w2").current("api").is_none());

    fleet.worker_mut("w2").start();
    let plan = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        plan.stdout.contains("plan: 1 start, 2 unchanged"),
        "{plan:?}"
    );
    p.expect(&["deploy"], 0);
    assert!(fleet.worker("w2").current("api").is_some());
    assert_eq!(
        count(&fleet.worker("w1").events("api"), "start"),
        1,
        "w1 was not redone"
    );
}

#[test]
fn removed_job_and_removed_worker_are_stopped_and_their_data_kept_until_purged() {
    let (fleet, p) = setup(3);
    p.job("api", "version = \"1\"\n");
    p.job("old", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    p.expect(&["kv", "put", "old", "k", "v"], 0);

    p.remove("jobs/old");
    let plan = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        plan.stdout.contains("job removed from the project"),
        "{plan:?}"
    );
    let out = p.expect(&["deploy"], 0);
    assert!(
        out.stdout.contains(
            "[deploy] kept the shared/ data of old on w1, w2, w3 (and its KV); delete it with `cutover job purge old`"
        ),
        "{out:?}"
    );
    for w in &fleet.workers {
        assert!(
            !w.path("jobs/old/releases").exists() && !w.path("jobs/old/current").exists(),
            "releases of the removed job remain on {}",
            w.name
        );
        assert_eq!(
            w.read("jobs/old/shared/data.txt"),
            "data-1\n",
            "data kept on {}",
            w.name
        );
        assert!(
            w.read("stopped.log").contains("stop old"),
            "stop did not run on {}",
            w.name
        );
    }
    let kv = p.expect(&["cat", "kv"], 0);
    assert!(
        kv.stdout.contains("old"),
        "KV of a removed job is kept: {kv:?}"
    );
    // A second deploy does not stop it again.
    let again = p.expect(&["deploy"], 0);
    assert!(again.stdout.contains("nothing to do"), "{again:?}");

    // The operator asks: the data and the KV go.
    p.run(&["job", "purge", "old"])
        .status(2)
        .stderr(
            "error: `cutover job purge old` deletes data and asks first, but stdin is not a terminal\n  \
             help: run it again with --yes to delete the shared/ data of old on: w1, w2, w3\n",
        )
        .check();
    p.run(&["job", "purge", "old", "--yes"])
        .stdout(
            "[job] old@w1: data deleted\n[job] old@w2: data deleted\n[job] old@w3: data deleted\n[job] old: KV deleted\n",
        )
        .check();
    for w in &fleet.workers {
        assert!(
            !w.path("jobs/old").exists(),
            "purge left data on {}",
            w.name
        );
    }
    let kv = p.expect(&["cat", "kv"], 0);
    assert!(!kv.stdout.contains("old"), "{kv:?}");
    p.expect(&["job", "purge", "old", "--yes"], 2);

    // Drop w3 from workers.toml: its allocation is stopped, its releases
    // removed, its data kept.
    let labels: [(&str, &[&str]); 2] = [("w1", &["web"]), ("w2", &["web"])];
    let toml = fleet.workers_toml(&labels);
    let kept: String = toml
        .split("[[worker]]")
        .filter(|b| !b.contains("\"w3\""))
        .collect::<Vec<_>>()
        .join("[[worker]]");
    p.write("workers.toml", &kept);
    let out = p.expect(&["deploy", "--purge-data"], 0);
    assert!(
        out.stdout
            .contains("api@w3: stopped (worker removed from workers.toml)"),
        "{out:?}"
    );
    let w3 = fleet.worker("w3");
    assert!(w3.read("stopped.log").contains("stop api w3"));
    assert!(
        !w3.path("jobs/api").exists(),
        "--purge-data deletes the data too"
    );
    assert!(fleet.worker("w1").path("jobs/api/current").exists());
}

#[test]
fn dry_run_leaves_every_worker_and_the_state_unchanged() {
    let (fleet, p) = setup(2);
    p.job("api", "version = \"1\"\n");
    p.job("gone", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    p.write("jobs/api/x.txt", "changed\n");
    p.remove("jobs/gone");
    let workers_before: Vec<_> = fleet.workers.iter().map(|w| snapshot(&w.root)).collect();
    let state_before = p.expect(&["cat", "allocations", "--json"], 0).stdout;
    let deployments_before = p.expect(&["cat", "deployments", "--json"], 0).stdout;

    let out = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        out.stdout.contains("restart") && out.stdout.contains("stop"),
        "{out:?}"
    );
    let json = p.expect(&["deploy", "--dry-run", "--json"], 0);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(doc["outcome"], "planned");
    assert_eq!(doc["report"]["plan"]["stops"][0]["job"], "gone");

    let workers_after: Vec<_> = fleet.workers.iter().map(|w| snapshot(&w.root)).collect();
    assert!(
        workers_before == workers_after,
        "a dry run changed a worker"
    );
    assert_eq!(
        state_before,
        p.expect(&["cat", "allocations", "--json"], 0).stdout
    );
    assert_eq!(
        deployments_before,
        p.expect(&["cat", "deployments", "--json"], 0).stdout
    );
    let audit = std::fs::read_to_string(p.path().join(".cutover/audit.log")).expect("audit");
    assert_eq!(
        audit.lines().count(),
        1,
        "a dry run is not audited as a change"
    );
}

#[test]
fn drift_names_a_file_edited_by_hand_and_exits_4() {
    let (fleet, p) = setup(2);
    p.job("api", "version = \"1\"\n");
    p.write("jobs/api/app.conf", "a = 1\n");
    p.expect(&["deploy"], 0);
    let out = p.expect(&["drift"], 0);
    assert_eq!(out.stdout.matches(": clean").count(), 2, "{out:?}");

    let w2 = fleet.worker("w2");
    std::fs::write(w2.path("jobs/api/current/app.conf"), "a = 666\n").expect("edit");
    std::fs::write(w2.path("jobs/api/current/stray.txt"), "x\n").expect("add");
    let out = p.expect(&["drift"], 4);
    assert!(out.stdout.contains("api@w2: DRIFT in 2 file(s)"), "{out:?}");
    assert!(
        out.stdout.contains("modified app.conf") && out.stdout.contains("extra    stray.txt"),
        "{out:?}"
    );
    assert!(out.stdout.contains("api@w1: clean"), "{out:?}");
    let json = p.expect(&["drift", "--json"], 4);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(doc["outcome"], "drift");

    // A plain deploy trusts the store; --verify checks the workers and heals.
    assert!(p.expect(&["deploy"], 0).stdout.contains("nothing to do"));
    let plan = p.expect(&["deploy", "--verify", "--dry-run"], 0);
    assert!(
        plan.stdout
            .contains("the worker differs from the promoted tree"),
        "{plan:?}"
    );
    assert!(
        !fleet
            .worker("w2")
            .releases("api")
            .iter()
            .any(|r| r.starts_with("r000002-")),
        "a dry run changes nothing"
    );
    let out = p.expect(&["deploy", "--verify"], 0);
    assert!(out.stdout.contains("(1 restart, 1 unchanged)"), "{out:?}");
    assert_eq!(w2.read("jobs/api/current/app.conf"), "a = 1\n");
    assert!(!w2.path("jobs/api/current/stray.txt").exists());
    p.expect(&["drift"], 0);
    assert!(p
        .expect(&["deploy", "--verify"], 0)
        .stdout
        .contains("nothing to do"));
}

#[test]
fn a_second_deploy_while_one_runs_is_refused_with_exit_3() {
    let (_fleet, p) = setup(1);
    p.job("api", "version = \"1\"\n");
    let gates = tempfile::tempdir().expect("gates");
    let held = crate::support::MAKEFILE.replacen(
        "start:\n",
        &format!("start:\n{}", crate::support::gate_line(gates.path())),
        1,
    );
    p.write("jobs/api/Makefile", &held);
    let first = p.spawn(&["deploy"]);
    crate::support::wait_for(&gates.path().join("reached"));
    let out = p.expect(&["deploy"], 3);
    assert!(
        out.stderr.contains("the project lock is held by") && out.stderr.contains("pid"),
        "{out:?}"
    );
    let status = p.expect(&["lock", "status"], 0);
    assert!(status.stdout.starts_with("locked by"), "{status:?}");
    std::fs::write(gates.path().join("go"), "").expect("go");
    let first = crate::support::finish(first);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(p.expect(&["lock", "status"], 0).stdout.trim(), "unlocked");
}

#[test]
fn an_upload_never_inherits_a_file_edited_by_hand_in_the_previous_release() {
    let (fleet, p) = setup(1);
    p.job("api", "version = \"1\"\n");
    p.write("jobs/api/app.conf", "a = 1\n");
    p.write("jobs/api/page.html", "one\n");
    p.expect(&["deploy"], 0);
    // Same size, other content: only the file's mtime gives it away.
    let w1 = fleet.worker("w1");
    std::fs::write(w1.path("jobs/api/current/app.conf"), "a = 2\n").expect("edit");
    // --verify's quick check sees it (the mtime is no longer the one
    // derived from the shipped content), without reading any file.
    let plan = p.expect(&["deploy", "--verify", "--dry-run"], 0);
    assert!(
        plan.stdout
            .contains("the worker differs from the promoted tree"),
        "{plan:?}"
    );

    // Unchanged files are hard-linked from the previous release, but not
    // one that no longer matches what was shipped.
    p.write("jobs/api/page.html", "two\n");
    let out = p.expect(&["deploy", "--progress=always"], 0);
    assert!(out.stdout.contains("success (1 restart)"), "{out:?}");
    assert!(
        out.stdout
            .contains("api@w1: upload with rsync: the worker's r000001-"),
        "{out:?}"
    );
    assert!(w1.current("api").expect("current").starts_with("r000002-"));
    assert_eq!(w1.read("jobs/api/current/app.conf"), "a = 1\n");
    assert_eq!(w1.read("jobs/api/current/page.html"), "two\n");
    p.expect(&["drift"], 0);
}

#[test]
fn a_change_of_a_few_files_lands_exactly_and_shares_the_rest_with_the_previous_release() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (fleet, p) = setup(1);
    p.job("api", "version = \"1\"\n");
    p.write("jobs/api/a/keep.txt", "kept\n");
    p.write("jobs/api/a/change.txt", "v1\n");
    p.write("jobs/api/a/mode.sh", "echo hi\n");
    p.write("jobs/api/c/only/gone.txt", "bye\n");
    std::os::unix::fs::symlink("../a/keep.txt", p.path().join("jobs/api/link")).expect("link");
    p.expect(&["deploy"], 0);
    let w1 = fleet.worker("w1");
    let first = w1.current("api").expect("current");

    // Changed, added, removed (a whole dir), a mode and a link target.
    p.write("jobs/api/a/change.txt", "v2, longer\n");
    p.write("jobs/api/d/e/new.txt", "new\n");
    p.remove("jobs/api/c");
    let mode = p.path().join("jobs/api/a/mode.sh");
    std::fs::set_permissions(&mode, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::remove_file(p.path().join("jobs/api/link")).expect("rm link");
    std::os::unix::fs::symlink("a/change.txt", p.path().join("jobs/api/link")).expect("link");
    let out = p.expect(&["deploy", "--progress=always"], 0);
    assert!(out.stdout.contains("success (1 restart)"), "{out:?}");
    assert!(
        out.stdout.contains("api@w1: upload 5 changed files")
            && !out.stdout.contains("upload with rsync"),
        "{out:?}"
    );

    let second = w1.current("api").expect("current");
    assert_ne!(first, second);
    let mut want = snapshot(&p.path().join("jobs/api"));
    want.retain(|(path, _, _)| path != "job.toml");
    assert_eq!(snapshot(&w1.path("jobs/api/current/")), want);
    assert!(
        !w1.path("jobs/api/current/c").exists(),
        "a dir whose files all left is gone"
    );
    // The unchanged file is the previous release's, hard-linked; the changed
    // one is a file of its own, and the previous release still has v1.
    let nlink = |rel: &str| {
        std::fs::metadata(w1.path(&format!("jobs/api/releases/{second}/{rel}")))
            .expect("meta")
            .nlink()
    };
    assert_eq!(nlink("a/keep.txt"), 2);
    assert_eq!(nlink("a/change.txt"), 1);
    assert_eq!(
        w1.read(&format!("jobs/api/releases/{first}/a/change.txt")),
        "v1\n"
    );
    assert_eq!(
        std::fs::metadata(w1.path(&format!("jobs/api/releases/{first}/a/mode.sh")))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o644,
        "the previous release's file keeps its mode"
    );
    p.expect(&["drift"], 0);
}
