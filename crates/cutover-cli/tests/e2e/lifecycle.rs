//! Hooks, sync-only, job run, http/tcp health, release pruning, first-start
//! batches, and reconcile of disabled and no-longer-matching workers.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use crate::support::{Fleet, Project};

fn setup(n: usize) -> (Fleet, Project) {
    crate::support::web_fleet(n)
}

const HOOK: &str = "echo \"$CUTOVER_EVENT $CUTOVER_JOB [$CUTOVER_WORKERS] $CURRENT_VERSION>$NEW_VERSION\" >> \"$CUTOVER_PROJECT/hooks.log\"\n";

#[test]
fn hooks_run_on_this_machine_with_the_allocations_concerned() {
    let (fleet, p) = setup(2);
    p.write("hooks/log.sh", HOOK);
    let hooks = "\n[hooks]\npre_deploy = \"sh hooks/log.sh\"\npost_deploy = \"sh hooks/log.sh\"\nafter_allocation_started = \"sh hooks/log.sh\"\nafter_allocation_stopped = \"sh hooks/log.sh\"\n";
    p.job(
        "api",
        &format!("version = \"1\"\nmax_concurrent_starts = 1\n{hooks}"),
    );
    p.expect(&["deploy"], 0);
    let log = std::fs::read_to_string(p.path().join("hooks.log")).expect("hooks ran");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines,
        [
            "pre_deploy api [w1 w2] >1",
            "after_allocation_started api [w1] >1",
            "after_allocation_started api [w2] >1",
            "post_deploy api [w1 w2] >1",
        ]
    );

    // A failing pre_deploy stops the job before any worker is touched.
    p.write("hooks/log.sh", "echo no >&2; exit 3\n");
    p.job(
        "api",
        &format!("version = \"2\"\nselectors = [\"web\"]\n{hooks}"),
    );
    let out = p.expect(&["deploy"], 1);
    assert!(
        out.stdout.contains("hook pre_deploy FAILED") && out.stdout.contains("exited 3: no"),
        "{out:?}"
    );
    assert!(fleet
        .worker("w1")
        .current("api")
        .expect("current")
        .starts_with("r000001-"));

    // after_allocation_stopped runs when an allocation is reconciled away.
    p.write("hooks/log.sh", HOOK);
    p.job(
        "api",
        &format!("version = \"2\"\nselectors = [\"web\"]\n{hooks}"),
    );
    let labels: [(&str, &[&str]); 2] = [("w1", &["web"]), ("w2", &[])];
    p.write("workers.toml", &fleet.workers_toml(&labels));
    p.expect(&["deploy"], 0);
    let log = std::fs::read_to_string(p.path().join("hooks.log")).expect("log");
    assert!(
        log.contains("after_allocation_stopped api [w2] 1>2"),
        "{log}"
    );
    let w2 = fleet.worker("w2");
    assert!(
        !w2.path("jobs/api/releases").exists() && !w2.path("jobs/api/current").exists(),
        "a worker that no longer matches has its releases removed"
    );
    assert!(
        w2.path("jobs/api/shared/data.txt").exists(),
        "and its data kept"
    );
}

#[test]
fn job_control_replaces_make_for_start_and_restart() {
    let (fleet, p) = setup(1);
    p.write("hooks/control.sh", HOOK);
    p.job(
        "api",
        "version = \"1\"\n[health]\nattempts = 1\n[hooks]\njob_control = \"sh hooks/control.sh\"\n",
    );
    p.expect(&["deploy"], 0);
    p.job(
        "api",
        "version = \"2\"\n[health]\nattempts = 1\n[hooks]\njob_control = \"sh hooks/control.sh\"\n",
    );
    p.expect(&["deploy"], 0);
    let log = std::fs::read_to_string(p.path().join("hooks.log")).expect("log");
    assert_eq!(log, "start api [w1] >1\nrestart api [w1] 1>2\n");
    assert!(
        fleet.worker("w1").events("api").is_empty(),
        "make was not run"
    );
}

#[test]
fn sync_only_switches_without_lifecycle_and_job_run_reloads() {
    let (fleet, p) = setup(2);
    p.job("api", "version = \"1\"\nmax_concurrent_upgrades = 2\n");
    p.write("jobs/api/app.conf", "a = 1\n");
    p.expect(&["deploy"], 0);
    p.write("jobs/api/app.conf", "a = 2\n");
    let out = p.expect(&["deploy", "--sync-only"], 0);
    assert!(out.stdout.contains("api@w1: sync ok"), "{out:?}");
    for w in &fleet.workers {
        assert_eq!(w.read("jobs/api/current/app.conf"), "a = 2\n");
        assert_eq!(
            w.events("api").len(),
            2,
            "start and its health check only: {:?}",
            w.events("api")
        );
    }
    p.expect(&["deploy"], 0)
        .stdout
        .contains("nothing to do")
        .then_some(())
        .expect("synced is promoted");

    let out = p.expect(
        &["job", "run", "api", "--target", "reload", "--workers", "w2"],
        0,
    );
    assert!(
        out.stdout.contains("[job] api@w2: make reload: ok"),
        "{out:?}"
    );
    assert!(fleet
        .worker("w2")
        .events("api")
        .iter()
        .any(|l| l.starts_with("reload")));
    assert!(!fleet
        .worker("w1")
        .events("api")
        .iter()
        .any(|l| l.starts_with("reload")));
    let bad = p.expect(&["job", "run", "api", "--target", "nonexistent"], 1);
    assert!(bad.stdout.contains("FAILED"), "{bad:?}");
    p.expect(
        &["job", "run", "api", "--target", "reload", "--workers", "w9"],
        2,
    );
}

