//! Release channels over real sshd workers: a published job deploys from
//! its verified artifact; canary, promote and rollback update the signed
//! index and roll the version out; tampering stops everything first.

use crate::support::*;

struct Channels {
    fleet: Fleet,
    p: Project,
    store: std::path::PathBuf,
    key: String,
    _keys: tempfile::TempDir,
}

/// Three ssh workers; job `api` with `[canary] count = 1` and a template
/// that says which worker and version it was rendered for.
fn channels(first_ip: usize, canary: &str) -> Channels {
    let fleet = Fleet::start_at(3, first_ip);
    let p = Project::new();
    let keys = tempfile::tempdir().expect("keys");
    let store = keys.path().join("store");
    p.expect(
        &[
            "keys",
            "generate",
            "--out",
            keys.path().join("k").to_str().expect("utf8"),
        ],
        0,
    );
    p.write(
        "cutover.toml",
        &format!(
            "{}\n[store]\nurl = \"file://{}\"\n[trust]\npublic_keys = [\"{}\"]\n",
            fleet.project_toml(),
            store.display(),
            keys.path().join("k/cutover-signing.pub").display()
        ),
    );
    p.write("workers.toml", &fleet.workers_toml(&[]));
    p.job("api", &format!("version = \"1.0.0\"\n{canary}"));
    p.write(
        "jobs/api/app.conf.tpl",
        "worker={{ worker.name }} version={{ job.version }}\n",
    );
    p.write("jobs/api/build.txt", "build 1.0.0\n");
    let key = keys.path().join("k/cutover-signing.key");
    Channels {
        fleet,
        p,
        store,
        key: key.to_str().expect("utf8").to_string(),
        _keys: keys,
    }
}

impl Channels {
    fn conf(&self, worker: &str) -> String {
        self.fleet.worker(worker).read("jobs/api/current/app.conf")
    }

    fn publish(&self, version: &str, channel: &str, code: i32) -> Output {
        self.p.job(
            "api",
            &format!("version = \"{version}\"\n[canary]\ncount = 1\nsoak = \"1h\"\n"),
        );
        self.p
            .write("jobs/api/build.txt", &format!("build {version}\n"));
        self.p.expect(
            &["publish", "api", "--channel", channel, "--key", &self.key],
            code,
        )
    }
}

