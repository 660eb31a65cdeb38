//! Ticket releases against real git repositories (a bare `origin`, a
//! developer clone that merges and pushes, the deploy host's clone where
//! cutover runs) and the real sshd fleet.

use std::path::PathBuf;

use crate::support::{git, snapshot, write_file, write_job, Fleet, Project};

struct Setup {
    fleet: Fleet,
    _base: tempfile::TempDir,
    /// A developer's clone: changes are committed, merged and pushed here.
    dev: PathBuf,
    /// The deploy host's clone, where cutover runs.
    p: Project,
}

const API: &str = "version = \"1\"\nselectors = [\"web\"]\n[backup]\ncommand = \"make -s backup\"\nrestore = \"make -s restore BACKUP={{ backup.id }}\"\n";

/// Jobs api (with a backup), web and other on `n` workers; deployed once.
fn setup(n: usize) -> Setup {
    let fleet = Fleet::start(n);
    let (base, origin, dev) = crate::support::git_origin();
    let names: Vec<String> = fleet.workers.iter().map(|w| w.name.clone()).collect();
    let labels: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &["web"][..])).collect();
    write_file(&dev, "cutover.toml", &fleet.project_toml());
    write_file(&dev, "workers.toml", &fleet.workers_toml(&labels));
    write_file(&dev, ".gitignore", ".cutover/\n");
    write_job(&dev, "api", API);
    write_job(&dev, "web", "version = \"1\"\nselectors = [\"web\"]\n");
    write_job(&dev, "other", "version = \"1\"\nselectors = [\"web\"]\n");
    crate::support::commit_and_push(&dev, "initial");
    let p = crate::support::deploy_clone(&origin);
    p.expect(&["deploy"], 0);
    Setup {
        fleet,
        _base: base,
        dev,
        p,
    }
}

impl Setup {
    /// Commits `files` on a feature branch and merges it into main with a
    /// merge commit, then pushes main.
    fn merge(&self, branch: &str, files: &[(&str, &str)]) {
        crate::support::merge_branch(&self.dev, branch, files);
    }

    fn head(&self) -> String {
        git(self.p.path(), &["rev-parse", "HEAD"])
    }

    fn state_file(&self, ticket: &str) -> String {
        std::fs::read_to_string(
            self.p
                .path()
                .join(format!(".cutover/releases/{ticket}.env")),
        )
        .unwrap_or_default()
    }

    /// `phase event` pairs of the release's audit log, with the format checked.
    fn log_events(&self, ticket: &str) -> Vec<String> {
        let text = std::fs::read_to_string(
            self.p
                .path()
                .join(format!(".cutover/releases/{ticket}.log")),
        )
        .expect("log");
        text.lines()
            .map(|l| {
                let words: Vec<&str> = l.split(' ').collect();
                assert!(
                    words[0].len() == 25 && words[0].ends_with("+00:00"),
                    "timestamp: {l}"
                );
                assert_eq!(words[1], format!("ticket={ticket}"), "{l}");
                words[2..].join(" ")
            })
            .collect()
    }
}

#[test]
fn a_merge_touching_two_jobs_is_released_in_four_phases() {
    let s = setup(2);
    let base = s.head();
    s.merge(
        "feat/1234",
        &[
            ("jobs/api/app.conf", "api = 2\n"),
            ("jobs/web/page.html", "<p>2</p>\n"),
        ],
    );
    let out = s.p.expect(&["release", "run", "1234"], 0);
    assert_eq!(
        out.stdout.lines().last(),
        Some("[release-run] release 1234 complete"),
        "{out:?}"
    );
    let merge = s.head();
    assert_ne!(base, merge);

    let state = s.state_file("1234");
    let lines: Vec<&str> = state.lines().collect();
    assert_eq!(
        &lines[..6],
        [
            "TICKET=1234",
            "BRANCH=main",
            &format!("BASE_SHA={base}"),
            &format!("MERGE_SHA={merge}"),
            "SERVICES=\"api web\"",
            "SKIPPED_METADATA=\"\"",
        ]
    );
    let backups = lines[6]
        .strip_prefix("BACKUPS=\"")
        .and_then(|b| b.strip_suffix('"'))
        .expect("BACKUPS");
    let keys: Vec<&str> = backups
        .split(' ')
        .map(|b| b.split('=').next().unwrap_or(""))
        .collect();
    assert_eq!(keys, ["api@w1", "api@w2"], "{state}");
    assert_eq!(
        lines[7..],
        [
            "PHASES_DONE=\"prepare migrate ticket verify\"",
            "REVERTED=\"\""
        ]
    );

    assert_eq!(
        s.log_events("1234"),
        [
            "phase=prepare event=start",
            "phase=prepare event=done rc=0",
            "phase=migrate event=start",
            "phase=migrate event=done rc=0",
            "phase=ticket event=skipped-no-script",
            "phase=verify event=start",
            "phase=verify event=done rc=0",
            "phase=orchestrator event=done rc=0",
        ]
    );
    for w in &s.fleet.workers {
        assert_eq!(w.read("jobs/api/current/app.conf"), "api = 2\n");
        assert_eq!(w.read("jobs/web/current/page.html"), "<p>2</p>\n");
        assert!(w.current("api").expect("api").starts_with("r000002-"));
        assert!(
            w.current("other").expect("other").starts_with("r000001-"),
            "other was untouched"
        );
        assert_eq!(
            w.events("other").len(),
            2,
            "other: start and health only: {:?}",
            w.events("other")
        );
        let id = backups
            .split(' ')
            .find(|b| b.starts_with(&format!("api@{}=", w.name)))
            .and_then(|b| b.split('=').nth(1))
            .expect("id");
        assert_eq!(
            w.read(&format!("jobs/api/shared/{id}")),
            "data-1\n",
            "the backup saved the data file"
        );
    }
    let st = s.p.expect(&["release", "state", "1234"], 0);
    assert!(st.stdout.starts_with("release 1234: complete"), "{st:?}");
    let json = s.p.expect(&["release", "state", "1234", "--json"], 0);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(doc["standing"], "complete");
    assert_eq!(doc["state"]["merge_sha"], merge.as_str());
    s.p.expect(&["drift"], 0);
}

