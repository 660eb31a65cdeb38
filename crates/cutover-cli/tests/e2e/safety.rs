//! Nothing lost, nothing leaked (issue 9): each test reproduces a way an
//! unlucky or hostile operator lost data or leaked a secret, against real
//! sshd workers.

use std::os::unix::fs::PermissionsExt;

use crate::support::{on_postgres, Fleet, Project};

const POISON: &str = "p0is0n-s3cret-9d2e";

fn setup(n: usize) -> (Fleet, Project) {
    crate::support::web_fleet(n)
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Issue 9 item 1: staged trees (with decrypted secrets) and ssh control
/// sockets live in private 0700 dirs that are gone when the run ends; a
/// dead run's dir is swept, a live one's never.
#[test]
fn staging_is_private_and_removed_and_only_dead_runs_are_swept() {
    let (fleet, p) = setup(1);
    let probe = p.path().join("probe.txt");
    p.job("api", "version = \"1\"\n");
    // `start` runs on the worker (this machine) while cutover is running:
    // it records the mode of every scratch dir cutover has made.
    p.write(
        "jobs/api/Makefile",
        &crate::support::MAKEFILE.replace(
            "start:\n",
            &format!(
                "start:\n\t@for d in {}/cutover-*; do stat -c '%a %n' \"$$d\"; find \"$$d\" -name db.conf -printf 'file %m %p\\n'; done > {}\n",
                p.tmp.path().display(),
                probe.display()
            ),
        ),
    );
    p.write("jobs/api/db.conf.tpl", "password = {{ kv.pw }}\n");
    p.expect(&["kv", "put", "api", "pw", POISON, "--secret"], 0);

    // A run killed with -9 left its staging behind (a dead pid), and a live
    // run of the same project (this test's pid) has one.
    let dead = p.tmp.path().join("cutover-stage-dead01");
    std::fs::create_dir(&dead).expect("mkdir");
    std::fs::write(dead.join("secret.txt"), POISON).expect("w");
    std::fs::write(
        dead.join(".owner"),
        format!(
            "pid=4194300\nstart=1\npidns={}\nproject={}\n",
            std::fs::read_link("/proc/self/ns/pid")
                .expect("pid ns")
                .display(),
            p.path().display()
        ),
    )
    .expect("w");
    let live = p.tmp.path().join("cutover-stage-live01");
    std::fs::create_dir(&live).expect("mkdir");
    std::fs::write(
        live.join(".owner"),
        format!(
            "pid={}\nstart=\nproject={}\n",
            std::process::id(),
            p.path().display()
        ),
    )
    .expect("w");

    p.expect(&["deploy"], 0);
    let seen = std::fs::read_to_string(&probe).expect("probe ran");
    let dirs: Vec<&str> = seen
        .lines()
        .filter(|l| !l.contains("live01") && !l.contains("dead01"))
        .collect();
    assert!(
        dirs.iter().any(|l| l.contains("cutover-stage-"))
            && dirs.iter().any(|l| l.contains("cutover-ssh-")),
        "{seen}"
    );
    for line in &dirs {
        let private = if line.starts_with("file ") {
            line.starts_with("file 600 ")
        } else {
            line.starts_with("700 ")
        };
        assert!(private, "not private: {line}\n{seen}");
    }
    assert!(dirs.iter().any(|l| l.starts_with("file ")), "{seen}");
    assert!(!dead.exists(), "a dead run's staging is swept");
    assert!(live.exists(), "a live run's staging is never removed");
    std::fs::remove_dir_all(&live).expect("rm");
    assert_eq!(p.leftovers(), Vec::<String>::new());
    assert_eq!(
        fleet.workers[0].read("jobs/api/current/db.conf"),
        format!("password = {POISON}\n")
    );
}

/// Items 2 and 3: a file rendered from a secret is 0600 on the worker;
/// `env` holds only what `[templates] env` allows.
#[test]
fn secret_files_are_private_and_env_holds_only_allowed_variables() {
    let (fleet, p) = setup(1);
    p.job("api", "version = \"1\"\n");
    p.write("jobs/api/db.conf.tpl", "password = {{ kv.pw }}\n");
    p.write("jobs/api/plain.conf.tpl", "host = {{ kv.host }}\n");
    p.write(
        "jobs/api/env.conf.tpl",
        "token = {{ env.CUTOVER_ADMIN_TOKEN }}\n",
    );
    p.expect(&["kv", "put", "api", "pw", POISON, "--secret"], 0);
    p.expect(&["kv", "put", "api", "host", "db.internal"], 0);

    let env = [("CUTOVER_ADMIN_TOKEN", POISON), ("APP_NAME", "shop")];
    let out = p.cutover_env(&["deploy"], &env);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("jobs/api/env.conf.tpl:1: undefined variable env.CUTOVER_ADMIN_TOKEN"),
        "{out:?}"
    );
    assert!(!out.all().contains(POISON), "{out:?}");

    p.write("jobs/api/env.conf.tpl", "app = {{ env.APP_NAME }}\n");
    p.write(
        "cutover.toml",
        &format!("{}\n[templates]\nenv = [\"APP_*\"]\n", fleet.project_toml()),
    );
    let out = p.cutover_env(&["deploy"], &env);
    assert_eq!(out.code, 0, "{out:?}");
    let w = &fleet.workers[0];
    assert_eq!(w.read("jobs/api/current/env.conf"), "app = shop\n");
    assert_eq!(mode(&w.path("jobs/api/current/db.conf")), 0o600);
    assert_eq!(mode(&w.path("jobs/api/current/plain.conf")), 0o644);
    assert_eq!(mode(&w.path("jobs/api/current/env.conf")), 0o644);
}

