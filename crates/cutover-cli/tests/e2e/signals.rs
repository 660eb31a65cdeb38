//! Ctrl-C, SIGTERM and timeouts (issue 9, items 15 to 17): a signal lets
//! the steps in flight finish, starts nothing new, records the run as
//! interrupted and frees the lock; a step that times out is stopped on
//! the worker. Gates (files the test creates) decide when a remote step
//! goes on, so each test knows exactly where the signal landed.

use std::path::Path;

use crate::support::{alive, finish, signal, wait_for, wait_until, Fleet, Project, MAKEFILE};

/// A job whose `start` (and `restart`) tells the test it began, on which
/// worker, then waits for the test's `go` file.
fn gated(p: &Project, gates: &Path) {
    let gate = |target: &str| {
        format!(
            "{target}:\n\t@touch {g}/$(CUTOVER_WORKER).{target}; while [ ! -e {g}/go ]; do sleep 0.05; done\n",
            g = gates.display()
        )
    };
    // The gate is the first line of each target; what the target records
    // follows it. (`start:` comes first in MAKEFILE, before `restart:`.)
    let makefile = MAKEFILE.replacen("start:\n", &gate("start"), 1).replacen(
        "\nrestart:\n",
        &format!("\n{}", gate("restart")),
        1,
    );
    p.write("jobs/api/Makefile", &makefile);
}

fn setup(n: usize) -> (Fleet, Project, tempfile::TempDir) {
    let (fleet, p) = crate::support::web_fleet(n);
    p.job(
        "api",
        "version = \"1\"\nmax_concurrent_starts = 1\nmax_concurrent_upgrades = 1\n",
    );
    let gates = tempfile::tempdir().expect("gates");
    gated(&p, gates.path());
    (fleet, p, gates)
}

fn check_interrupted_run(p: &Project, out: &crate::support::Output, code: i32) {
    assert_eq!(out.code, code, "{out:?}");
    let deps = p.expect(&["cat", "deployments"], 0);
    assert!(deps.stdout.contains("interrupted"), "{deps:?}");
    assert!(!deps.stdout.contains("running"), "{deps:?}");
    let lock = p.expect(&["lock", "status"], 0);
    assert!(
        !lock.stdout.contains("locked by"),
        "the lock was not released: {lock:?}"
    );
    assert_eq!(
        p.leftovers(),
        Vec::<String>::new(),
        "scratch dirs left behind"
    );
}

/// Item 15: the first SIGINT lets batch 1 finish and promote, starts no
/// other batch, records the run and frees the lock; the next deploy does
/// only what is left.
#[test]
fn ctrl_c_finishes_the_batch_in_flight_and_starts_nothing_new() {
    let (fleet, p, gates) = setup(2);
    let log = gates.path().join("stderr");
    let child = p.spawn_logged(&["deploy"], &log);
    wait_for(&gates.path().join("w1.start"));
    signal(&child, "INT");
    // The batch goes on once the signal was taken, not before.
    wait_until(|| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("interrupted:")
    });
    std::fs::write(gates.path().join("go"), "").expect("go");
    let mut out = finish(child);
    out.stderr = std::fs::read_to_string(&log).expect("stderr");
    assert!(
        out.stderr
            .contains("interrupted: finishing the steps in flight"),
        "{out:?}"
    );
    assert!(out.stdout.contains("api@w1: start ok"), "{out:?}");
    assert!(
        out.stdout.contains("interrupted before batch 2/2"),
        "{out:?}"
    );
    check_interrupted_run(&p, &out, 130);
    assert!(fleet.workers[0].current("api").is_some());
    assert!(
        !gates.path().join("w2.start").exists() && fleet.workers[1].current("api").is_none(),
        "batch 2 was started after the signal"
    );
    let audit = std::fs::read_to_string(p.path().join(".cutover/audit.log")).expect("audit");
    assert!(audit.contains("outcome=interrupted rc=130"), "{audit}");

    let out = p.expect(&["deploy"], 0);
    assert!(
        out.stdout
            .contains("deployment 2: success (1 start, 1 unchanged)"),
        "{out:?}"
    );
    assert_eq!(fleet.workers[0].events("api").len(), 2, "w1 was redone");
}