#[test]
fn revert_drill_restores_the_backup_the_old_release_and_reverts_git() {
    let s = setup(2);
    let old = s.fleet.worker("w1").current("api").expect("current");
    // The ticket script is a data migration that corrupts the data: the
    // service turns unhealthy, and verify fails.
    let mut script = String::from("#!/bin/sh\nset -e\n");
    for w in &s.fleet.workers {
        script.push_str(&format!(
            "echo corrupt > {}/jobs/api/shared/data.txt\n",
            w.root.display()
        ));
    }
    // The broken release flushes its state into the data when it stops:
    // a revert that restored the data before stopping it would lose it.
    let flushing = crate::support::MAKEFILE.replace(
        "stop:\n",
        "stop:\n\t@echo flushed-by-broken > \"$(CUTOVER_SHARED)/data.txt\"\n",
    );
    s.merge(
        "feat/9999",
        &[
            ("jobs/api/app.conf", "api = broken\n"),
            ("jobs/api/Makefile", &flushing),
            ("releases/9999-migrate.sh", &script),
        ],
    );
    let merge_before = {
        git(s.p.path(), &["fetch", "-q"]);
        git(s.p.path(), &["rev-parse", "origin/main"])
    };
    let out = s.p.expect(&["release", "run", "9999"], 1);
    assert!(
        out.stdout.contains(
            "release-run failed in phase verify. To roll back:\n  cutover release revert 9999"
        ),
        "{out:?}"
    );
    assert!(out.stdout.contains("unhealthy"), "{out:?}");
    for w in &s.fleet.workers {
        assert_eq!(w.read("jobs/api/shared/data.txt"), "corrupt\n");
    }
    let st = s.p.expect(&["release", "state", "9999"], 0);
    assert!(
        st.stdout.starts_with("release 9999: failed in verify"),
        "{st:?}"
    );
    // Item 25: a plain re-run says where it failed and what to do (it used
    // to answer "nothing to release").
    let rerun = s.p.expect(&["release", "run", "9999"], 2);
    assert!(
        rerun.stderr.contains("release 9999 failed in phase verify")
            && rerun
                .stderr
                .contains("cutover release run 9999 --from=verify")
            && rerun.stderr.contains("cutover release revert 9999"),
        "{rerun:?}"
    );

    let out = s.p.expect(&["release", "revert", "9999"], 0);
    assert!(
        out.stdout
            .contains("[release-revert] release 9999 reverted"),
        "{out:?}"
    );
    for w in &s.fleet.workers {
        assert_eq!(
            w.read("jobs/api/shared/data.txt"),
            "data-1\n",
            "the backup came back on {}",
            w.name
        );
        assert_eq!(
            w.current("api").as_deref(),
            Some(old.as_str()),
            "the old release runs on {}",
            w.name
        );
        assert_eq!(w.read("jobs/api/current/app.conf"), "");
        // Stopped (the broken release), then the old one started.
        assert!(w.read("stopped.log").contains("stop api"), "{}", w.name);
        let ev = w.events("api");
        let last = ev
            .iter()
            .rev()
            .find(|l| !l.starts_with("healthy"))
            .expect("events");
        assert!(last.starts_with(&format!("start {old}")), "{ev:?}");
        // `web` and `other` were not changed by the release: left alone.
        assert!(
            out.stdout.contains(&format!(
                "[release-revert] web@{}: not changed by the release; left running",
                w.name
            )) || !out.stdout.contains("web@"),
            "{out:?}"
        );
    }
    let subject = git(s.p.path(), &["log", "-1", "--format=%s"]);
    assert!(
        subject.starts_with("Revert \"Merge feat/9999\""),
        "{subject}"
    );
    assert_eq!(git(s.p.path(), &["rev-parse", "HEAD~1"]), merge_before);
    git(&s.dev, &["fetch", "-q"]);
    assert_eq!(
        git(&s.dev, &["rev-parse", "origin/main"]),
        s.head(),
        "the revert commit was pushed"
    );
    let drift = s.p.expect(&["drift"], 0);
    assert!(!drift.stdout.contains("DRIFT"), "{drift:?}");
    assert!(s
        .p
        .expect(&["release", "state", "9999"], 0)
        .stdout
        .starts_with("release 9999: reverted"));
    assert!(s.log_events("9999").ends_with(&[
        "phase=revert event=start".to_string(),
        "phase=revert event=done rc=0".to_string()
    ]));

    // A second revert says so and changes nothing (it used to restore the
    // backup again, over what the service wrote since).
    for w in &s.fleet.workers {
        std::fs::write(w.path("jobs/api/shared/data.txt"), "newer\n").expect("w");
    }
    let again = s.p.expect(&["release", "revert", "9999"], 0);
    assert!(again.stdout.contains("was already reverted"), "{again:?}");
    for w in &s.fleet.workers {
        assert_eq!(w.read("jobs/api/shared/data.txt"), "newer\n");
    }
    // A re-run of the reverted release is refused, naming why.
    let rerun = s.p.expect(&["release", "run", "9999"], 2);
    assert!(rerun.stderr.contains("was reverted"), "{rerun:?}");
}

