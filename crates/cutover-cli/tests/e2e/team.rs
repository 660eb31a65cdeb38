//! Two operators, two clones of one project, one PostgreSQL store: the
//! lock is theirs to share, and neither a crash nor a paused holder
//! wedges it or lets a stale holder change anything.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{
    commit_and_push, finish, git, git_origin, merge_branch, signal, wait_for, write_file,
    write_job, PgServer, Project, MAKEFILE,
};

/// A clone of the team's project for operator `user`: PostgreSQL at
/// `url`, a 2 s lease, two local workers under `fleet`, and job `api`
/// whose `pre_deploy` hook waits at `gates` when the test says so.
fn operator(url: &str, fleet: &Path, gates: &Path, user: &str) -> Project {
    let p = Project::with_store(url);
    p.write(
        "cutover.toml",
        "name = \"team\"\n[state]\nbackend = \"postgres\"\nlease = \"2s\"\n",
    );
    p.write(
        "workers.toml",
        &format!(
            "[[worker]]\nname = \"a\"\ntransport = \"local\"\nroot = \"{0}/a\"\n\n\
             [[worker]]\nname = \"b\"\ntransport = \"local\"\nroot = \"{0}/b\"\n",
            fleet.display()
        ),
    );
    // The hook waits only while the test holds `gates/hold`.
    std::fs::write(
        gates.join("gate.sh"),
        format!(
            "[ -e {g}/hold ] || exit 0\ntouch {g}/reached\nwhile [ ! -e {g}/go ]; do sleep 0.05; done\n",
            g = gates.display()
        ),
    )
    .expect("gate");
    p.write(
        "jobs/api/job.toml",
        &format!(
            "version = \"1\"\n[hooks]\npre_deploy = \"sh {}/gate.sh\"\n\
             [health]\ncommand = \"make -s health\"\nattempts = 2\ninterval = \"100ms\"\n",
            gates.display()
        ),
    );
    p.write("jobs/api/Makefile", MAKEFILE);
    p.env
        .borrow_mut()
        .push(("CUTOVER_USER".into(), user.into()));
    p
}

struct Team {
    pg: PgServer,
    fleet: tempfile::TempDir,
    gates: tempfile::TempDir,
    ana: Project,
    ben: Project,
}

fn team() -> Team {
    let pg = PgServer::start();
    let url = pg.database("team");
    let fleet = tempfile::tempdir().expect("fleet");
    let gates = tempfile::tempdir().expect("gates");
    let ana = operator(&url, fleet.path(), gates.path(), "ana");
    let ben = operator(&url, fleet.path(), gates.path(), "ben");
    Team {
        pg,
        fleet,
        gates,
        ana,
        ben,
    }
}

impl Team {
    fn current(&self, worker: &str) -> Option<String> {
        std::fs::read_link(self.fleet.path().join(worker).join("jobs/api/current"))
            .ok()
            .map(|l| l.to_string_lossy().into_owned())
    }

    /// Holds the next `pre_deploy` at the gate.
    fn hold(&self) {
        std::fs::write(self.gates.path().join("hold"), "").expect("hold");
    }

    fn release_gate(&self) {
        std::fs::write(self.gates.path().join("go"), "").expect("go");
    }

    fn store(&self, sql: &str) -> String {
        self.pg.psql("team", sql).expect("sql")
    }
}

