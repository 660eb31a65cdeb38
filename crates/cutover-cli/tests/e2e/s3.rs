//! The S3 store against a real S3 API (`moto_server` on a loopback port):
//! concurrent publishes lose no version (If-Match on the index's ETag), a
//! published job deploys from it, and a tampered index or artifact there
//! is refused before any worker is touched.

use crate::support::*;

fn s3_project(s3: &S3Server, keys: &std::path::Path, version: &str) -> Project {
    let p = Project::new();
    for (k, v) in s3.env() {
        p.env.borrow_mut().push((k, v));
    }
    p.write(
        "cutover.toml",
        &format!(
            "name = \"t\"\n[store]\nurl = \"s3://releases/cutover\"\n[trust]\npublic_keys = [\"{}\"]\n",
            keys.join("cutover-signing.pub").display()
        ),
    );
    p.write(
        "workers.toml",
        "[[worker]]\nname = \"a\"\ntransport = \"local\"\nroot = \"local-workers/a\"\n",
    );
    p.job("api", &format!("version = \"{version}\"\n"));
    p.write("jobs/api/app.conf.tpl", "version={{ job.version }}\n");
    p
}

#[test]
fn an_s3_store_publishes_concurrently_deploys_and_refuses_tampering() {
    let s3 = S3Server::start();
    s3.boto(&["create_bucket", "releases"], b"");
    let keys = tempfile::tempdir().expect("keys");
    let a = s3_project(&s3, keys.path(), "2.0.0");
    let b = s3_project(&s3, keys.path(), "2.1.0");
    a.expect(
        &[
            "keys",
            "generate",
            "--out",
            keys.path().to_str().expect("utf8"),
        ],
        0,
    );
    let key = keys.path().join("cutover-signing.key");
    let key = key.to_str().expect("utf8");

    // Two publishers at once, three rounds: every version survives, and
    // seq only grows.
    let mut expected = Vec::new();
    let mut old = Vec::new();
    for round in 0..3 {
        let (va, vb) = (format!("2.{round}.0"), format!("3.{round}.0"));
        a.job("api", &format!("version = \"{va}\"\n"));
        b.job("api", &format!("version = \"{vb}\"\n"));
        let ca = a.spawn(&["publish", "api", "--key", key]);
        let cb = b.spawn(&["publish", "api", "--key", key]);
        let (oa, ob) = (finish(ca), finish(cb));
        assert_eq!((oa.code, ob.code), (0, 0), "{oa:?}\n{ob:?}");
        expected.extend([va, vb]);
        if round == 0 {
            old = s3.boto(&["get", "releases", "cutover/api/releases.json"], b"");
        }
    }
    let body = s3.boto(&["get", "releases", "cutover/api/releases.json"], b"");
    let index: serde_json::Value = serde_json::from_slice(&body).expect("index json");
    let mut versions: Vec<String> = index["signed"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_str().map(str::to_string))
        .collect();
    versions.sort();
    expected.sort();
    assert_eq!(versions, expected);
    assert_eq!(index["signed"]["seq"], 6);

    // The stable version deploys from the store.
    let stable = index["signed"]["channels"]["stable"]
        .as_str()
        .expect("stable")
        .to_string();
    let out = a.expect(&["deploy"], 0);
    assert!(out.stdout.contains("1 start"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(a.path().join("local-workers/a/jobs/api/current/app.conf"))
            .expect("app.conf"),
        format!("version={stable}\n")
    );
    let out = a.expect(&["channel", "status"], 0);
    assert!(out.stdout.contains("api: seq 6"), "{out:?}");

    // A tampered index in the bucket is refused; the worker is untouched.
    let tampered = String::from_utf8(body.clone()).expect("utf8").replacen(
        &format!("\"stable\": \"{stable}\""),
        "\"stable\": \"2.0.0\"",
        1,
    );
    assert_ne!(tampered.as_bytes(), body.as_slice());
    s3.boto(
        &["put", "releases", "cutover/api/releases.json"],
        tampered.as_bytes(),
    );
    let current =
        std::fs::read_link(a.path().join("local-workers/a/jobs/api/current")).expect("current");
    let out = a.expect(&["deploy", "--force"], 4);
    assert!(out.stderr.contains("verification refused"), "{out:?}");
    assert_eq!(
        std::fs::read_link(a.path().join("local-workers/a/jobs/api/current")).expect("current"),
        current
    );

    // An older index, validly signed (a replay), is refused as a rollback.
    s3.boto(&["put", "releases", "cutover/api/releases.json"], &old);
    let out = a.expect(&["deploy", "--force"], 4);
    assert!(out.stderr.contains("lower than 6 already seen"), "{out:?}");
    s3.boto(&["put", "releases", "cutover/api/releases.json"], &body);
    a.expect(&["deploy", "--force"], 0);
}

/// `[store] worker_fetch`: each ssh worker downloads the artifact from the
/// bucket itself (a presigned URL), checks its sha256 and unpacks it; the
/// operator sends only what differs per allocation. A worker that cannot
/// reach the store fails with what happened, and nothing switches.
#[test]
fn workers_fetch_artifacts_from_the_store_themselves() {
    let s3 = S3Server::start();
    s3.boto(&["create_bucket", "releases"], b"");
    let fleet = Fleet::start_at(2, 60);
    let keys = tempfile::tempdir().expect("keys");
    let p = Project::new();
    for (k, v) in s3.env() {
        p.env.borrow_mut().push((k, v));
    }
    p.expect(
        &[
            "keys",
            "generate",
            "--out",
            keys.path().to_str().expect("utf8"),
        ],
        0,
    );
    let key = keys
        .path()
        .join("cutover-signing.key")
        .display()
        .to_string();
    p.write(
        "cutover.toml",
        &format!(
            "{}\n[store]\nurl = \"s3://releases/cutover\"\nworker_fetch = true\n[trust]\npublic_keys = [\"{}\"]\n",
            fleet.project_toml(),
            keys.path().join("cutover-signing.pub").display()
        ),
    );
    p.write("workers.toml", &fleet.workers_toml(&[]));
    p.job("api", "version = \"1.0.0\"\n");
    p.write(
        "jobs/api/app.conf.tpl",
        "worker={{ worker.name }} version={{ job.version }}\n",
    );
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir_all(p.path().join("jobs/api/bin")).expect("bin");
    std::fs::write(p.path().join("jobs/api/bin/blob"), &blob).expect("blob");
    p.expect(&["publish", "api", "--key", &key], 0);

    let out = p.expect(&["deploy", "--progress=always"], 0);
    assert!(
        out.stdout.contains("fetch api 1.0.0 from the store"),
        "{out:?}"
    );
    // app.conf rendered; app.conf.tpl and job.toml dropped.
    assert!(out.stdout.contains("upload 3 files of its own"), "{out:?}");
    for w in ["w1", "w2"] {
        let worker = fleet.worker(w);
        assert_eq!(
            worker.read("jobs/api/current/app.conf"),
            format!("worker={w} version=1.0.0\n")
        );
        assert_eq!(
            std::fs::read(worker.path("jobs/api/current/bin/blob")).expect("blob"),
            blob
        );
        assert!(!worker.path("jobs/api/current/app.conf.tpl").exists());
        // Nothing of the download is left behind.
        let left: Vec<_> = std::fs::read_dir(worker.path("jobs/api"))
            .expect("job dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".fetch."))
            .collect();
        assert!(left.is_empty(), "{w}: {left:?}");
    }
    // What was fetched is what a push writes: drift finds nothing.
    p.expect(&["drift"], 0);

    // A worker that cannot reach the store fails, naming what happened;
    // its running release stays.
    fleet.shim(
        "curl",
        "#!/bin/sh\necho 'curl: (7) Failed to connect to the store' >&2\nexit 7\n",
    );
    p.job("api", "version = \"1.0.1\"\n");
    p.expect(&["publish", "api", "--key", &key], 0);
    let before = fleet.worker("w1").current("api");
    let out = p.expect(&["deploy"], 1);
    assert!(
        out.all()
            .contains("cannot download the artifact from the store")
            && out.all().contains("Failed to connect"),
        "{out:?}"
    );
    assert_eq!(fleet.worker("w1").current("api"), before);
}