/// Items 21 and 28: revert touches only what migrate changed, and a revert
/// kept local (--no-push) makes the next release refuse with the fix.
#[test]
fn revert_leaves_unchanged_allocations_alone_and_an_unpushed_revert_blocks_the_next_release() {
    let s = setup(2);
    // The release changes `web` only; `api` (with a backup) keeps running.
    s.merge("feat/31", &[("jobs/web/page.html", "31\n")]);
    s.p.expect(&["release", "run", "31"], 0);
    let api_before: Vec<_> = s.fleet.workers.iter().map(|w| w.events("api")).collect();
    for w in &s.fleet.workers {
        std::fs::write(w.path("jobs/api/shared/data.txt"), "orders since\n").expect("w");
    }
    let out = s.p.expect(&["release", "revert", "31", "--no-push"], 0);
    assert!(out.stdout.contains("not pushed (--no-push)"), "{out:?}");
    for (w, before) in s.fleet.workers.iter().zip(api_before) {
        assert_eq!(
            w.read("jobs/api/shared/data.txt"),
            "orders since\n",
            "{}",
            w.name
        );
        assert_eq!(w.events("api"), before, "api was restarted on {}", w.name);
        assert_eq!(w.read("jobs/web/current/page.html"), "", "{}", w.name);
    }

    s.merge("feat/32", &[("jobs/web/page.html", "32\n")]);
    let refused = s.p.expect(&["release", "run", "32"], 2);
    assert!(
        refused
            .stderr
            .contains("main has 1 commit(s) that origin/main does not have")
            && refused.stderr.contains("git push origin main"),
        "{refused:?}"
    );
    assert!(!s.p.path().join(".cutover/releases/32.env").exists());
}

/// Item 29: two scripts for one ticket are found in prepare, before any
/// backup or deploy.
#[test]
fn two_ticket_scripts_are_refused_in_prepare() {
    let s = setup(1);
    s.merge(
        "feat/41",
        &[
            ("jobs/api/app.conf", "41\n"),
            ("releases/41-a.sh", "#!/bin/sh\ntrue\n"),
            ("releases/41-b.sh", "#!/bin/sh\ntrue\n"),
        ],
    );
    let out = s.p.expect(&["release", "run", "41"], 2);
    assert!(
        out.stderr.contains("41-a.sh") && out.stderr.contains("41-b.sh"),
        "{out:?}"
    );
    let events = s.log_events("41");
    assert_eq!(
        events,
        [
            "phase=prepare event=start",
            "phase=prepare event=failed rc=2"
        ]
    );
    assert_eq!(s.fleet.workers[0].read("jobs/api/current/app.conf"), "");
}

