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
    // w3's kept 1.0.0 release was edited there: it is not reused as is.
    let releases = c.fleet.worker("w3").path("jobs/api/releases");
    let kept = std::fs::read_dir(&releases)
        .expect("releases")
        .map(|e| e.expect("entry").path())
        .find(|d| {
            std::fs::read_to_string(d.join("build.txt")).ok().as_deref() == Some("build 1.0.0\n")
        })
        .expect("w3 kept 1.0.0");
    std::fs::write(kept.join("build.txt"), "edited on the worker\n").expect("edit");
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
    assert_eq!(
        c.fleet.worker("w3").read("jobs/api/current/build.txt"),
        "build 1.0.0\n"
    );
    for w in ["w1", "w2", "w3"] {
        assert_eq!(c.conf(w), format!("worker={w} version=1.0.0\n"));
        assert!(c
            .fleet
            .worker(w)
            .events("api")
            .iter()
            .any(|e| e.contains("1.1.0->1.0.0")));
        // The worker kept 1.0.0's release dir: the rollback made the new
        // one from it by hard links, transferring nothing (but where it
        // was edited).
        use std::os::unix::fs::MetadataExt;
        let built = c.fleet.worker(w).path("jobs/api/current/build.txt");
        assert_eq!(
            std::fs::read_to_string(&built).expect("build"),
            "build 1.0.0\n"
        );
        let links = std::fs::metadata(&built).expect("meta").nlink();
        if w == "w3" {
            assert_eq!(links, 1, "{w}: linked to the edited release");
        } else {
            assert!(links >= 2, "{w}: not linked");
        }
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
    let trees = p.path().join(".cutover/cache/trees/api");
    let cached = || -> Vec<String> {
        std::fs::read_dir(&trees)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        !cached().iter().any(|n| n.starts_with("1.0.0.")),
        "a refused artifact is not cached: {:?}",
        cached()
    );
    std::fs::write(&artifact, &bytes).expect("restore");

    // What is cached unpacked (0700) is read again by each deploy and
    // sealed under a key outside the cache: a changed tree, or one sealed
    // on another machine, is set aside and the artifact fetched again.
    p.expect(&["deploy", "--force"], 0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&trees)
        .expect("cache")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let tree = cached()
        .into_iter()
        .find(|n| n.starts_with("1.0.0.") && !n.ends_with(".seal"))
        .expect("1.0.0 cached");
    let shipped = || c.fleet.worker("w2").read("jobs/api/current/build.txt");
    std::fs::write(trees.join(&tree).join("build.txt"), "tampered\n").expect("tamper");
    let out = p.expect(&["deploy", "--force"], 0);
    assert!(
        out.stdout.contains("is not as it was unpacked here"),
        "{out:?}"
    );
    assert_eq!(shipped(), "build 1.0.0\n");
    std::fs::write(trees.join(&tree).join("build.txt"), "tampered\n").expect("tamper");
    std::fs::remove_file(p.path().join(".cutover/cache.key")).expect("key");
    let out = p.expect(&["deploy", "--force"], 0);
    assert!(
        out.stdout.contains("is not as it was unpacked here"),
        "{out:?}"
    );
    assert_eq!(shipped(), "build 1.0.0\n");
    assert_eq!(
        std::fs::read_to_string(trees.join(&tree).join("build.txt")).expect("healed"),
        "build 1.0.0\n"
    );

    // The cache is never read, written or pruned through a symlink.
    let elsewhere = tempfile::tempdir().expect("elsewhere");
    std::fs::create_dir(elsewhere.path().join("keep.me")).expect("dir");
    std::fs::remove_dir_all(&trees).expect("no cache");
    std::os::unix::fs::symlink(elsewhere.path(), &trees).expect("symlink");
    let out = p.expect(&["deploy", "--force"], 4);
    assert!(out.stderr.contains("is not a dir (a symlink?)"), "{out:?}");
    assert!(elsewhere.path().join("keep.me").is_dir());
    std::fs::remove_file(&trees).expect("unlink");
    p.expect(&["deploy", "--force"], 0);
    assert_eq!(shipped(), "build 1.0.0\n");
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

/// A local publisher with a key pair the project trusts (`trust_extra`
/// goes in [trust] too).
struct Keyed {
    _t: tempfile::TempDir,
    p: Project,
    store: std::path::PathBuf,
    keys: std::path::PathBuf,
    /// The private key's path.
    key: String,
}

fn keyed(trust_extra: &str) -> Keyed {
    let t = tempfile::tempdir().expect("tmp");
    let store = t.path().join("store");
    let keys = t.path().join("k");
    let trust = format!(
        "public_keys = [\"{}\"]\n{trust_extra}",
        keys.join("cutover-signing.pub").display()
    );
    let p = local_publisher(&store, &trust);
    p.expect(
        &["keys", "generate", "--out", keys.to_str().expect("utf8")],
        0,
    );
    let key = keys.join("cutover-signing.key").display().to_string();
    Keyed {
        _t: t,
        p,
        store,
        keys,
        key,
    }
}

/// A project on two local workers publishing `api` to a file store.
fn local_publisher(store: &std::path::Path, trust: &str) -> Project {
    let p = Project::new();
    p.write(
        "cutover.toml",
        &format!(
            "name = \"t\"\n[store]\nurl = \"file://{}\"\n[trust]\n{trust}",
            store.display()
        ),
    );
    p.write("workers.toml", TWO_LOCAL_WORKERS);
    p.job("api", "version = \"1.0.0\"\n");
    p
}

#[test]
fn insecure_dev_keys_sign_a_development_project_and_never_production() {
    let t = tempfile::tempdir().expect("tmp");
    let store = t.path().join("store");
    let p = local_publisher(&store, "");
    let dev = [("CUTOVER_ALLOW_INSECURE_DEV_KEYS", "1")];
    let out = p.cutover_env(&["publish", "api"], &dev);
    assert_eq!(out.code, 0, "{out:?}");
    let key = p.path().join(".cutover/dev-key/cutover-signing.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key)
            .expect("dev key")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let out = p.cutover_env(&["deploy"], &dev);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(p
        .path()
        .join("local-workers/a/jobs/api/current/Makefile")
        .is_file());

    // Without the variable the dev key is not trusted: refused, untouched.
    let out = p.expect(&["deploy", "--force"], 4);
    assert!(out.stderr.contains("trusted key"), "{out:?}");

    // Never in production, whatever else is set.
    let prod = [
        ("CUTOVER_ALLOW_INSECURE_DEV_KEYS", "1"),
        ("CUTOVER_ENV", "production"),
    ];
    let out = p.cutover_env(&["publish", "api"], &prod);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("CUTOVER_ALLOW_INSECURE_DEV_KEYS=1 is refused with CUTOVER_ENV=production"),
        "{out:?}"
    );
    let out = p.cutover_env(&["doctor"], &dev);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("✗ insecure dev keys not enabled"),
        "{out:?}"
    );
}