/// Item 4: a lost or wrong key is refused, never silently replaced.
#[test]
fn a_lost_secret_key_is_refused_and_never_regenerated_over_secrets() {
    let (_fleet, p) = setup(1);
    p.job("api", "version = \"1\"\n");
    p.write("jobs/api/db.conf.tpl", "password = {{ kv.pw }}\n");
    p.expect(&["kv", "put", "api", "pw", POISON, "--secret"], 0);
    let key = p.path().join(".cutover/secret.key");
    let saved = std::fs::read(&key).expect("key");
    std::fs::remove_file(&key).expect("rm");

    for args in [
        &["deploy"][..],
        &["kv", "put", "api", "other", "x", "--secret"],
        &["kv", "get", "api", "pw", "--reveal"],
    ] {
        let out = p.expect(args, 2);
        assert!(
            out.stderr.contains(".cutover/secret.key is missing")
                && out.stderr.contains("restore the key file from your backup"),
            "{args:?}: {out:?}"
        );
        assert!(
            !key.exists(),
            "{args:?} made a new key over existing secrets"
        );
    }

    std::fs::write(&key, [7u8; 32]).expect("wrong key");
    let out = p.expect(&["kv", "put", "api", "other", "x", "--secret"], 2);
    assert!(
        out.stderr.contains("cannot decrypt secret `api/pw`") && out.stderr.contains("secret.key"),
        "{out:?}"
    );
    std::fs::write(&key, &saved).expect("restore");
    p.expect(&["deploy"], 0);
}

/// Item 5: a template error names the file, the line and the variable.
#[test]
fn a_template_error_names_the_variable() {
    let (_fleet, p) = setup(1);
    p.job("api", "version = \"1\"\n");
    p.write(
        "jobs/api/config.tpl",
        "# config\nname = {{ job.name }}\nkey = {{ kv.no_such_key }}\n",
    );
    let out = p.expect(&["deploy", "--dry-run"], 2);
    assert!(
        out.stderr
            .contains("jobs/api/config.tpl:3: undefined variable kv.no_such_key"),
        "{out:?}"
    );
}