#[test]
fn a_failed_ticket_script_resumes_from_ticket_without_redoing_earlier_phases() {
    let s = setup(1);
    let marker = s._base.path().join("ran-once");
    let script = format!("#!/bin/sh\nif [ ! -e {m} ]; then touch {m}; echo 'lock timeout' >&2; exit 7; fi\necho \"migrated $TICKET $SERVICES\"\n", m = marker.display());
    s.merge(
        "feat/77",
        &[
            ("jobs/api/app.conf", "api = 77\n"),
            ("releases/77-data.sh", &script),
        ],
    );
    let out = s.p.expect(&["release", "run", "77"], 1);
    assert!(
        out.stdout.contains("release-run failed in phase ticket"),
        "{out:?}"
    );
    assert!(out.stdout.contains("lock timeout"), "{out:?}");
    let w = s.fleet.worker("w1");
    let releases = w.releases("api");
    let backups_before = snapshot(&w.path("jobs/api/shared")).len();

    // A playbook that knows this failure is offered, and `playbook match` finds it again.
    write_file(s.p.path(), "recovery/playbooks/ticket.yaml", "- id: ticket-lock-timeout\n  symptom: the ticket script hits a lock timeout\n  match: [\"lock timeout\"]\n  phases: [ticket]\n  fix:\n    adhoc: |\n      cutover release run 77 --from=ticket\n");
    let m = s.p.expect(&["playbook", "match", "77"], 0);
    assert!(
        m.stdout.contains("ticket-lock-timeout")
            && m.stdout
                .contains("fix: cutover release run 77 --from=ticket"),
        "{m:?}"
    );
    std::fs::remove_dir_all(s.p.path().join("recovery")).expect("rm");

    let out = s.p.expect(&["release", "run", "77", "--from=ticket"], 0);
    assert!(out.stdout.contains("migrated 77 api"), "{out:?}");
    assert_eq!(w.releases("api"), releases, "no re-upload");
    assert_eq!(
        snapshot(&w.path("jobs/api/shared")).len(),
        backups_before,
        "no second backup"
    );
    let events = s.log_events("77");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("phase=prepare"))
            .count(),
        2,
        "{events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("phase=migrate"))
            .count(),
        2,
        "{events:?}"
    );
    assert!(
        events.contains(&"phase=ticket event=failed rc=7".to_string()),
        "{events:?}"
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("phase=orchestrator event=done rc=0")
    );
}

#[test]
fn a_release_killed_mid_migrate_resumes_from_migrate() {
    let s = setup(2);
    // The new release's restart holds at a gate: the kill lands inside
    // migrate, with w1 switched and restarting.
    let gates = tempfile::tempdir().expect("gates");
    let held = crate::support::MAKEFILE.replacen(
        "restart:\n",
        &format!("restart:\n{}", crate::support::gate_line(gates.path())),
        1,
    );
    s.merge(
        "feat/55",
        &[("jobs/web/Makefile", &held), ("jobs/web/page.html", "55\n")],
    );
    let mut child = s.p.spawn(&["release", "run", "55"]);
    let log = s.p.path().join(".cutover/releases/55.log");
    crate::support::wait_for(&gates.path().join("reached"));
    child.kill().expect("kill -9"); // SIGKILL
    child.wait().expect("reaped");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("phase=migrate event=start") && !text.contains("phase=migrate event=done"),
        "{text}"
    );
    std::fs::write(gates.path().join("go"), "").expect("go");

    let out = s.p.expect(&["release", "run", "55", "--from=migrate"], 0);
    assert_eq!(
        out.stdout.lines().last(),
        Some("[release-run] release 55 complete"),
        "{out:?}"
    );
    for w in &s.fleet.workers {
        assert_eq!(w.read("jobs/web/current/page.html"), "55\n", "{}", w.name);
    }
    let audit = std::fs::read_to_string(s.p.path().join(".cutover/audit.log")).expect("audit");
    // The killed run's lock was taken over, and that is on the record.
    let resumed = audit.lines().last().expect("audit line");
    assert!(
        resumed.contains("release run 55 --from=migrate") && resumed.contains("outcome=complete"),
        "{audit}"
    );
    assert!(
        resumed.contains("took over the stale lock of ")
            && resumed.contains("`cutover release run 55`, ticket 55"),
        "{audit}"
    );
    assert!(out.stdout.contains("took over the stale lock"), "{out:?}");
    assert_eq!(s.p.expect(&["lock", "status"], 0).stdout.trim(), "unlocked");
    s.p.expect(&["drift"], 0);
}