#[test]
fn a_signing_key_is_rotated_by_adding_resigning_and_retiring() {
    let t = tempfile::tempdir().expect("tmp");
    let store = t.path().join("store");
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let trust_a = format!(
        "public_keys = [\"{}\"]\n",
        a.join("cutover-signing.pub").display()
    );
    let p = local_publisher(&store, &trust_a);
    for dir in [&a, &b] {
        p.expect(
            &["keys", "generate", "--out", dir.to_str().expect("utf8")],
            0,
        );
    }
    let key = |d: &std::path::Path| d.join("cutover-signing.key").display().to_string();
    let id = |d: &std::path::Path| {
        let list = p.expect(&["--json", "keys", "list"], 0);
        let doc: serde_json::Value = serde_json::from_str(&list.stdout).expect("json");
        let public = std::fs::read_to_string(d.join("cutover-signing.pub")).expect("pub");
        let hex = public.lines().nth(1).expect("hex").to_string();
        doc["trust"]["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["public_key"] == hex.as_str())
            .map(|k| k["keyid"].as_str().expect("id").to_string())
    };
    p.expect(&["publish", "api", "--key", &key(&a)], 0);
    p.expect(&["deploy"], 0);

    // 1. Trust the new key beside the old one; 2. re-sign with both.
    let both = format!(
        "public_keys = [\"{}\", \"{}\"]\n",
        a.join("cutover-signing.pub").display(),
        b.join("cutover-signing.pub").display()
    );
    p.write(
        "cutover.toml",
        &format!(
            "name = \"t\"\n[store]\nurl = \"file://{}\"\n[trust]\n{both}",
            store.display()
        ),
    );
    let (ida, idb) = (id(&a).expect("a trusted"), id(&b).expect("b trusted"));
    p.expect(
        &[
            "channel",
            "resign",
            "api",
            "--key",
            &key(&a),
            "--key",
            &key(&b),
        ],
        0,
    );
    let list = p.expect(&["--json", "keys", "list"], 0);
    let doc: serde_json::Value = serde_json::from_str(&list.stdout).expect("json");
    let by: Vec<&str> = doc["indexes"][0]["signed_by"]
        .as_array()
        .expect("signed_by")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        by.contains(&ida.as_str()) && by.contains(&idb.as_str()),
        "{by:?}"
    );

    // 3. Retire the old key: trust only the new one, re-sign with it.
    let trust_b = format!(
        "public_keys = [\"{}\"]\n",
        b.join("cutover-signing.pub").display()
    );
    p.write(
        "cutover.toml",
        &format!(
            "name = \"t\"\n[store]\nurl = \"file://{}\"\n[trust]\n{trust_b}",
            store.display()
        ),
    );
    p.expect(&["channel", "resign", "api", "--key", &key(&b)], 0);
    let list = p.expect(&["keys", "list"], 0);
    assert!(
        list.stdout
            .contains(&format!("api: current index signed by {}", &idb[..16])),
        "{list:?}"
    );
    assert!(!list.stdout.contains(&ida[..16]), "{list:?}");
    // The retired key signs nothing any more; deploys verify with the new.
    let out = p.expect(&["channel", "resign", "api", "--key", &key(&a)], 2);
    assert!(out.stderr.contains("is not trusted"), "{out:?}");
    p.expect(&["deploy", "--force"], 0);
    let status = p.expect(&["--json", "channel", "status"], 0);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(doc["report"]["jobs"][0]["seq"], 3);
}