/// Item 15: SIGTERM is the same, with exit 143; a second signal stops at
/// once and still records the run and frees the lock.
#[test]
fn sigterm_twice_aborts_at_once_but_records_and_releases() {
    let (fleet, p, gates) = setup(2);
    let log = gates.path().join("stderr");
    let child = p.spawn_logged(&["deploy"], &log);
    wait_for(&gates.path().join("w1.start"));
    signal(&child, "TERM");
    // Signals do not queue: the second is sent once the first was taken.
    wait_until(|| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("interrupted:")
    });
    signal(&child, "TERM");
    let mut out = finish(child);
    out.stderr = std::fs::read_to_string(&log).expect("stderr");
    assert!(out.stderr.contains("stopping at once"), "{out:?}");
    check_interrupted_run(&p, &out, 143);
    // The run still leaves its audit line and the end of its live feed.
    let audit = std::fs::read_to_string(p.path().join(".cutover/audit.log")).expect("audit");
    assert!(
        audit.contains("command=\"cutover deploy\" outcome=aborted rc=143"),
        "{audit}"
    );
    let feed = std::fs::read_to_string(p.path().join(".cutover/events.jsonl")).expect("feed");
    assert!(
        feed.lines().last().is_some_and(
            |l| l.contains("\"kind\":\"finished\",\"outcome\":\"aborted\",\"exit_code\":143")
        ),
        "{feed}"
    );

    // The worker's step ends on its own; the next run finishes the job.
    std::fs::write(gates.path().join("go"), "").expect("go");
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("success"), "{out:?}");
    for w in &fleet.workers {
        assert!(w.current("api").is_some(), "{}", w.name);
    }
}

/// Item 16: a run killed with -9 leaves its record "running"; it is shown
/// as interrupted, and the next deploy closes it.
#[test]
fn a_killed_run_is_shown_as_interrupted() {
    let (_fleet, p, gates) = setup(1);
    let mut child = p.spawn(&["deploy"]);
    wait_for(&gates.path().join("w1.start"));
    child.kill().expect("kill -9");
    let _ = child.wait();
    let deps = p.expect(&["cat", "deployments", "--json"], 0);
    assert!(
        deps.stdout.contains("\"outcome\": \"interrupted\"")
            && !deps.stdout.contains("\"running\""),
        "{deps:?}"
    );
    let status = p.expect(&["status"], 0);
    assert!(
        status.stdout.contains("last deployment: 1 interrupted"),
        "{status:?}"
    );
    std::fs::write(gates.path().join("go"), "").expect("go");
    p.expect(&["deploy"], 0);
    let deps = p.expect(&["cat", "deployments"], 0);
    assert!(!deps.stdout.contains("running"), "{deps:?}");
    // What the killed run left in its TMPDIR is swept by the next deploy.
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

/// Item 17: a lifecycle target that times out is killed on the worker,
/// with what it started, and the error names worker, step and timeout.
#[test]
fn a_step_that_times_out_is_killed_on_the_worker() {
    // Long enough for every other step of the deploy on a loaded machine.
    let (fleet, p) = one_worker_timing_out_after("8s");
    p.job("api", "version = \"1\"\n");
    p.write(
        "jobs/api/Makefile",
        "start:\n\t@sh -c 'echo $$$$ > \"$(CUTOVER_SHARED)/child.pid\"; exec sleep 600'\nstop:\n\t@true\n",
    );
    let out = p.expect(&["deploy"], 1);
    assert!(
        out.stdout
            .contains("api@w1: start FAILED: on w1: `switch, make start` timed out after")
            && out.stdout.contains("s; it was stopped on the worker"),
        "{out:?}"
    );
    let pid = fleet.workers[0].read("jobs/api/shared/child.pid");
    assert!(!pid.trim().is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while alive(&pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the step's process {pid} still runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Review: a step that ignores TERM is killed 5 s later, and that is
/// still reported as a timeout.
#[test]
fn a_step_that_ignores_term_is_killed_and_reported_as_a_timeout() {
    let (fleet, p) = one_worker_timing_out_after("60s");
    p.job("api", "version = \"1\"\n[health]\nattempts = 1\n");
    p.write(
        "jobs/api/Makefile",
        "start:\n\t@true\nhang:\n\t@sh -c 'trap \"\" TERM; echo $$$$ > \"$(CUTOVER_SHARED)/hang.pid\"; sleep 60'\nstop:\n\t@true\n",
    );
    p.expect(&["deploy"], 0);
    // The short timeout only for the step that hangs: every step of a
    // deploy is under it, and a loaded machine can take a second.
    let toml = std::fs::read_to_string(p.path().join("cutover.toml")).expect("toml");
    p.write(
        "cutover.toml",
        &toml.replace("command_timeout = \"60s\"", "command_timeout = \"1s\""),
    );
    let out = p.expect(&["job", "run", "api", "--target", "hang"], 1);
    assert!(out.stdout.contains("timed out after 1s"), "{out:?}");
    let pid = fleet.workers[0].read("jobs/api/shared/hang.pid");
    // Killed, then reaped by init: give it the moment that takes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive(&pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the step {pid} outlived its kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// One worker, and a project whose remote steps time out after `timeout`.
fn one_worker_timing_out_after(timeout: &str) -> (Fleet, Project) {
    let fleet = Fleet::start(1);
    let p = Project::new();
    p.write(
        "cutover.toml",
        &fleet.project_toml().replace(
            "command_timeout = \"60s\"",
            &format!("command_timeout = \"{timeout}\""),
        ),
    );
    p.write("workers.toml", &fleet.workers_toml(&[("w1", &["web"])]));
    (fleet, p)
}