#[test]
fn refusals_change_nothing() {
    let s = setup(1);
    // Nothing merged: nothing to release.
    let out = s.p.expect(&["release", "run", "1"], 5);
    assert!(
        out.stderr
            .contains("already up-to-date with origin/main — nothing to release"),
        "{out:?}"
    );
    assert!(!s.p.path().join(".cutover/releases/1.env").exists());

    // Pulled by hand before the release: exit 5 and the way back.
    s.merge("feat/2", &[("jobs/web/x.txt", "2\n")]);
    let before = s.head();
    git(s.p.path(), &["pull", "-q"]);
    let out = s.p.expect(&["release", "run", "2"], 5);
    assert!(
        out.stderr.contains("git reflog") && out.stderr.contains("git reset --hard <pre-pull-sha>"),
        "{out:?}"
    );
    git(s.p.path(), &["reset", "-q", "--hard", &before]);

    // A dirty tree is refused before anything happens.
    write_file(s.p.path(), "jobs/web/stray.txt", "x\n");
    let out = s.p.expect(&["release", "run", "2"], 2);
    assert!(
        out.stderr.contains("uncommitted changes") && out.stderr.contains("jobs/web/stray.txt"),
        "{out:?}"
    );
    assert_eq!(s.head(), before, "no pull");
    std::fs::remove_file(s.p.path().join("jobs/web/stray.txt")).expect("rm");

    // Another branch needs the flag.
    git(s.p.path(), &["checkout", "-q", "-b", "topic"]);
    let out = s.p.expect(&["release", "run", "2"], 2);
    assert!(
        out.stderr.contains("refusing to release branch `topic`")
            && out.stderr.contains("--force-allow-non-main"),
        "{out:?}"
    );
    git(s.p.path(), &["checkout", "-q", "main"]);

    // Resuming needs a state file; a bad ticket id is bad input.
    let out = s.p.expect(&["release", "run", "3", "--from=verify"], 2);
    assert!(out.stderr.contains("no state file for ticket 3"), "{out:?}");
    s.p.expect(&["release", "revert", "3"], 2);
    s.p.expect(&["release", "run", "../x"], 2);
    assert_eq!(s.head(), before);
    s.p.expect(&["release", "run", "2"], 0);
}

#[test]
fn dry_run_previews_every_phase_and_changes_nothing() {
    let s = setup(2);
    s.merge(
        "feat/8",
        &[
            ("jobs/api/app.conf", "8\n"),
            ("releases/8-x.sh", "#!/bin/sh\necho hi\n"),
        ],
    );
    let clone_before = snapshot(s.p.path());
    let head = s.head();
    let workers_before: Vec<_> = s.fleet.workers.iter().map(|w| snapshot(&w.root)).collect();
    let out = s.p.expect(&["release", "run", "8", "--dry-run"], 0);
    for needle in [
        "SERVICES=\"api\"",
        "would back up api@w1",
        "would run bash releases/8-x.sh --yes",
        "restart",
        "dry run: nothing was changed",
    ] {
        assert!(out.stdout.contains(needle), "missing `{needle}`:\n{out:?}");
    }
    assert_eq!(s.head(), head, "no pull");
    let unchanged = |a: &[(String, u32, Vec<u8>)], b: &[(String, u32, Vec<u8>)]| {
        // The fetch may update remote-tracking refs and git's own bookkeeping;
        // the SQLite files may be checkpointed. Everything else is byte-for-byte.
        let keep =
            |f: &&(String, u32, Vec<u8>)| !f.0.starts_with(".git/") && !f.0.contains("state.db");
        a.iter().filter(keep).eq(b.iter().filter(keep))
    };
    assert!(
        unchanged(&clone_before, &snapshot(s.p.path())),
        "the dry run changed the clone or .cutover/"
    );
    assert!(!s.p.path().join(".cutover/releases").exists());
    let workers_after: Vec<_> = s.fleet.workers.iter().map(|w| snapshot(&w.root)).collect();
    assert!(
        workers_before == workers_after,
        "the dry run changed a worker"
    );
}

#[test]
fn hotfix_release_then_return_to_main() {
    let s = setup(1);
    git(&s.dev, &["checkout", "-q", "-b", "hotfix/x"]);
    write_file(&s.dev, "jobs/web/page.html", "hotfix\n");
    git(&s.dev, &["add", "-A"]);
    git(&s.dev, &["commit", "-q", "-m", "hotfix"]);
    git(&s.dev, &["push", "-q", "origin", "hotfix/x"]);
    git(&s.dev, &["checkout", "-q", "main"]);

    s.p.expect(&["release", "run", "1235", "hotfix/x"], 2);
    let out = s.p.expect(
        &[
            "release",
            "run",
            "1235",
            "hotfix/x",
            "--force-allow-non-main",
        ],
        0,
    );
    assert!(
        out.stdout
            .ends_with("[release-run] release 1235 complete\n"),
        "{out:?}"
    );
    assert!(s.state_file("1235").contains("BRANCH=hotfix/x\n"));
    let w = s.fleet.worker("w1");
    assert_eq!(w.read("jobs/web/current/page.html"), "hotfix\n");

    // Main moves on (with the hotfix merged); return-to-main deploys it.
    git(
        &s.dev,
        &[
            "merge",
            "-q",
            "--no-ff",
            "-m",
            "Merge hotfix",
            "origin/hotfix/x",
        ],
    );
    write_file(&s.dev, "jobs/api/app.conf", "main\n");
    git(&s.dev, &["add", "-A"]);
    git(&s.dev, &["commit", "-q", "-m", "main work"]);
    git(&s.dev, &["push", "-q", "origin", "main"]);
    let out = s.p.expect(&["release", "return-to-main"], 0);
    assert!(
        out.stdout.contains("back on main: deployed and clean"),
        "{out:?}"
    );
    assert_eq!(
        git(s.p.path(), &["rev-parse", "--abbrev-ref", "HEAD"]),
        "main"
    );
    assert_eq!(s.head(), git(&s.dev, &["rev-parse", "HEAD"]));
    assert_eq!(w.read("jobs/api/current/app.conf"), "main\n");
    assert_eq!(w.read("jobs/web/current/page.html"), "hotfix\n");
}