/// A tiny HTTP server whose status code the test sets; it also serves tcp checks.
fn http_server(status: Arc<AtomicU16>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let code = status.load(Ordering::SeqCst);
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

#[test]
fn http_and_tcp_health_checks_decide_promotion() {
    let (_fleet, p) = setup(1);
    let status = Arc::new(AtomicU16::new(503));
    let port = http_server(status.clone());
    let manifest = format!(
        "version = \"1\"\n[health]\nhttp = \"http://127.0.0.1:{port}/healthz?w={{{{ worker.name }}}}\"\ntcp = \"127.0.0.1:{port}\"\nattempts = 2\ninterval = \"50ms\"\ntimeout = \"1s\"\n"
    );
    p.job("api", &manifest);
    let out = p.expect(&["deploy"], 1);
    assert!(out.stdout.contains("HTTP 503, expected 200"), "{out:?}");
    status.store(200, Ordering::SeqCst);
    p.expect(&["deploy"], 0);
    let st = p.expect(&["status"], 0);
    assert!(st.stdout.contains("healthy"), "{st:?}");
}

#[test]
fn old_releases_are_pruned_to_keep_releases() {
    let (fleet, p) = setup(1);
    p.job("api", "version = \"1\"\nkeep_releases = 2\n");
    for i in 0..4 {
        p.write("jobs/api/n.txt", &format!("{i}\n"));
        p.expect(&["deploy"], 0);
    }
    let w = fleet.worker("w1");
    let releases = w.releases("api");
    assert_eq!(releases.len(), 2, "{releases:?}");
    assert!(
        releases[1].starts_with("r000004-") && releases[0].starts_with("r000003-"),
        "{releases:?}"
    );
    assert_eq!(w.current("api").as_deref(), Some(releases[1].as_str()));
}

#[test]
fn first_starts_roll_in_batches_and_a_disabled_worker_is_stopped_and_left_alone() {
    let (fleet, p) = setup(3);
    p.job("api", "version = \"1\"\nmax_concurrent_starts = 2\n");
    let plan = p.expect(&["deploy", "--dry-run"], 0);
    let batches: Vec<&str> = plan
        .stdout
        .lines()
        .filter(|l| l.contains(" start "))
        .map(|l| l.split_whitespace().nth(4).unwrap_or(""))
        .collect();
    assert_eq!(batches, ["1/2", "1/2", "2/2"], "{plan:?}");
    p.expect(&["deploy"], 0);

    let toml = std::fs::read_to_string(p.path().join("workers.toml")).expect("workers");
    let disabled = toml.replacen("name = \"w2\"", "name = \"w2\"\ndisabled = true", 1);
    p.write("workers.toml", &disabled);
    let out = p.expect(&["deploy"], 0);
    assert!(
        out.stdout.contains("api@w2: stopped (worker disabled)"),
        "{out:?}"
    );
    let w2 = fleet.worker("w2");
    assert!(w2.read("stopped.log").contains("stop api w2"));
    assert!(
        w2.path("jobs/api/current").exists(),
        "a disabled worker's files are left alone"
    );
    p.expect(&["deploy"], 0)
        .stdout
        .contains("nothing to do")
        .then_some(())
        .expect("stable");
}

/// A health command (TOML) that fails the first time it runs on a worker.
const WARMING_UP: &str = r#"command = 'test -e "$CUTOVER_SHARED/seen" || { touch "$CUTOVER_SHARED/seen"; echo warming up >&2; exit 1; }'"#;

#[test]
fn a_health_command_that_fails_its_first_attempt_is_retried_until_it_passes() {
    let (fleet, p) = setup(1);
    // Fails the first time it runs on a worker (right after `make start`,
    // in the same remote command), passes from the second attempt on.
    let manifest = |version: u32, attempts: u32| {
        format!(
            "version = \"{version}\"\n[health]\n{WARMING_UP}\nattempts = {attempts}\ninterval = \"50ms\"\n"
        )
    };
    p.job("api", &manifest(1, 3));
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("success (1 start)"), "{out:?}");
    let w = fleet.worker("w1");
    assert!(
        w.path("jobs/api/shared/seen").exists(),
        "the first attempt ran and failed"
    );
    let st = p.expect(&["status"], 0);
    assert!(st.stdout.contains("healthy"), "{st:?}");

    // With one attempt, the first failure is final and its output is shown.
    std::fs::remove_file(w.path("jobs/api/shared/seen")).expect("rm seen");
    p.job("api", &manifest(2, 1));
    let out = p.expect(&["deploy"], 1);
    assert!(
        out.stdout.contains("unhealthy after 1 attempt: `test -e")
            && out.stdout.contains("exited 1: warming up"),
        "{out:?}"
    );
}

#[test]
fn a_health_command_that_hangs_fails_after_its_timeout() {
    let (_fleet, p) = setup(1);
    p.job(
        "api",
        "version = \"1\"\n[health]\ncommand = \"sleep 30\"\nattempts = 1\ntimeout = \"300ms\"\n",
    );
    let out = p.expect(&["deploy"], 1);
    assert!(
        out.stdout
            .contains("unhealthy after 1 attempt: `sleep 30` timed out"),
        "{out:?}"
    );
}