#[test]
fn an_index_near_expiry_is_warned_about_and_resign_renews_it() {
    let Keyed {
        _t,
        p,
        store,
        keys,
        key,
    } = keyed("index_lifetime = \"2h\"\n");
    p.expect(&["publish", "api", "--key", &key], 0);
    let out = p.expect(&["channel", "status"], 0);
    assert!(out.stdout.contains("warning: expires in 1h"), "{out:?}");
    let out = p.cutover(&["doctor"]);
    assert!(
        out.stdout
            .contains("! release index of api valid: expires in"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("fix: cutover channel resign api"),
        "{out:?}"
    );
    p.write(
        "cutover.toml",
        &format!(
            "name = \"t\"\n[store]\nurl = \"file://{}\"\n[trust]\npublic_keys = [\"{}\"]\n",
            store.display(),
            keys.join("cutover-signing.pub").display()
        ),
    );
    let out = p.expect(&["channel", "resign", "api", "--key", &key], 0);
    assert!(out.stdout.contains("index seq 2"), "{out:?}");
    let out = p.expect(&["channel", "status"], 0);
    assert!(!out.stdout.contains("warning"), "{out:?}");
    // A lifetime under an hour is refused at its line.
    p.write(
        "cutover.toml",
        "name = \"t\"\n[trust]\nindex_lifetime = \"5m\"\n",
    );
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr.contains("trust.index_lifetime is under an hour"),
        "{out:?}"
    );
}

#[test]
fn doctor_lists_what_production_lacks_and_passes_when_it_is_set_up() {
    let fleet = Fleet::start_at(1, 50);
    let (_base, origin, _dev) = git_origin();
    let p = deploy_clone(&origin);
    let keys = tempfile::tempdir().expect("keys");
    p.expect(
        &[
            "keys",
            "generate",
            "--out",
            keys.path().to_str().expect("utf8"),
        ],
        0,
    );
    p.write("cutover.toml", &fleet.project_toml());
    p.write("workers.toml", &fleet.workers_toml(&[]));
    let out = p.expect(&["doctor"], 1);
    for line in [
        "✗ CUTOVER_ENV=production",
        "✗ admin auth configured",
        "✗ trusted keys configured",
        "✓ check passes",
        "✓ state backend reachable",
        "✓ secrets readable by you",
        "✓ worker w1 reachable with sshd, rsync and make",
        "✗ git remote `origin` reachable",
    ] {
        assert!(out.stdout.contains(line), "{line}: {out:?}");
    }
    assert!(
        out.stdout.contains("fix: export CUTOVER_ENV=production"),
        "{out:?}"
    );

    // Set up: trusted keys, the origin has main, production, a token.
    std::fs::copy(
        keys.path().join("cutover-signing.pub"),
        p.path().join("release.pub"),
    )
    .expect("pub");
    p.write(
        "cutover.toml",
        &format!(
            "{}\n[trust]\npublic_keys = [\"release.pub\"]\n",
            fleet.project_toml()
        ),
    );
    commit_and_push(p.path(), "project");
    let token = p.path().join(".cutover/admin-token");
    std::fs::write(&token, "x".repeat(40)).expect("token");
    // doctor checks what serve would: a token file is the operator's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let env = [
        ("CUTOVER_ENV", "production"),
        ("CUTOVER_ADMIN_TOKEN_FILE", token.to_str().expect("utf8")),
    ];
    let out = p.cutover_env(&["--json", "doctor"], &env);
    assert_eq!(out.code, 0, "{out:?}");
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert!(doc["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|i| i["ok"] == true));

    // A broken workers.toml: check fails, the rest of the list still prints.
    p.write("workers.toml", "[[worker]]\nname = 5\n");
    let out = p.cutover_env(&["doctor"], &env);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("✗ check passes"), "{out:?}");
    assert!(out.stdout.contains("✓ CUTOVER_ENV=production"), "{out:?}");
}