#[test]
fn the_lock_is_exclusive_across_clones_and_a_killed_holder_frees_it() {
    let t = team();
    t.ana.expect(&["deploy"], 0);
    let first = t.current("a").expect("deployed");

    // Ana's next deploy holds the lock at her hook; Ben is refused with
    // exit 3 and told who holds it.
    t.hold();
    t.ana.write("jobs/api/app.conf", "by = ana\n");
    t.ben.write("jobs/api/app.conf", "by = ben\n");
    let held = t.ana.spawn(&["deploy"]);
    wait_for(&t.gates.path().join("reached"));
    let refused = t.ben.expect(&["deploy"], 3);
    assert!(
        refused.stderr.contains("the project lock is held by ana@")
            && refused.stderr.contains("cutover deploy"),
        "{refused:?}"
    );
    let status = t.ben.expect(&["lock", "status"], 0);
    assert!(status.stdout.starts_with("locked by ana@"), "{status:?}");
    // Ben's own `lock release` does not end Ana's lock.
    let release = t.ben.expect(&["lock", "release"], 3);
    assert!(release.stderr.contains("held by ana@"), "{release:?}");
    assert_eq!(t.current("a").as_deref(), Some(first.as_str()));

    // kill -9: her connection goes with her process, and so does the lock.
    signal(&held, "KILL");
    let _ = finish(held);
    let _ = std::fs::remove_file(t.gates.path().join("hold"));
    let start = Instant::now();
    let taken = loop {
        let out = t.ben.cutover(&["deploy"]);
        if out.code != 3 || start.elapsed() > Duration::from_secs(10) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(taken.code, 0, "{taken:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the lock outlived its holder"
    );
    assert_ne!(t.current("a").as_deref(), Some(first.as_str()));
    let worker_conf =
        std::fs::read_to_string(t.fleet.path().join("a/jobs/api/current/app.conf")).expect("conf");
    assert_eq!(worker_conf, "by = ben\n");
    assert_eq!(
        t.ben.expect(&["lock", "status"], 0).stdout.trim(),
        "unlocked"
    );
}

#[test]
fn a_paused_holder_is_taken_over_and_once_resumed_changes_nothing() {
    let t = team();
    t.ana.expect(&["deploy"], 0);

    t.hold();
    t.ana.write("jobs/api/app.conf", "by = ana\n");
    let ana = t.ana.spawn(&["deploy"]);
    wait_for(&t.gates.path().join("reached"));
    signal(&ana, "STOP");
    let token_before: i64 = t.store("SELECT token FROM lease").parse().expect("token");

    // Past the 2 s lease without a heartbeat, Ben takes the lock over.
    std::thread::sleep(Duration::from_millis(3500));
    let _ = std::fs::remove_file(t.gates.path().join("hold"));
    t.ben.write("jobs/api/app.conf", "by = ben\n");
    let ben = t.ben.expect(&["deploy"], 0);
    assert!(
        ben.stderr.contains("took over") || ben.stdout.contains("took over"),
        "{ben:?}"
    );
    assert!(ben.all().contains("ana@"), "{ben:?}");
    let token_after: i64 = t.store("SELECT token FROM lease").parse().expect("token");
    let audit = t.store("SELECT line FROM audit ORDER BY seq DESC LIMIT 1");
    assert!(
        audit.contains("user=ben") && audit.contains("took over the lock of ana@"),
        "{audit}"
    );
    assert!(
        token_after > token_before,
        "{token_before} -> {token_after}"
    );
    let ben_release = t.current("a").expect("current");
    let worker_files = crate::support::snapshot(t.fleet.path());
    let store_rows = t.store(
        "SELECT string_agg(job || worker || status || COALESCE(release_id, ''), ',' ORDER BY job, worker) FROM allocations",
    );
    let deployments = t.store("SELECT count(*) FROM deployments");

    // Ana resumes and goes on past her hook: the store refuses her
    // writes and each worker her commands.
    signal(&ana, "CONT");
    t.release_gate();
    let out = finish(ana);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.all().contains("no longer holds the project lock")
            || out.all().contains("newer than this run's"),
        "{out:?}"
    );
    assert_eq!(t.current("a").as_deref(), Some(ben_release.as_str()));
    assert_eq!(
        crate::support::snapshot(t.fleet.path()),
        worker_files,
        "the stale holder changed a worker"
    );
    assert_eq!(
        t.store(
            "SELECT string_agg(job || worker || status || COALESCE(release_id, ''), ',' ORDER BY job, worker) FROM allocations"
        ),
        store_rows,
        "the stale holder wrote to the store"
    );
    assert_eq!(t.store("SELECT count(*) FROM deployments"), deployments);
    let conf =
        std::fs::read_to_string(t.fleet.path().join("a/jobs/api/current/app.conf")).expect("conf");
    assert_eq!(conf, "by = ben\n");

    // Each worker keeps the highest token it has seen, with the store's id,
    // and refuses a run with a lower one before the command starts.
    let store_id = t.store("SELECT value FROM meta WHERE key = 'store_id'");
    let kept = std::fs::read_to_string(t.fleet.path().join("a/.fence")).expect("fence");
    assert_eq!(kept, format!("{store_id} {token_after}\n"));
    std::fs::write(
        t.fleet.path().join("b/.fence"),
        format!("{store_id} 9999\n"),
    )
    .expect("w");
    let b_before = t.current("b");
    t.ben.write("jobs/api/app.conf", "by = ben, again\n");
    let refused = t.ben.expect(&["deploy"], 1);
    assert!(
        refused.stdout.contains("has seen fencing token 9999")
            && refused
                .stdout
                .contains("another operator took the lock over"),
        "{refused:?}"
    );
    assert_eq!(t.current("b"), b_before);
}