#[test]
fn canary_promote_and_rollback_roll_published_versions_out() {
    let c = channels(30, "[canary]\ncount = 1\nsoak = \"1h\"\n");
    let p = &c.p;
    c.publish("1.0.0", "stable", 0);

    // A published job deploys from its artifact, every template rendered
    // per worker, and the plan says so.
    let plan = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        plan.stdout
            .contains("source: api: published: stable 1.0.0 (index seq 1)"),
        "{plan:?}"
    );
    p.expect(&["deploy"], 0);
    for w in ["w1", "w2", "w3"] {
        assert_eq!(c.conf(w), format!("worker={w} version=1.0.0\n"));
        assert!(!c
            .fleet
            .worker(w)
            .path("jobs/api/current/app.conf.tpl")
            .exists());
    }

    // A change to the working tree alone never reaches a published job's
    // workers.
    p.write("jobs/api/build.txt", "edited but not published\n");
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
    assert_eq!(
        c.fleet.worker("w2").read("jobs/api/current/build.txt"),
        "build 1.0.0\n"
    );

    // A new version of a job with [canary] goes to the canary channel.
    let out = c.publish("1.1.0", "stable", 2);
    assert!(out.stderr.contains("has [canary]"), "{out:?}");
    c.publish("1.1.0", "canary", 0);
    let out = p.expect(
        &[
            "channel",
            "canary",
            "api",
            "--version",
            "1.1.0",
            "--key",
            &c.key,
            "--reason",
            "try it",
            "--ticket",
            "T-1",
        ],
        0,
    );
    assert!(out.stdout.contains("soak of 1.1.0 started"), "{out:?}");
    assert_eq!(c.conf("w1"), "worker=w1 version=1.1.0\n");
    assert_eq!(c.conf("w2"), "worker=w2 version=1.0.0\n");
    assert_eq!(c.conf("w3"), "worker=w3 version=1.0.0\n");
    let status = p.expect(&["--json", "channel", "status", "api"], 0);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    let job = &doc["report"]["jobs"][0];
    assert_eq!(job["channels"]["canary"], "1.1.0");
    assert_eq!(job["channels"]["stable"], "1.0.0");
    assert_eq!(job["valid"], true);
    assert_eq!(job["workers"][0]["runs"], "1.1.0");
    assert_eq!(job["workers"][0]["drift"], false);

    // Promote waits for the soak; --force overrides it, audited.
    let out = p.expect(
        &[
            "channel",
            "promote",
            "api",
            "--version",
            "1.1.0",
            "--key",
            &c.key,
        ],
        2,
    );
    assert!(
        out.stderr.contains("the soak of api 1.1.0 ends at"),
        "{out:?}"
    );
    assert_eq!(c.conf("w2"), "worker=w2 version=1.0.0\n");
    let out = p.expect(
        &[
            "channel",
            "promote",
            "api",
            "--version",
            "1.1.0",
            "--key",
            &c.key,
            "--force",
        ],
        0,
    );
    assert!(out.stdout.contains("forced: soak skipped"), "{out:?}");
    for w in ["w1", "w2", "w3"] {
        assert_eq!(c.conf(w), format!("worker={w} version=1.1.0\n"));
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.store.join("api/releases.json")).expect("index"))
            .expect("json");
    assert_eq!(index["signed"]["channels"]["stable"], "1.1.0");
    assert!(index["signed"]["channels"].get("canary").is_none());
    let audit = std::fs::read_to_string(p.path().join(".cutover/audit.log")).expect("audit");
    assert!(audit.contains("soak skipped"), "{audit}");
    assert!(audit.contains("ticket T-1"), "{audit}");

    // Rollback: stable back to 1.0.0 everywhere; a later version cannot be
    // "rolled back" to.
    let out = p.expect(
        &[
            "channel",
            "rollback",
            "api",
            "--version",
            "1.1.0",
            "--key",
            &c.key,
        ],
        2,
    );
    assert!(out.stderr.contains("not earlier than stable"), "{out:?}");
    p.expect(
        &[
            "channel",
            "rollback",
            "api",
            "--version",
            "1.0.0",
            "--key",
            &c.key,
        ],
        0,
    );
    for w in ["w1", "w2", "w3"] {
        assert_eq!(c.conf(w), format!("worker={w} version=1.0.0\n"));
        assert!(c
            .fleet
            .worker(w)
            .events("api")
            .iter()
            .any(|e| e.contains("1.1.0->1.0.0")));
    }

    // Tampering with the index stops a deploy before any worker is touched.
    let path = c.store.join("api/releases.json");
    let good = std::fs::read_to_string(&path).expect("index");
    std::fs::write(
        &path,
        good.replace("\"stable\": \"1.0.0\"", "\"stable\": \"1.1.0\""),
    )
    .expect("tamper");
    let before = c.fleet.worker("w2").current("api");
    let out = p.expect(&["deploy"], 4);
    assert!(out.stderr.contains("verification refused"), "{out:?}");
    let out = p.expect(&["channel", "status"], 4);
    assert!(out.stdout.contains("INVALID"), "{out:?}");
    assert_eq!(c.fleet.worker("w2").current("api"), before);
    std::fs::write(&path, &good).expect("restore");

    // A changed artifact is refused by its checksum, before any worker.
    let artifact = std::fs::read_dir(c.store.join("api"))
        .expect("store")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("1.0.0."))
        })
        .expect("artifact");
    let bytes = std::fs::read(&artifact).expect("artifact");
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&artifact, &bad).expect("corrupt");
    std::fs::remove_dir_all(p.path().join(".cutover/cache")).expect("no cache");
    let out = p.expect(&["deploy", "--force"], 4);
    assert!(out.stderr.contains("has sha256"), "{out:?}");
    assert_eq!(c.fleet.worker("w2").current("api"), before);
    std::fs::write(&artifact, &bytes).expect("restore");
}

#[test]
fn channel_commands_are_refused_while_the_lock_is_held() {
    let c = channels(40, "");
    let p = &c.p;
    c.publish("1.0.0", "stable", 0);
    c.publish("1.1.0", "canary", 0);
    let gates = tempfile::tempdir().expect("gates");
    let held = MAKEFILE.replacen(
        "start:\n",
        &format!("start:\n{}", gate_line(gates.path())),
        1,
    );
    p.job("gate", "version = \"1\"\n");
    p.write("jobs/gate/Makefile", &held);
    let first = p.spawn(&["deploy", "--jobs", "gate"]);
    wait_for(&gates.path().join("reached"));
    for args in [
        &[
            "channel",
            "canary",
            "api",
            "--version",
            "1.1.0",
            "--key",
            &c.key,
        ][..],
        &[
            "channel",
            "rollback",
            "api",
            "--version",
            "1.0.0",
            "--key",
            &c.key,
        ],
    ] {
        let out = p.expect(args, 3);
        assert!(
            out.stderr.contains("the project lock is held by"),
            "{out:?}"
        );
    }
    std::fs::write(gates.path().join("go"), "").expect("go");
    assert_eq!(finish(first).code, 0);
    // Nothing changed while it was refused.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.store.join("api/releases.json")).expect("index"))
            .expect("json");
    assert_eq!(index["signed"]["seq"], 2);
}