/// Item 6: a failing target that echoes a secret: the value is redacted
/// from the output, the store and the audit log.
#[test]
fn a_secret_echoed_by_a_failing_target_is_redacted_everywhere() {
    let (_fleet, p) = setup(1);
    p.job("api", "version = \"1\"\n");
    p.write("jobs/api/db.conf.tpl", "password = {{ kv.pw }}\n");
    p.write(
        "jobs/api/Makefile",
        "start:\n\t@cat db.conf; echo \"login failed for $$(cat db.conf)\" >&2; exit 3\nstop:\n\t@true\n",
    );
    p.expect(&["kv", "put", "api", "pw", POISON, "--secret"], 0);
    let out = p.expect(&["deploy"], 1);
    assert!(out.all().contains("<redacted>"), "{out:?}");
    let mut seen = vec![out.all()];
    seen.push(p.expect(&["deploy", "--json"], 1).all());
    seen.push(p.expect(&["status", "--json"], 0).all());
    seen.push(p.expect(&["cat", "allocations", "--json"], 0).all());
    seen.push(p.expect(&["cat", "deployments", "--json"], 0).all());
    seen.push(std::fs::read_to_string(p.path().join(".cutover/audit.log")).expect("audit"));
    for (i, text) in seen.iter().enumerate() {
        assert!(
            !text.contains(POISON),
            "output {i} leaks the secret:\n{text}"
        );
    }
    let db = p.store_bytes();
    assert!(
        !db.windows(POISON.len()).any(|w| w == POISON.as_bytes()),
        "state.db holds the secret in plain text"
    );
}