/// PostgreSQL restarts while a batch runs: the run loses its lock with its
/// connection and stops with a clear error; the batch's promotion (one
/// transaction) is all or nothing; the next deploy finishes the job.
#[test]
fn a_store_restarted_mid_batch_fails_the_run_and_the_next_run_finishes_it() {
    let mut t = team();
    t.ana.write(
        "jobs/api/job.toml",
        &std::fs::read_to_string(t.ana.path().join("jobs/api/job.toml"))
            .expect("job")
            .replacen(
                "version = \"1\"\n",
                "version = \"1\"\nmax_concurrent_upgrades = 2\n",
                1,
            ),
    );
    t.ana.expect(&["deploy"], 0);
    let before = (t.current("a"), t.current("b"));
    let rows = |t: &Team| {
        t.store("SELECT string_agg(worker || ' ' || status || ' ' || release_id, ',' ORDER BY worker) FROM allocations")
    };
    let promoted_before = rows(&t);

    // Both workers' restarts wait at a gate while the server restarts.
    let gates = crate::support::gated_makefile(&t.ana, "api", "restart");
    let run = t.ana.spawn(&["deploy"]);
    wait_for(&gates.path().join("reached"));
    t.pg.restart();
    std::fs::write(gates.path().join("go"), "").expect("go");
    let out = finish(run);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.all().contains("lost the project lock")
            && out.all().contains("connection to the state store")
            && !out.all().contains(crate::pgserver::PG_PASSWORD),
        "{out:?}"
    );
    assert_eq!(rows(&t), promoted_before, "a half-written promotion");
    assert_ne!((t.current("a"), t.current("b")), before);

    let again = t.ana.expect(&["deploy"], 0);
    assert!(again.stdout.contains("succeeded"), "{again:?}");
    let now = rows(&t);
    assert_ne!(now, promoted_before);
    assert_eq!(now.matches(" promoted ").count(), 2, "{now}");
    let live = t.current("a").expect("a");
    assert!(now.contains(live.trim_start_matches("releases/")), "{now}");
}

/// A clone of `origin` for operator `user`, its state in the store at `url`.
fn clone_for(origin: &Path, url: &str, user: &str) -> Project {
    let p = Project::with_store(url);
    git(
        p.path(),
        &["clone", "-q", origin.to_str().expect("utf8"), "."],
    );
    git(p.path(), &["config", "user.name", user]);
    git(
        p.path(),
        &["config", "user.email", &format!("{user}@example.com")],
    );
    p.env
        .borrow_mut()
        .push(("CUTOVER_USER".into(), user.into()));
    p
}