#[test]
fn two_concurrent_runs_exactly_one_proceeds() {
    let s = setup(1);
    let gates = tempfile::tempdir().expect("gates");
    let held = crate::support::MAKEFILE.replacen(
        "restart:\n",
        &format!("restart:\n{}", crate::support::gate_line(gates.path())),
        1,
    );
    s.merge(
        "feat/5",
        &[("jobs/web/Makefile", &held), ("jobs/web/p", "5\n")],
    );
    let first = s.p.spawn(&["release", "run", "5"]);
    crate::support::wait_for(&gates.path().join("reached"));
    let second = s.p.expect(&["release", "run", "5"], 3);
    assert!(
        second.stderr.contains("the project lock is held by") && second.stderr.contains("ticket 5"),
        "{second:?}"
    );
    s.p.expect(&["deploy"], 3);
    let status = s.p.expect(&["lock", "status", "--json"], 0);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(doc["holder"]["ticket"], "5");
    std::fs::write(gates.path().join("go"), "").expect("go");
    let first = crate::support::finish(first);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(s.p.expect(&["lock", "status"], 0).stdout.trim(), "unlocked");
}

/// Item 22: a BASE release that is gone from its worker is rebuilt from
/// git at BASE_SHA before revert touches any data.
#[test]
fn revert_rebuilds_a_pruned_base_release_from_git() {
    let s = setup(2);
    let base = s.fleet.worker("w1").current("api").expect("current");
    s.merge("feat/61", &[("jobs/api/app.conf", "api = 61\n")]);
    s.p.expect(&["release", "run", "61"], 0);
    // keep_releases pruned it (here: by hand, on w1).
    std::fs::remove_dir_all(
        s.fleet
            .worker("w1")
            .path(&format!("jobs/api/releases/{base}")),
    )
    .expect("rm");
    let out = s.p.expect(&["release", "revert", "61"], 0);
    assert!(
        out.stdout.contains(&format!(
            "api@w1: release {base} was pruned; rebuilt from BASE_SHA"
        )),
        "{out:?}"
    );
    for w in &s.fleet.workers {
        assert_eq!(
            w.current("api").as_deref(),
            Some(base.as_str()),
            "{}",
            w.name
        );
        assert_eq!(w.read("jobs/api/current/app.conf"), "", "{}", w.name);
        assert!(w.path("jobs/api/current/Makefile").exists());
    }
    s.p.expect(&["drift"], 0);
}