/// Item 7: a job dir without job.toml is an error, not a removed job.
#[test]
fn a_misnamed_job_manifest_is_an_error_not_a_removed_job() {
    let (fleet, p) = setup(2);
    p.job("api", "version = \"1\"\n");
    p.job("web", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    p.expect(&["kv", "put", "web", "pw", POISON, "--secret"], 0);
    let manifest = std::fs::read(p.path().join("jobs/web/job.toml")).expect("read");
    p.remove("jobs/web/job.toml");
    p.write("jobs/web/job.tml", &String::from_utf8_lossy(&manifest));

    for args in [&["deploy"][..], &["deploy", "--dry-run"], &["check"]] {
        let out = p.expect(args, 2);
        assert!(
            out.stderr.contains("jobs/web/ has no job.toml"),
            "{args:?}: {out:?}"
        );
    }
    for w in &fleet.workers {
        assert!(w.path("jobs/web/current/Makefile").exists(), "{}", w.name);
        assert!(!w.read("stopped.log").contains("stop web"), "{}", w.name);
    }
    // Named right again, nothing was lost: no rollout, the secret is there.
    p.remove("jobs/web/job.tml");
    p.write("jobs/web/job.toml", &String::from_utf8_lossy(&manifest));
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
    p.expect(&["kv", "get", "web", "pw"], 0);
}

/// Item 8: a label typo stops the allocation and keeps its data.
#[test]
fn a_label_typo_stops_the_allocation_but_keeps_its_data() {
    let (fleet, p) = setup(2);
    p.job("api", "version = \"1\"\nselectors = [\"web\"]\n");
    p.expect(&["deploy"], 0);
    std::fs::write(
        fleet.workers[1].path("jobs/api/shared/orders.db"),
        "42 orders\n",
    )
    .expect("w");
    let labels: [(&str, &[&str]); 2] = [("w1", &["web"]), ("w2", &["wbe", "web2"])];
    p.write("workers.toml", &fleet.workers_toml(&labels));
    // `wbe` is a label no job selects, so the file is valid; the typo only
    // shows as a stop in the plan.
    let out = p.expect(&["deploy"], 0);
    assert!(
        out.stdout
            .contains("api@w2: stopped (worker no longer matches the job's selectors)"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("kept the shared/ data of api on w2"),
        "{out:?}"
    );
    let w2 = &fleet.workers[1];
    assert_eq!(w2.read("jobs/api/shared/orders.db"), "42 orders\n");

    // The typo fixed: the allocation starts again, on its data.
    let labels: [(&str, &[&str]); 2] = [("w1", &["web"]), ("w2", &["web"])];
    p.write("workers.toml", &fleet.workers_toml(&labels));
    p.expect(&["deploy"], 0);
    assert_eq!(w2.read("jobs/api/shared/orders.db"), "42 orders\n");
    assert!(w2.path("jobs/api/current/Makefile").exists());
}

/// Item 10: worker names that would corrupt state, and two workers in one root.
#[test]
fn unsafe_worker_names_and_shared_roots_are_refused() {
    let (fleet, p) = setup(1);
    p.job("api", "version = \"1\"\n");
    let w = &fleet.workers[0];
    for bad in ["web 1", "a=b", "x/y", "q\\\"uote", "tab\\there"] {
        p.write(
            "workers.toml",
            &format!(
                "[[worker]]\nname = \"{bad}\"\nhost = \"{}\"\nport = {}\nroot = \"{}\"\n",
                w.ip,
                w.port,
                w.root.display()
            ),
        );
        let out = p.expect(&["check"], 2);
        assert!(out.stderr.contains("worker name"), "{bad}: {out:?}");
    }
    let one = format!(
        "[[worker]]\nname = \"a\"\nhost = \"{}\"\nport = {}\nroot = \"{}\"\n",
        w.ip,
        w.port,
        w.root.display()
    );
    p.write(
        "workers.toml",
        &format!("{one}\n{}", one.replace("\"a\"", "\"b\"")),
    );
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr
            .contains("worker `b` has the same host and root as `a`"),
        "{out:?}"
    );
}

/// Item 11: what cannot be shipped faithfully is refused with its path,
/// quickly (a FIFO used to hang even a dry run, holding the lock).
#[test]
fn fifos_non_utf8_names_and_template_collisions_are_refused() {
    let (fleet, p) = setup(1);
    p.job("api", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    let before = crate::support::snapshot(&fleet.workers[0].root);

    let fifo = p.path().join("jobs/api/pipe");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(ok.success());
    for args in [&["deploy", "--dry-run"][..], &["deploy"]] {
        let out = p.expect(args, 2);
        assert!(
            out.stderr.contains("jobs/api/pipe is refused") && out.stderr.contains("FIFO"),
            "{out:?}"
        );
    }
    std::fs::remove_file(&fifo).expect("rm");

    use std::os::unix::ffi::OsStrExt;
    let odd = p
        .path()
        .join("jobs/api")
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    std::fs::write(&odd, "latin-1 name").expect("w");
    let out = p.expect(&["deploy"], 2);
    assert!(out.stderr.contains("not UTF-8"), "{out:?}");
    std::fs::remove_file(&odd).expect("rm");

    p.write("jobs/api/app.conf", "a\n");
    p.write("jobs/api/app.conf.tpl", "b\n");
    let out = p.expect(&["deploy"], 2);
    assert!(
        out.stderr
            .contains("would both land on the worker as app.conf"),
        "{out:?}"
    );
    assert_eq!(before, crate::support::snapshot(&fleet.workers[0].root));
}

/// Item 9: pruning never deletes the last healthy release. Two failed
/// deploys in a row with keep_releases = 2 used to prune it, leaving
/// nothing healthy to switch back to.
#[test]
fn pruning_keeps_the_last_healthy_release_through_failed_deploys() {
    let (fleet, p) = setup(1);
    p.job("api", "version = \"1\"\nkeep_releases = 2\n");
    p.expect(&["deploy"], 0);
    let w = &fleet.workers[0];
    let healthy = w.current("api").expect("current");
    for i in 2..=4 {
        p.job("api", &format!("version = \"{i}\"\nkeep_releases = 2\n"));
        p.write("jobs/api/health.txt", "down\n");
        p.expect(&["deploy"], 1);
        let releases = w.releases("api");
        assert!(
            releases.contains(&healthy),
            "deploy {i} pruned the last healthy release {healthy}: {releases:?}"
        );
        assert!(releases.len() <= 3, "{releases:?}");
    }
    // Healthy again: the new release is the last healthy one, so the next
    // deploy prunes down to keep_releases.
    p.remove("jobs/api/health.txt");
    p.expect(&["deploy"], 0);
    p.write("jobs/api/n.txt", "1\n");
    p.expect(&["deploy"], 0);
    let releases = w.releases("api");
    assert_eq!(releases.len(), 2, "{releases:?}");
    assert_eq!(w.current("api").as_deref(), Some(releases[1].as_str()));
}

/// Items 12 and 13: with state.db lost, deploy rebuilds the records from
/// what the workers carry: no upload, no restart, the same releases.
#[test]
fn a_lost_state_store_is_rebuilt_from_the_workers_not_redeployed() {
    let (fleet, p) = setup(2);
    p.job("api", "version = \"1\"\n");
    p.write("jobs/api/app.conf", "a = 1\n");
    p.expect(&["deploy"], 0);
    let before: Vec<_> = fleet
        .workers
        .iter()
        .map(|w| (w.current("api"), w.releases("api"), w.events("api")))
        .collect();
    p.lose_store();
    // A dry run plans from what the workers carry, and writes nothing.
    let plan = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        plan.stdout
            .contains("read (dry run: not written) 2 allocation record(s)")
            && plan.stdout.contains("plan: 2 unchanged"),
        "{plan:?}"
    );
    let status = p.expect(&["status"], 0);
    assert_eq!(
        status.stdout.matches("not deployed").count(),
        2,
        "{status:?}"
    );
    let out = p.expect(&["deploy"], 0);
    assert!(
        out.stdout
            .contains("rebuilt 2 allocation record(s) from what the workers carry")
            && out.stdout.contains("nothing to do"),
        "{out:?}"
    );
    let after: Vec<_> = fleet
        .workers
        .iter()
        .map(|w| (w.current("api"), w.releases("api"), w.events("api")))
        .collect();
    assert_eq!(before, after, "a lost store made cutover redeploy");

    // The next change numbers after what the workers carry.
    p.write("jobs/api/app.conf", "a = 2\n");
    p.expect(&["deploy"], 0);
    for w in &fleet.workers {
        let current = w.current("api").expect("current");
        assert!(current.starts_with("r000002-"), "{current}");
    }

    // `state rebuild` by hand, and a damaged store (a file of SQLite's;
    // a PostgreSQL database is lost instead).
    if on_postgres() {
        p.lose_store();
    } else {
        std::fs::write(
            p.path().join(".cutover/state.db"),
            "this is not a database\n",
        )
        .expect("w");
        for f in ["state.db-wal", "state.db-shm"] {
            let _ = std::fs::remove_file(p.path().join(".cutover").join(f));
        }
        let out = p.expect(&["status"], 1);
        assert!(
            out.stderr.contains(".cutover/state.db")
                && out.stderr.contains("cutover state rebuild"),
            "{out:?}"
        );
        std::fs::remove_file(p.path().join(".cutover/state.db")).expect("rm");
    }
    let out = p.expect(&["state", "rebuild"], 0);
    assert!(out.stdout.contains("[state] api@w1: r000002-"), "{out:?}");
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
}

/// Item 12: even when the workers carry nothing (a store lost before they
/// did), a new release never lands in the dir of the running one.
#[test]
fn without_store_or_records_an_upload_never_touches_the_running_release() {
    let (fleet, p) = setup(1);
    p.job("api", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    let w = &fleet.workers[0];
    let live = w.current("api").expect("current");
    let live_snapshot = crate::support::snapshot(&w.path(&format!("jobs/api/releases/{live}")));
    p.lose_store();
    std::fs::remove_file(w.path("jobs/api/promoted.json")).expect("rm");
    p.expect(&["deploy"], 0);
    let now = w.current("api").expect("current");
    assert_ne!(
        now, live,
        "the new release reused the running release's dir"
    );
    assert_eq!(
        live_snapshot,
        crate::support::snapshot(&w.path(&format!("jobs/api/releases/{live}"))),
        "the previous release was written into"
    );
}

/// Item 18: the store becomes unwritable in the middle of a batch (made
/// immutable by the lifecycle target): the run fails naming the file, and
/// after the fix the next run rolls out only what was not promoted.
#[test]
fn an_unwritable_store_mid_batch_fails_the_run_and_the_next_run_finishes_it() {
    let (fleet, p) = setup(2);
    let dir = p.path().join(".cutover");
    let chattr = |flag: &str, files: &[&str]| {
        std::process::Command::new("chattr")
            .arg(flag)
            .args(files.iter().map(|f| dir.join(f)))
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    p.job("api", "version = \"1\"\nmax_concurrent_starts = 1\n");
    p.expect(&["kv", "put", "api", "k", "v"], 0); // the store exists
    if !chattr("+i", &["state.db"]) {
        eprintln!("SKIPPED: chattr +i is not available on this filesystem");
        return;
    }
    chattr("-i", &["state.db"]);
    // w1's start (batch 1) makes the store immutable before its promotion.
    p.write(
        "jobs/api/Makefile",
        &crate::support::MAKEFILE.replacen(
            "start:\n",
            &format!(
                "start:\n\t@if [ \"$(CUTOVER_WORKER)\" = w1 ]; then chattr +i {d}/state.db {d}/state.db-wal 2>/dev/null || true; fi\n",
                d = dir.display()
            ),
            1,
        ),
    );
    let out = p.cutover(&["deploy"]);
    // The WAL file may be gone by now (chattr then fails on it): the db
    // file is made writable again on its own too.
    chattr("-i", &["state.db", "state.db-wal"]);
    chattr("-i", &["state.db"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.all().contains(".cutover/state.db")
            && out.all().contains("recording the promotion failed"),
        "{out:?}"
    );
    assert!(
        fleet.workers[1].current("api").is_none(),
        "batch 2 ran after the store failed"
    );

    // w1 is healthy and carries its promotion: only w2 is rolled out.
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("(1 start, 1 unchanged)"), "{out:?}");
    assert_eq!(
        fleet.workers[0]
            .events("api")
            .iter()
            .filter(|e| e.starts_with("start"))
            .count(),
        1
    );
    for w in &fleet.workers {
        assert!(w.current("api").is_some(), "{}", w.name);
    }
    let status = p.expect(&["status"], 0);
    assert_eq!(status.stdout.matches("promoted").count(), 2, "{status:?}");
}

/// Review: a worker renamed in workers.toml (same host and root) is not a
/// removed worker: its live job dir is not stopped, cleaned or purged.
#[test]
fn a_renamed_worker_keeps_its_running_job() {
    let (fleet, p) = setup(2);
    p.job("api", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    let w2 = &fleet.workers[1];
    let before = w2.current("api").expect("current");
    let toml = std::fs::read_to_string(p.path().join("workers.toml")).expect("workers");
    p.write(
        "workers.toml",
        &toml.replace("name = \"w2\"", "name = \"web-2\""),
    );
    let out = p.expect(&["deploy"], 0);
    assert!(
        out.stdout
            .contains("api@w2: forgotten, not stopped: worker `web-2` has the same host and root"),
        "{out:?}"
    );
    assert_eq!(w2.current("api").as_deref(), Some(before.as_str()));
    assert!(
        !w2.read("stopped.log").contains("stop api"),
        "the live job was stopped"
    );
    p.expect(&["drift"], 0);
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
    // A root written another way is the same root.
    let toml = std::fs::read_to_string(p.path().join("workers.toml")).expect("workers");
    let root = fleet.workers[0].root.display().to_string();
    p.write(
        "workers.toml",
        &format!(
            "{toml}\n[[worker]]\nname = \"again\"\nhost = \"{}\"\nport = {}\nroot = \"{}//\"\n",
            fleet.workers[0].ip, fleet.workers[0].port, root
        ),
    );
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr.contains("has the same host and root as `w1`"),
        "{out:?}"
    );
}

/// Review: a stopped allocation no longer claims, on its worker, to run
/// anything: a lost store does not bring it back as promoted.
#[test]
fn a_stopped_allocation_is_not_rebuilt_as_running() {
    let (fleet, p) = setup(2);
    p.job("api", "version = \"1\"\nselectors = [\"web\"]\n");
    p.expect(&["deploy"], 0);
    p.write(
        "workers.toml",
        &fleet.workers_toml(&[("w1", &["web"]), ("w2", &["db"])]),
    );
    p.expect(&["deploy"], 0);
    assert!(!fleet.workers[1].path("jobs/api/promoted.json").exists());
    p.lose_store();
    p.write(
        "workers.toml",
        &fleet.workers_toml(&[("w1", &["web"]), ("w2", &["web"])]),
    );
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("api@w2: start ok"), "{out:?}");
    assert!(fleet.workers[1].current("api").is_some());
}

/// Review: a secret with quotes and backslashes, printed by a hook and by
/// `cutover job run`, is still redacted.
#[test]
fn secrets_with_quotes_are_redacted_from_hooks_and_job_run() {
    let (_fleet, p) = setup(1);
    let secret = "sup3r\"se\\cret";
    p.write(
        "hooks/show.sh",
        // printf, not echo: dash's echo would cut the line at `\c`.
        "printf 'pw=%s\\n' \"$(cat $CUTOVER_PROJECT/pw.txt)\"; exit 1\n",
    );
    p.write("pw.txt", secret);
    p.job(
        "api",
        "version = \"1\"\n[hooks]\npre_deploy = \"sh hooks/show.sh\"\n",
    );
    p.write("jobs/api/db.conf.tpl", "password = {{ kv.pw }}\n");
    p.write(
        "jobs/api/Makefile",
        &format!("{}show:\n\t@cat db.conf\n", crate::support::MAKEFILE),
    );
    let put = p
        .command(&["kv", "put", "api", "pw", "-", "--secret"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(secret.as_bytes())?;
            c.wait()
        })
        .expect("kv put");
    assert!(put.success());
    let out = p.expect(&["deploy"], 1);
    assert!(out.all().contains("pw=<redacted>"), "{out:?}");
    assert!(!out.all().contains(secret), "{out:?}");
    p.job("api", "version = \"1\"\n");
    p.write(
        "jobs/api/Makefile",
        &format!("{}show:\n\t@cat db.conf\n", crate::support::MAKEFILE),
    );
    p.expect(&["deploy"], 0);
    let out = p.expect(&["job", "run", "api", "--target", "show"], 0);
    assert!(out.stdout.contains("password = <redacted>"), "{out:?}");
    assert!(!out.all().contains(secret), "{out:?}");
}

/// Review: a file and a dir that would land on one path are refused, by
/// `check` as by `deploy`.
#[test]
fn a_template_beside_a_dir_of_its_name_is_refused() {
    let (_fleet, p) = setup(1);
    p.job("api", "version = \"1\"\n");
    p.write("jobs/api/conf/a.txt", "a\n");
    p.write("jobs/api/conf.tpl", "b\n");
    for args in [&["check"][..], &["deploy", "--dry-run"]] {
        let out = p.expect(args, 2);
        assert!(
            out.stderr.contains("would both land on the worker as conf"),
            "{args:?} {out:?}"
        );
        assert!(out.stderr.contains("remove or rename it"), "{out:?}");
    }
}

/// Review: local workers are this machine whatever their `host`: a local
/// worker renamed (and given a host) is the same root, not a removed one.
#[test]
fn a_renamed_local_worker_keeps_its_running_job() {
    let p = Project::new();
    let init = std::process::Command::new(crate::support::BIN)
        .args(["init", "--example"])
        .arg(p.path())
        .env("TMPDIR", p.tmp.path())
        .output()
        .expect("init");
    assert!(init.status.success(), "{init:?}");
    p.expect(&["deploy"], 0);
    let toml = std::fs::read_to_string(p.path().join("workers.toml")).expect("workers");
    assert!(toml.contains("name = \"local-3\""), "{toml}");
    p.write(
        "workers.toml",
        &toml.replace("name = \"local-3\"", "name = \"box-3\"\nhost = \"box-3\""),
    );
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("forgotten, not stopped"), "{out:?}");
    p.expect(&["drift"], 0);
    // Two local workers in one root are refused, whatever their hosts say
    // and however the root is written.
    let toml = std::fs::read_to_string(p.path().join("workers.toml")).expect("workers");
    p.write(
        "workers.toml",
        &format!(
            "{toml}\n[[worker]]\nname = \"twin\"\nhost = \"other\"\ntransport = \"local\"\nroot = \"./local-workers/x/../local-1/\"\n"
        ),
    );
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr
            .contains("worker `twin` has the same host and root as `local-1`"),
        "{out:?}"
    );
}