/// Ana's ticket release breaks the data; Ben, on his own clone, sees it,
/// is refused while his clone is behind the team's last release, and
/// reverts Ana's release: the data comes back.
#[test]
fn an_operator_reverts_a_colleagues_release_and_a_clone_behind_is_refused() {
    let pg = PgServer::start();
    let url = pg.database("team");
    let fleet = tempfile::tempdir().expect("fleet");
    let (_base, origin, dev) = git_origin();
    write_file(
        &dev,
        "cutover.toml",
        "name = \"team\"\n[state]\nbackend = \"postgres\"\n",
    );
    write_file(
        &dev,
        "workers.toml",
        &format!(
            "[[worker]]\nname = \"a\"\ntransport = \"local\"\nroot = \"{}/a\"\n",
            fleet.path().display()
        ),
    );
    write_file(&dev, ".gitignore", ".cutover/\n");
    write_job(
        &dev,
        "api",
        "version = \"1\"\n[backup]\ncommand = \"make -s backup\"\nrestore = \"make -s restore BACKUP={{ backup.id }}\"\n",
    );
    write_job(&dev, "web", "version = \"1\"\n");
    commit_and_push(&dev, "initial");
    let ana = clone_for(&origin, &url, "ana");
    let ben = clone_for(&origin, &url, "ben");
    ana.expect(&["deploy"], 0);
    let data = fleet.path().join("a/jobs/api/shared/data.txt");
    std::fs::write(&data, "precious\n").expect("data");

    // Ana's release 1001 corrupts the data; it fails in verify.
    merge_branch(
        &dev,
        "feat/1001",
        &[
            ("jobs/api/app.conf", "api = broken\n"),
            (
                "releases/1001-migrate.sh",
                &format!("#!/bin/sh\necho corrupt > {}\n", data.display()),
            ),
        ],
    );
    let out = ana.expect(&["release", "run", "1001"], 1);
    assert!(out.stdout.contains("failed in phase verify"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&data).expect("data"), "corrupt\n");

    // Ben sees her release from his clone.
    let state = ben.expect(&["release", "state", "1001"], 0);
    assert!(
        state.stdout.starts_with("release 1001: failed in verify"),
        "{state:?}"
    );

    // His clone is behind the team's last release: a release from it is
    // refused, and the clone is left as it was.
    merge_branch(&dev, "feat/1002", &[("jobs/web/app.conf", "web = 2\n")]);
    let behind = git(ben.path(), &["rev-parse", "HEAD"]);
    let refused = ben.expect(&["release", "run", "1002"], 2);
    assert!(
        refused
            .stderr
            .contains("but the team's last release 1001 by ana left the main line at")
            && refused.stderr.contains("git merge --ff-only"),
        "{refused:?}"
    );
    assert_eq!(git(ben.path(), &["rev-parse", "HEAD"]), behind);
    assert!(!ben.path().join(".cutover/releases/1002.env").exists());

    // Brought up to origin, he reverts Ana's release: the data comes back.
    git(ben.path(), &["fetch", "-q", "origin"]);
    git(ben.path(), &["merge", "-q", "--ff-only", "origin/main"]);
    let reverted = ben.expect(&["release", "revert", "1001"], 0);
    assert!(
        reverted.stdout.contains("pushed to origin/main") && !reverted.stderr.contains("warning"),
        "{reverted:?}"
    );
    assert_eq!(std::fs::read_to_string(&data).expect("data"), "precious\n");
    let after = ana.expect(&["release", "state", "1001"], 0);
    assert!(after.stdout.contains("reverted"), "{after:?}");
    // Ana's clone is now the one behind (Ben's revert commit).
    let refused = ana.expect(&["release", "run", "1002"], 2);
    assert!(
        refused.stderr.contains("last revert of 1001 by ben"),
        "{refused:?}"
    );
    // The audit log in the store holds both operators' commands.
    let audit = pg
        .psql(
            "team",
            "SELECT string_agg(line, E'\\n' ORDER BY seq) FROM audit",
        )
        .expect("audit");
    assert!(
        audit.contains("user=ana")
            && audit.contains("user=ben")
            && audit.contains("release revert 1001"),
        "{audit}"
    );
}