#[test]
fn a_store_restored_from_a_backup_is_refused_until_resigned_on_purpose() {
    let Keyed {
        _t, p, store, key, ..
    } = keyed("");
    p.expect(&["publish", "api", "--key", &key], 0);
    let index = store.join("api/releases.json");
    let backup = std::fs::read(&index).expect("seq 1");
    p.job("api", "version = \"1.0.1\"\n");
    p.expect(&["publish", "api", "--key", &key], 0);
    p.expect(&["deploy"], 0);

    // The backup (seq 1) comes back: every command refuses it.
    std::fs::write(&index, &backup).expect("restore backup");
    for args in [
        &["deploy", "--force"][..],
        &["channel", "resign", "api", "--key", &key],
    ] {
        let out = p.expect(args, 4);
        assert!(
            out.stderr.contains("lower than 2 already seen"),
            "{args:?}: {out:?}"
        );
    }
    // On purpose: accepted, re-signed above what was seen, audited.
    let out = p.expect(
        &[
            "channel",
            "resign",
            "api",
            "--key",
            &key,
            "--allow-rollback",
        ],
        0,
    );
    assert!(out.stdout.contains("index seq 3"), "{out:?}");
    let audit = std::fs::read_to_string(p.path().join(".cutover/audit.log")).expect("audit");
    assert!(audit.contains("older than the highest seq seen"), "{audit}");
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("(2 restart)"), "{out:?}");
    let status = p.expect(&["--json", "channel", "status"], 0);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(doc["report"]["jobs"][0]["workers"][0]["runs"], "1.0.0");
}

#[test]
fn channel_updates_need_canary_workers_and_a_sound_artifact_first() {
    let Keyed {
        _t, p, store, key, ..
    } = keyed("");
    // api runs on the web workers; its canary selectors pick a db one.
    p.write(
        "workers.toml",
        "[[worker]]\nname = \"a\"\ntransport = \"local\"\nroot = \"local-workers/a\"\nlabels = [\"web\"]\n\n[[worker]]\nname = \"b\"\ntransport = \"local\"\nroot = \"local-workers/b\"\nlabels = [\"web\"]\n\n[[worker]]\nname = \"c\"\ntransport = \"local\"\nroot = \"local-workers/c\"\nlabels = [\"db\"]\n",
    );
    let canary =
        |sel: &str| format!("version = \"1.0.0\"\nselectors = [\"web\"]\n[canary]\n{sel}\n");
    p.job("api", &canary("count = 0"));
    let out = p.expect(&["check"], 2);
    assert!(out.stderr.contains("canary.count is 0"), "{out:?}");
    p.job("api", &canary("selectors = [\"db\"]"));
    p.expect(&["publish", "api", "--key", &key], 0);
    p.job(
        "api",
        &canary("selectors = [\"db\"]").replace("1.0.0", "1.1.0"),
    );
    p.expect(&["publish", "api", "--channel", "canary", "--key", &key], 0);
    let index = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(store.join("api/releases.json")).expect("index"))
            .expect("json")
    };
    let seq = index()["signed"]["seq"].clone();

    // No worker matches [canary] selectors: refused, nothing changed.
    for args in [
        &[
            "channel",
            "canary",
            "api",
            "--version",
            "1.1.0",
            "--key",
            &key,
        ][..],
        &[
            "channel",
            "promote",
            "api",
            "--version",
            "1.1.0",
            "--key",
            &key,
            "--force",
        ],
    ] {
        let out = p.expect(args, 2);
        assert!(
            out.stderr.contains("has no canary worker"),
            "{args:?}: {out:?}"
        );
    }
    assert_eq!(index()["signed"]["seq"], seq);

    // A rollback to a version whose artifact is gone from the store is
    // refused before the index points at it.
    p.job("api", &canary("count = 1").replace("1.0.0", "1.2.0"));
    p.expect(&["publish", "api", "--key", &key, "--force"], 0);
    p.expect(&["deploy"], 0);
    for entry in std::fs::read_dir(store.join("api"))
        .expect("store")
        .filter_map(Result::ok)
    {
        if entry.file_name().to_string_lossy().starts_with("1.0.0.") {
            std::fs::remove_file(entry.path()).expect("rm artifact");
        }
    }
    let _ = std::fs::remove_dir_all(p.path().join(".cutover/cache"));
    let out = p.expect(
        &[
            "channel",
            "rollback",
            "api",
            "--version",
            "1.0.0",
            "--key",
            &key,
        ],
        4,
    );
    assert!(out.stderr.contains("missing from the store"), "{out:?}");
    assert_eq!(index()["signed"]["channels"]["stable"], "1.2.0");
    p.expect(&["deploy"], 0);
}