/// Review: a first deploy whose batch is reverted stops its healthy members;
/// they no longer claim to run anything, so a lost store plans them again.
#[test]
fn a_reverted_first_start_does_not_come_back_as_promoted() {
    let (fleet, p) = setup(3);
    p.job(
        "api",
        "version = \"1\"\nmax_concurrent_starts = 3\non_failure = \"revert\"\n",
    );
    p.write(
        "jobs/api/health.txt.tpl",
        "{% if worker.name == \"w2\" %}down{% else %}ok{% endif %}\n",
    );
    p.expect(&["deploy"], 1);
    for w in &fleet.workers {
        assert!(!w.path("jobs/api/promoted.json").exists(), "{}", w.name);
    }
    p.lose_store();
    let plan = p.expect(&["deploy", "--dry-run"], 0);
    assert_eq!(plan.stdout.matches(" start ").count(), 3, "{plan:?}");
}

/// A state store written by a newer cutover (a schema migration this one
/// does not know) is refused with exit 2 before anything is touched, and
/// doctor says what to do; the store and the workers are left as they were.
#[test]
fn a_state_store_from_a_newer_cutover_is_refused_and_left_alone() {
    let p = crate::support::local_project();
    p.job("api", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    let current = || std::fs::read_link(p.path().join("local-workers/a/jobs/api/current")).ok();
    let before = current();
    let db = p.path().join(".cutover/state.db");
    let sql = |q: &str| {
        if let Some(pg) = &p.pg {
            pg.psql("cutover", &q.replace("1, x'00'", "true, '\\x00'"))
                .expect("sql");
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use sqlx::ConnectOptions;
            let mut c = format!("sqlite://{}", db.display())
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .expect("url")
                .connect()
                .await
                .expect("open");
            sqlx::raw_sql(q).execute(&mut c).await.expect("sql");
        });
    };
    sql(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', 1, x'00', 0)",
    );
    p.write("jobs/api/new.txt", "changed\n");
    let out = p.expect(&["deploy"], 2);
    assert!(
        out.stderr.contains("was written by a newer cutover")
            && out.stderr.contains("schema migration 99")
            && out.stderr.contains("upgrade cutover"),
        "{out:?}"
    );
    assert_eq!(current(), before, "nothing was deployed");
    let doctor = p.expect(&["doctor"], 1);
    assert!(
        doctor
            .stdout
            .contains("✗ state backend reachable, at this cutover's schema"),
        "{doctor:?}"
    );
    // The store kept everything: without the future row it deploys on.
    sql("DELETE FROM _sqlx_migrations WHERE version = 99");
    p.expect(&["deploy"], 0);
    assert_ne!(current(), before);
}