/// `state migrate` copies the embedded store into PostgreSQL and back,
/// reads every copy back before saying so, switches nothing by itself, and
/// refuses a store that already holds state; a project switched to the
/// copy carries on where it was (nothing redeployed, secrets readable).
#[test]
fn state_migrate_copies_a_store_to_postgres_and_back_and_switches_nothing() {
    // Its own store, whatever the suite runs on.
    let p = Project::with_store("");
    p.write(
        "cutover.toml",
        "name = \"t\"\n[state]\nbackend = \"sqlite\"\n",
    );
    p.write("workers.toml", crate::support::TWO_LOCAL_WORKERS);
    p.job("api", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    p.expect(
        &["kv", "put", "api", "token", "s3cr3t-v4lue", "--secret"],
        0,
    );
    // The secrets under a data key wrapped for an operator.
    let me = p
        .expect(&["secrets", "identity"], 0)
        .stdout
        .trim()
        .to_string();
    p.expect(&["secrets", "add-operator", "ana", &me], 0);
    p.write(".cutover/releases/42.env", "TICKET=42\n");
    let deployments = p.expect(&["cat", "deployments", "--json"], 0).stdout;

    let pg = PgServer::start();
    let url = pg.database("moved");
    for bad in ["mysql://ops:pw@db/x", "sqlite:", "nonsense"] {
        let out = p.expect(&["state", "migrate", "--to", bad], 2);
        assert!(!out.stderr.contains(":pw@"), "{out:?}");
    }
    let out = p.expect(&["state", "migrate", "--to", &url], 0);
    assert!(
        out.stdout
            .contains("verified: the copy reads back row for row")
            && out.stdout.contains("nothing was switched")
            && out.stdout.contains("allocations: 2 row(s)")
            && out.stdout.contains("operators: 1 row(s)")
            && !out.all().contains(crate::pgserver::PG_PASSWORD),
        "{out:?}"
    );
    assert_eq!(
        pg.psql(
            "moved",
            "SELECT content FROM release_files WHERE ticket = '42'"
        )
        .expect("files"),
        "TICKET=42"
    );
    // Nothing switched: the project still runs on its state.db.
    assert!(std::fs::read_to_string(p.path().join("cutover.toml"))
        .expect("toml")
        .contains("backend = \"sqlite\""));
    let again = p.expect(&["state", "migrate", "--to", &url], 2);
    assert!(again.stderr.contains("already holds state"), "{again:?}");

    // Switched by the operator: the copy carries on.
    p.write(
        "cutover.toml",
        "name = \"t\"\n[state]\nbackend = \"postgres\"\n",
    );
    p.env.borrow_mut().clear();
    p.env
        .borrow_mut()
        .push(("CUTOVER_STATE_URL".into(), url.clone()));
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
    assert_eq!(
        p.expect(&["kv", "get", "api", "token", "--reveal"], 0)
            .stdout
            .trim(),
        "s3cr3t-v4lue"
    );
    let moved = p.expect(&["cat", "deployments", "--json"], 0).stdout;
    assert_eq!(
        moved.matches("\"seq\"").count(),
        deployments.matches("\"seq\"").count(),
        "{moved}"
    );

    // And back into a new embedded store.
    let out = p.expect(&["state", "migrate", "--to", "sqlite:back/state.db"], 0);
    assert!(out.stdout.contains("verified"), "{out:?}");
    assert!(p.path().join("back/state.db").exists());
}

/// Two clones, two identities, one store: ana shares the secrets with
/// ben by his public key, and neither holds the other's key.
#[test]
fn operators_on_two_clones_share_the_secrets_through_the_store() {
    let t = team();
    t.ana
        .expect(&["kv", "put", "api", "token", "f1rst-t0ken", "--secret"], 0);
    // Under ana's project key file, which ben's clone does not have.
    let out = t.ben.expect(&["kv", "get", "api", "token", "--reveal"], 2);
    assert!(out.stderr.contains("secret.key is missing"), "{out:?}");

    let ana_pub = t.ana.expect(&["secrets", "identity"], 0).stdout;
    t.ana
        .expect(&["secrets", "add-operator", "ana", ana_pub.trim()], 0);
    let ben_pub = t.ben.expect(&["secrets", "identity"], 0).stdout;
    // Only an operator can let another in.
    let out = t
        .ben
        .expect(&["secrets", "add-operator", "ben", ben_pub.trim()], 2);
    assert!(
        out.stderr
            .contains("not one of this project's operators (ana)"),
        "{out:?}"
    );
    t.ana
        .expect(&["secrets", "add-operator", "ben", ben_pub.trim()], 0);

    let read = |p: &Project| {
        p.expect(&["kv", "get", "api", "token", "--reveal"], 0)
            .stdout
            .trim()
            .to_string()
    };
    assert_eq!(read(&t.ben), "f1rst-t0ken");
    t.ben
        .expect(&["kv", "put", "api", "token", "b3n-t0ken", "--secret"], 0);
    assert_eq!(read(&t.ana), "b3n-t0ken");
    let ops = t.ben.expect(&["secrets", "operators"], 0).stdout;
    assert!(ops.contains("ben (you)") && ops.contains("ana "), "{ops}");
    assert_eq!(t.store("SELECT count(*) FROM operators"), "2");
}

/// What a hostile or unlucky operator does to a shared store: another
/// project's URL, a store row no project could write, a password with a
/// `/`, a database that holds another application's tables, a lease too
/// short to keep. Each is refused, and nothing is lost or printed.
#[test]
fn a_shared_store_refuses_what_is_not_its_own() {
    let t = team();
    t.ana.expect(&["deploy"], 0);
    let running = t.current("a").expect("deployed");

    // Another project pointed at this store stops nothing of ours.
    let other = Project::with_store(&t.pg.url("team"));
    other.write(
        "cutover.toml",
        "name = \"other-project\"\n[state]\nbackend = \"postgres\"\n",
    );
    other.write(
        "workers.toml",
        &std::fs::read_to_string(t.ana.path().join("workers.toml")).expect("w"),
    );
    other.job("web", "version = \"1\"\n");
    let refused = other.expect(&["deploy"], 2);
    assert!(
        refused
            .stderr
            .contains("belongs to project `team`, not `other-project`"),
        "{refused:?}"
    );
    assert_eq!(t.current("a").as_deref(), Some(running.as_str()));

    // A row naming a path: refused, nothing outside the worker touched.
    let victim = t.fleet.path().join("victim/releases");
    std::fs::create_dir_all(&victim).expect("victim");
    t.store(
        "INSERT INTO allocations (job, worker, status, updated_at) VALUES ('../../victim', 'a', 'promoted', 'now')",
    );
    let out = t.ana.expect(&["deploy"], 1);
    assert!(
        out.stderr.contains("which no project can define"),
        "{out:?}"
    );
    assert!(
        victim.exists(),
        "a store row deleted a dir outside the worker"
    );
    t.store("DELETE FROM allocations WHERE job = '../../victim'");

    // A password with an unencoded `/`: exit 2, never printed.
    let out = t.ana.cutover_env(
        &["lock", "status"],
        &[("CUTOVER_STATE_URL", "postgres://ops:S3cr/tPw@127.0.0.1:1/x")],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(!out.all().contains("S3cr"), "{out:?}");

    // A database of another application: nothing written to it.
    let foreign = t.pg.database("shop");
    t.pg.psql("shop", "CREATE TABLE customers (id int)")
        .expect("table");
    let out = t
        .ana
        .cutover_env(&["lock", "status"], &[("CUTOVER_STATE_URL", &foreign)]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not a cutover store"), "{out:?}");
    assert_eq!(
        t.pg.psql(
            "shop",
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        .expect("tables"),
        "1"
    );

    // A lease a live holder could not keep.
    t.ana.write(
        "cutover.toml",
        "name = \"team\"\n[state]\nbackend = \"postgres\"\nlease = \"1ms\"\n",
    );
    let out = t.ana.expect(&["check"], 2);
    assert!(out.stderr.contains("lease: shorter than 2s"), "{out:?}");
    // A password in the committed cutover.toml.
    t.ana.write(
        "cutover.toml",
        "name = \"team\"\n[state]\nbackend = \"postgres\"\nurl = \"postgres://ops:hunter2@db/team\"\n",
    );
    let out = t.ana.expect(&["check"], 2);
    assert!(
        out.stderr
            .contains("url: holds a password, and cutover.toml is committed"),
        "{out:?}"
    );
}