/// Item 26: a backup id is data, never shell: one with shell syntax is
/// refused when a backup prints it and when a state file holds it.
#[test]
fn a_hostile_backup_id_never_reaches_a_shell() {
    let s = setup(1);
    let pwned = s._base.path().join("pwned");
    let hostile = format!("x;touch${{IFS}}{}", pwned.display());
    let makefile = crate::support::MAKEFILE.replace(
        "backup:\n",
        &format!("backup:\n\t@echo '{hostile}'; exit 0\nbackup-real:\n"),
    );
    // Release 70 ships the hostile backup target (its own backup ran the
    // old one); release 71's prepare runs it.
    s.merge("feat/70", &[("jobs/api/Makefile", &makefile)]);
    s.p.expect(&["release", "run", "70"], 0);
    s.merge("feat/71", &[("jobs/api/app.conf", "71\n")]);
    let out = s.p.expect(&["release", "run", "71"], 1);
    assert!(
        out.stdout.contains("printed no usable backup id"),
        "{out:?}"
    );
    assert!(!pwned.exists());

    // A state file edited to hold one: revert refuses it, runs nothing.
    let env = s.p.path().join(".cutover/releases/70.env");
    let text = std::fs::read_to_string(&env).expect("state file");
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("BACKUPS=") {
                format!("BACKUPS=\"api@w1={hostile}\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&env, text.join("\n")).expect("w");
    // A shared store holds the state file; the file is its copy.
    if let Some(pg) = &s.p.pg {
        pg.psql(
            "cutover",
            &format!(
                "UPDATE release_files SET content = $edited${}$edited$ WHERE ticket = '70' AND kind = 'env'",
                text.join("\n")
            ),
        )
        .expect("edit the store's state file");
    }
    let out = s.p.expect(&["release", "revert", "70", "--skip-git"], 1);
    assert!(out.stdout.contains("is not a valid id"), "{out:?}");
    assert!(!pwned.exists(), "the backup id ran as a command");
}

/// Review: a release that removed a job is reverted with the job running
/// again, on the data reconcile kept.
#[test]
fn revert_brings_back_a_job_the_release_removed() {
    let s = setup(2);
    for w in &s.fleet.workers {
        std::fs::write(w.path("jobs/other/shared/data.txt"), "kept\n").expect("w");
    }
    git(&s.dev, &["checkout", "-q", "-b", "feat/81"]);
    git(&s.dev, &["rm", "-q", "-r", "jobs/other"]);
    git(&s.dev, &["commit", "-q", "-m", "drop other"]);
    git(&s.dev, &["checkout", "-q", "main"]);
    git(
        &s.dev,
        &["merge", "-q", "--no-ff", "-m", "Merge feat/81", "feat/81"],
    );
    git(&s.dev, &["push", "-q", "origin", "main"]);
    s.p.expect(&["release", "run", "81"], 0);
    for w in &s.fleet.workers {
        assert!(w.current("other").is_none(), "{}", w.name);
    }
    let out = s.p.expect(&["release", "revert", "81"], 0);
    assert!(out.stdout.contains("release 81 reverted"), "{out:?}");
    for w in &s.fleet.workers {
        assert!(w.current("other").is_some(), "other is back on {}", w.name);
        assert_eq!(w.read("jobs/other/shared/data.txt"), "kept\n", "{}", w.name);
    }
}

/// Review: a revert whose push failed finishes once the push can be made:
/// the revert commit is not made twice.
#[test]
fn a_revert_whose_push_failed_finishes_on_the_next_try() {
    let s = setup(1);
    s.merge("feat/91", &[("jobs/web/page.html", "91\n")]);
    s.p.expect(&["release", "run", "91"], 0);
    let origin = git(s.p.path(), &["remote", "get-url", "origin"]);
    git(
        s.p.path(),
        &["remote", "set-url", "origin", "/nonexistent/origin.git"],
    );
    let out = s.p.expect(&["release", "revert", "91"], 1);
    assert!(out.stdout.contains("the push failed"), "{out:?}");
    git(s.p.path(), &["remote", "set-url", "origin", &origin]);
    let out = s.p.expect(&["release", "revert", "91"], 0);
    assert!(out.stdout.contains("release 91 reverted"), "{out:?}");
    let subjects = git(s.p.path(), &["log", "-3", "--format=%s"]);
    assert_eq!(subjects.matches("Revert").count(), 1, "{subjects}");
}

/// A merge that touches only files of no job is released with a warning
/// naming them; with `--strict` it is refused (exit 2) and the clone is
/// put back where it was, with no state file.
#[test]
fn unclassified_files_are_a_warning_and_with_strict_a_refusal() {
    let s = setup(1);
    let base = s.head();
    s.merge("feat/21", &[("src/x.c", "int main(void) { return 0; }\n")]);
    let out = s.p.expect(&["release", "run", "21", "--strict"], 2);
    assert!(
        out.stderr
            .contains("--strict: 1 changed file(s) belong to no job")
            && out.stderr.contains("src/x.c")
            && out.stderr.contains("the clone is back where it was"),
        "{out:?}"
    );
    assert_eq!(s.head(), base, "the pull was undone");
    assert_eq!(s.state_file("21"), "");
    let dry =
        s.p.expect(&["release", "run", "21", "--dry-run", "--strict"], 2);
    assert!(dry.stderr.contains("src/x.c"), "{dry:?}");

    let out = s.p.expect(&["release", "run", "21"], 0);
    assert!(
        out.stdout.contains(
            "prepare: warning: 1 changed file(s) belong to no job and roll nothing out: src/x.c"
        ),
        "{out:?}"
    );
    assert!(s.state_file("21").contains("SERVICES=\"\""));
}

/// A service in SERVICES whose deploy plans nothing (a template edit that
/// renders the same) fails migrate instead of passing silently.
#[test]
fn migrate_fails_when_a_service_plans_no_action() {
    let s = setup(1);
    s.merge("feat/24", &[("jobs/web/notes.txt.tpl", "hello\n")]);
    s.p.expect(&["release", "run", "24"], 0);
    s.merge(
        "feat/22",
        &[(
            "jobs/web/notes.txt.tpl",
            "{# a comment renders as nothing #}hello\n",
        )],
    );
    let out = s.p.expect(&["release", "run", "22"], 1);
    assert!(
        out.all()
            .contains("SERVICES names web, but the deploy planned no action for it"),
        "{out:?}"
    );
    assert!(s.state_file("22").contains("SERVICES=\"web\""));
}

/// Verify checks that every allocation of each service runs the job
/// version of MERGE_SHA: with migrate skipped, the old version is still
/// running, and verify exits 4 naming it.
#[test]
fn verify_refuses_allocations_not_running_the_version_of_merge_sha() {
    let s = setup(1);
    s.merge(
        "feat/23",
        &[(
            "jobs/web/job.toml",
            "version = \"2\"\nselectors = [\"web\"]\n",
        )],
    );
    let out = s.p.expect(&["release", "run", "23", "--skip-migrate"], 4);
    assert!(
        out.all()
            .contains("not running the version of MERGE_SHA: web@w1 runs 1, MERGE_SHA has 2"),
        "{out:?}"
    );
}

/// Playbooks match the failing step's whole output (stdout too, not only
/// the tail that the failure line shows), and its tail is kept with the
/// release, secrets redacted.
#[test]
fn playbooks_match_the_whole_output_of_the_failing_step() {
    let s = setup(1);
    s.p.expect(
        &[
            "kv",
            "put",
            "api",
            "db_password",
            "hunter2-secret",
            "--secret",
        ],
        0,
    );
    let script = "#!/bin/sh\necho 'connecting with hunter2-secret'\necho 'ERROR: duplicate key value violates unique constraint'\nfor i in $(seq 1 30); do echo \"rolled back row $i\"; done\necho 'giving up' >&2\nexit 4\n";
    let playbook = "- id: duplicate-key\n  symptom: the data migration hit a duplicate key\n  match: [\"duplicate key value\"]\n  phases: [ticket]\n  fix:\n    adhoc: |\n      dedupe, then cutover release run 31 --from=ticket\n";
    s.merge(
        "feat/31",
        &[
            ("jobs/api/app.conf", "api = 31\n"),
            ("releases/31-data.sh", script),
            ("recovery/playbooks/dup.yaml", playbook),
        ],
    );
    let out = s.p.expect(&["release", "run", "31"], 1);
    assert!(
        out.stdout.contains("recovery playbook duplicate-key"),
        "{out:?}"
    );
    let m = s.p.expect(&["playbook", "match", "31"], 0);
    assert!(m.stdout.contains("duplicate-key"), "{m:?}");
    let state = s.p.expect(&["release", "state", "31"], 0);
    assert!(
        state.stdout.contains("last failure, in phase ticket")
            && state.stdout.contains("| giving up")
            && state.stdout.contains("| rolled back row 30"),
        "{state:?}"
    );
    let all = format!("{}{}", state.stdout, m.stdout);
    assert!(!all.contains("hunter2-secret"), "{all}");
    let db = s.p.store_bytes();
    assert!(
        !String::from_utf8_lossy(&db).contains("hunter2-secret"),
        "the kept output is redacted"
    );
}

/// A lifecycle target that fails in migrate: its whole output (stdout
/// too, beyond the tail its message shows) is what playbooks match.
#[test]
fn playbooks_match_a_failed_targets_whole_output_in_migrate() {
    let s = setup(1);
    let makefile = format!(
        "{}\nrestart:\n\t@echo 'ERROR: port 8080 already in use'\n\t@for i in $$(seq 1 20); do echo \"retrying $$i\"; done\n\t@exit 1\n",
        crate::support::MAKEFILE.replace("restart:", "old-restart:")
    );
    let playbook = "- id: port-in-use\n  symptom: the service's port is taken\n  match: [\"^ERROR: port \\\\d+ already in use$\"]\n  phases: [migrate]\n  fix:\n    adhoc: |\n      free the port, then cutover release run 41 --from=migrate\n";
    s.merge(
        "feat/41",
        &[
            ("jobs/api/Makefile", makefile.as_str()),
            ("recovery/playbooks/port.yaml", playbook),
        ],
    );
    let out = s.p.expect(&["release", "run", "41"], 1);
    assert!(
        out.stdout.contains("release-run failed in phase migrate")
            && out.stdout.contains("recovery playbook port-in-use"),
        "{out:?}"
    );
    let m = s.p.expect(&["playbook", "match", "41"], 0);
    assert!(m.stdout.contains("port-in-use"), "{m:?}");
}

/// A release whose range holds a merge and then a commit made on main
/// itself is reverted whole: the merge with `-m 1`, the commit plainly,
/// in one revert commit; the tree is BASE's again.
#[test]
fn revert_of_a_range_with_a_merge_and_a_direct_commit() {
    let s = setup(1);
    let base = s.head();
    s.merge("feat/51", &[("jobs/api/app.conf", "api = 51\n")]);
    write_file(&s.dev, "jobs/web/notes.txt", "a direct commit on main\n");
    git(&s.dev, &["add", "-A"]);
    git(&s.dev, &["commit", "-q", "-m", "direct commit"]);
    git(&s.dev, &["push", "-q", "origin", "main"]);
    s.p.expect(&["release", "run", "51"], 0);
    let out = s.p.expect(&["release", "revert", "51"], 0);
    assert!(out.stdout.contains("reverted"), "{out:?}");
    let diff = git(s.p.path(), &["diff", "--stat", &base, "HEAD"]);
    assert_eq!(diff, "", "the tree is BASE's again");
    let remote = git(s.p.path(), &["rev-parse", "origin/main"]);
    assert_eq!(remote, s.head(), "the revert is pushed");
}