/// kill -9 in the middle of a promotion's rollout (a worker's restart
/// holds at a gate): the index already says stable, the audit log says
/// so, and the next plain deploy finishes the rollout.
#[test]
fn a_promotion_killed_mid_rollout_is_finished_by_the_next_deploy() {
    let c = channels(70, "");
    let gates = tempfile::tempdir().expect("gates");
    let gated = MAKEFILE.replacen(
        "\nrestart:\n",
        &format!(
            "\nrestart:\n\t@if [ -e {g}/armed ]; then touch {g}/reached; while [ ! -e {g}/go ]; do sleep 0.05; done; fi\n",
            g = gates.path().display()
        ),
        1,
    );
    let p = &c.p;
    let job = |version: &str| {
        p.job(
            "api",
            &format!("version = \"{version}\"\nmax_concurrent_upgrades = 1\n[canary]\ncount = 1\nsoak = \"1s\"\n"),
        );
        p.write("jobs/api/Makefile", &gated);
        p.write("jobs/api/build.txt", &format!("build {version}\n"));
    };
    job("1.0.0");
    p.expect(&["publish", "api", "--key", &c.key], 0);
    p.expect(&["deploy"], 0);
    job("1.1.0");
    p.expect(
        &["publish", "api", "--channel", "canary", "--key", &c.key],
        0,
    );
    p.expect(
        &[
            "channel",
            "canary",
            "api",
            "--version",
            "1.1.0",
            "--key",
            &c.key,
        ],
        0,
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));

    std::fs::write(gates.path().join("armed"), "").expect("arm");
    let mut child = p.spawn(&[
        "channel",
        "promote",
        "api",
        "--version",
        "1.1.0",
        "--key",
        &c.key,
    ]);
    wait_for(&gates.path().join("reached"));
    child.kill().expect("kill -9");
    assert_eq!(finish(child).code, -1, "killed");
    let audit = std::fs::read_to_string(p.path().join(".cutover/audit.log")).expect("audit");
    assert!(audit.contains("outcome=index-updated"), "{audit}");
    std::fs::remove_file(gates.path().join("armed")).expect("disarm");
    std::fs::write(gates.path().join("go"), "").expect("go");

    p.expect(&["deploy"], 0);
    for w in ["w1", "w2", "w3"] {
        assert_eq!(c.conf(w), format!("worker={w} version=1.1.0\n"));
    }
    let status = p.expect(&["--json", "channel", "status", "api"], 0);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(doc["report"]["jobs"][0]["channels"]["stable"], "1.1.0");
    for w in doc["report"]["jobs"][0]["workers"]
        .as_array()
        .expect("workers")
    {
        assert_eq!(w["drift"], false, "{w}");
    }
    assert_eq!(p.expect(&["lock", "status"], 0).stdout.trim(), "unlocked");
}

/// What the hostile pass found: a build output outside the job dir (it
/// would publish .cutover/ and .git/), Ctrl-C during a publish, a public
/// key given as --key, a key generated into the project, and a canary
/// that could not be ended.
#[test]
fn publish_and_keys_refuse_what_would_leak_and_stop_on_a_signal() {
    let Keyed {
        _t: t,
        p,
        store,
        keys,
        key,
    } = keyed("");

    // A build output that leaves the job dir: refused at check and publish.
    p.job("api", "version = \"1.0.0\"\n[build]\noutput = \"../..\"\n");
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr.contains("build.output leaves the job dir"),
        "{out:?}"
    );
    assert!(!store.exists());

    // A key generated into the project is refused; nothing is written.
    let out = p.expect(&["keys", "generate", "--out", "keys"], 2);
    assert!(out.stderr.contains("is inside the project"), "{out:?}");
    assert!(!p.path().join("keys").exists());

    // The public key given as --key: said plainly.
    p.job("api", "version = \"1.0.0\"\n");
    let public = keys.join("cutover-signing.pub").display().to_string();
    let out = p.expect(&["publish", "api", "--key", &public], 2);
    assert!(
        out.stderr.contains("is a public key, not a signing key"),
        "{out:?}"
    );

    // SIGINT while the build runs: exit 130, nothing published, audited.
    let mark = t.path().join("building");
    p.job(
        "api",
        &format!(
            "version = \"1.0.0\"\n[build]\ncommand = \"touch {} && sleep 2\"\n",
            mark.display()
        ),
    );
    let child = p.spawn(&["publish", "api", "--key", &key]);
    wait_for(&mark);
    signal(&child, "INT");
    let out = finish(child);
    assert_eq!(out.code, 130, "{out:?}");
    assert!(!store.join("api/releases.json").exists());
    let audit = std::fs::read_to_string(p.path().join(".cutover/audit.log")).expect("audit");
    assert!(audit.contains("outcome=interrupted"), "{audit}");

    // A canary is ended by a rollback to the stable version.
    p.job("api", "version = \"1.0.0\"\n[canary]\ncount = 1\n");
    p.expect(&["publish", "api", "--key", &key], 0);
    p.expect(&["deploy"], 0);
    p.job("api", "version = \"1.1.0\"\n[canary]\ncount = 1\n");
    p.write("jobs/api/new.txt", "new\n");
    p.expect(&["publish", "api", "--channel", "canary", "--key", &key], 0);
    p.expect(
        &[
            "channel",
            "canary",
            "api",
            "--version",
            "1.1.0",
            "--key",
            &key,
        ],
        0,
    );
    assert!(p
        .path()
        .join("local-workers/a/jobs/api/current/new.txt")
        .exists());
    p.expect(
        &[
            "channel",
            "rollback",
            "api",
            "--version",
            "1.0.0",
            "--key",
            &key,
        ],
        0,
    );
    assert!(!p
        .path()
        .join("local-workers/a/jobs/api/current/new.txt")
        .exists());
    let out = p.expect(&["--json", "channel", "status", "api"], 0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert!(doc["report"]["jobs"][0]["channels"].get("canary").is_none());
    // Without a canary, the stable version is no rollback target.
    let out = p.expect(
        &[
            "channel",
            "rollback",
            "api",
            "--version",
            "1.0.0",
            "--key",
            &key,
        ],
        2,
    );
    assert!(out.stderr.contains("not earlier than stable"), "{out:?}");
}

#[test]
fn check_refuses_a_store_or_threshold_no_command_could_use() {
    let p = Project::new();
    p.write("workers.toml", "");
    for (toml, why) in [
        (
            "[store]\nurl = \"ftp://x/y\"\n",
            "is not a store this cutover can use",
        ),
        (
            "[store]\nurl = \"file://relative/store\"\n",
            "is not a store this cutover can use",
        ),
        (
            "[store]\nurl = \"s3://\"\n",
            "is not a store this cutover can use",
        ),
        ("[trust]\nthreshold = 0\n", "trust.threshold is 0"),
    ] {
        p.write("cutover.toml", &format!("name = \"t\"\n{toml}"));
        let out = p.expect(&["check"], 2);
        assert!(
            out.stderr.contains(why) && out.stderr.contains("cutover.toml:"),
            "{toml}: {out:?}"
        );
    }
}

#[test]
fn a_canary_on_every_worker_is_said() {
    let s = crate::serve::site(None);
    let p = &s.p;
    let job = |v: &str| format!("version = \"{v}\"\n[canary]\ncount = 5\nsoak = \"0s\"\n");
    p.job("api", &job("1.0.0"));
    p.expect(&["publish", "api"], 0);
    p.job("api", &job("1.1.0"));
    p.expect(&["publish", "api", "--channel", "canary"], 0);
    let out = p.expect(
        &[
            "channel",
            "canary",
            "api",
            "--version",
            "1.1.0",
            "--reason",
            "all in",
        ],
        0,
    );
    assert!(
        out.stdout.contains(
            "[channel] warning: every worker of api is a canary ([canary] count = 5 and the job runs on 2 workers)"
        ),
        "{out:?}"
    );
}
