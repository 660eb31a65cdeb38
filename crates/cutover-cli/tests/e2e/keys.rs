//! `cutover keys`: signing key pairs for release indexes, and the keys a
//! project trusts.

use std::os::unix::fs::PermissionsExt;

use crate::support::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
}

#[test]
fn keys_are_generated_private_never_overwritten_and_trusted_once() {
    let p = Project::new();
    p.write("cutover.toml", "name = \"t\"\n");
    p.write("workers.toml", "");
    let keys = tempfile::tempdir().expect("keys dir");
    let out_dir = keys.path().join("release");
    let out = p.expect(
        &[
            "--json",
            "keys",
            "generate",
            "--out",
            out_dir.to_str().expect("utf8"),
        ],
        0,
    );
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let keyid = doc["key"]["keyid"].as_str().expect("keyid").to_string();
    let private = out_dir.join("cutover-signing.key");
    let public = out_dir.join("cutover-signing.pub");
    assert_eq!((mode(&private), mode(&public)), (0o600, 0o644));

    // The key id is the hex SHA-256 of the 32-byte public key.
    let hex = std::fs::read_to_string(&public).expect("pub");
    let hex = hex.lines().nth(1).expect("key line");
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let raw = keys.path().join("raw");
    std::fs::write(&raw, &bytes).expect("raw");
    let digest = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .arg(&raw)
        .output()
        .expect("openssl");
    let digest = String::from_utf8_lossy(&digest.stdout);
    assert_eq!(digest.split_whitespace().next(), Some(keyid.as_str()));

    // Never overwritten.
    let before = std::fs::read(&private).expect("key");
    let again = p.expect(
        &["keys", "generate", "--out", out_dir.to_str().expect("utf8")],
        2,
    );
    assert!(
        again.stderr.contains("a key is never overwritten"),
        "{again:?}"
    );
    assert_eq!(std::fs::read(&private).expect("key"), before);

    // Trusted from cutover.toml and from the environment: one key, once.
    let list = p.expect(&["keys", "list"], 0);
    assert!(list.stdout.contains("no trusted keys"), "{list:?}");
    std::fs::copy(&public, p.path().join("release.pub")).expect("copy pub");
    p.write(
        "cutover.toml",
        "name = \"t\"\n[trust]\npublic_keys = [\"release.pub\"]\n",
    );
    let json = format!("[\"{hex}\"]");
    let list = p.cutover_env(
        &["keys", "list"],
        &[("CUTOVER_TRUST_PUBLIC_KEYS_JSON", &json)],
    );
    assert_eq!(list.code, 0, "{list:?}");
    assert_eq!(list.stdout.matches(&keyid).count(), 1, "{list:?}");
    assert!(list.stdout.contains("threshold: 1 of 1"), "{list:?}");

    // A threshold that one distinct key cannot meet is refused.
    p.write(
        "cutover.toml",
        "name = \"t\"\n[trust]\npublic_keys = [\"release.pub\"]\nthreshold = 2\n",
    );
    let out = p.cutover_env(
        &["keys", "list"],
        &[("CUTOVER_TRUST_PUBLIC_KEYS_JSON", &json)],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("threshold is 2, with 1 distinct trusted key"),
        "{out:?}"
    );
    p.write("release.pub", "not a key\n");
    let out = p.expect(&["keys", "list"], 2);
    assert!(
        out.stderr.contains("is not a cutover public key"),
        "{out:?}"
    );
}

/// A project that publishes to a file:// store, with a generated key.
fn publishing_project(store: &std::path::Path, keys: &std::path::Path, version: &str) -> Project {
    let p = Project::new();
    p.write(
        "cutover.toml",
        &format!(
            "name = \"t\"\n[store]\nurl = \"file://{}\"\n[trust]\npublic_keys = [\"{}\"]\n",
            store.display(),
            keys.join("cutover-signing.pub").display()
        ),
    );
    p.write("workers.toml", "");
    p.job("api", &format!("version = \"{version}\"\n"));
    p.write("jobs/api/app.conf", "port = 8080\n");
    p
}

#[test]
fn publish_signs_the_index_refuses_changed_versions_and_tampering() {
    let t = tempfile::tempdir().expect("tmp");
    let (store, keys) = (t.path().join("store"), t.path().join("keys"));
    let p = publishing_project(&store, &keys, "1.0.0");
    p.expect(
        &["keys", "generate", "--out", keys.to_str().expect("utf8")],
        0,
    );
    let key = keys.join("cutover-signing.key");
    let key = key.to_str().expect("utf8");

    p.expect(&["publish", "api"], 2); // no signing key
    let out = p.expect(&["publish", "api", "--key", key, "--reason", "first"], 0);
    assert!(
        out.stdout.contains("[publish] api 1.0.0: sha256"),
        "{out:?}"
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("api/releases.json")).expect("index"))
            .expect("json");
    assert_eq!(index["signed"]["seq"], 1);
    assert_eq!(index["signed"]["channels"]["stable"], "1.0.0");
    assert_eq!(index["signed"]["versions"][0]["reason"], "first");
    assert_eq!(index["signatures"].as_array().map(Vec::len), Some(1));
    assert_eq!(artifacts(&store, "api", "1.0.0").len(), 1);

    // The same content again: accepted as already published.
    let out = p.cutover_env(&["publish", "api"], &[("CUTOVER_SIGNING_KEY_FILE", key)]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("already published with this content"),
        "{out:?}"
    );

    // Other content under the same version: refused, nothing changes.
    p.write("jobs/api/app.conf", "port = 9090\n");
    let before = std::fs::read(store.join("api/releases.json")).expect("index");
    let out = p.expect(&["publish", "api", "--key", key], 2);
    assert!(
        out.stderr.contains("already published with other content"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read(store.join("api/releases.json")).expect("index"),
        before
    );

    // A tampered index is refused (exit 4) before anything is written.
    let tampered = String::from_utf8(before.clone())
        .expect("utf8")
        .replace("\"stable\": \"1.0.0\"", "\"stable\": \"6.6.6\"");
    std::fs::write(store.join("api/releases.json"), &tampered).expect("tamper");
    p.job("api", "version = \"1.0.1\"\n");
    let out = p.expect(&["publish", "api", "--key", key], 4);
    assert!(
        out.stderr.contains("verification refused") && out.stderr.contains("trusted key"),
        "{out:?}"
    );
    assert!(artifacts(&store, "api", "1.0.1").is_empty());
    std::fs::write(store.join("api/releases.json"), &before).expect("restore");

    // A key the project does not trust cannot sign.
    let other = t.path().join("other");
    p.expect(
        &["keys", "generate", "--out", other.to_str().expect("utf8")],
        0,
    );
    let other_key = other.join("cutover-signing.key");
    let out = p.expect(
        &["publish", "api", "--key", other_key.to_str().expect("utf8")],
        2,
    );
    assert!(
        out.stderr.contains("is not trusted by this project"),
        "{out:?}"
    );

    let out = p.expect(&["publish", "api", "--key", key], 0);
    assert!(
        out.stdout.contains("api 1.0.1") && out.stdout.contains("seq 3"),
        "{out:?}"
    );
}

/// Two publishes of one job at once, from two clones: neither version is
/// lost, and seq goes up one at a time.
#[test]
fn concurrent_publishes_lose_no_version() {
    let t = tempfile::tempdir().expect("tmp");
    let (store, keys) = (t.path().join("store"), t.path().join("keys"));
    let a = publishing_project(&store, &keys, "2.0.0");
    let b = publishing_project(&store, &keys, "2.1.0");
    a.expect(
        &["keys", "generate", "--out", keys.to_str().expect("utf8")],
        0,
    );
    let key = keys.join("cutover-signing.key");
    let key = key.to_str().expect("utf8");
    let ca = a.spawn(&["publish", "api", "--key", key]);
    let cb = b.spawn(&["publish", "api", "--key", key]);
    let (oa, ob) = (finish(ca), finish(cb));
    assert_eq!((oa.code, ob.code), (0, 0), "{oa:?}\n{ob:?}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("api/releases.json")).expect("index"))
            .expect("json");
    let mut versions: Vec<&str> = index["signed"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    versions.sort();
    assert_eq!(versions, ["2.0.0", "2.1.0"]);
    assert_eq!(index["signed"]["seq"], 2);
}

/// What the review of publish found: too few signers write nothing; a
/// deleted index is refused, not restarted;
/// a symlink in the store is refused (nothing written through it); a
/// signing key in the build output is never published; a job.toml without
/// a version is refused.
#[test]
fn publish_writes_nothing_readers_would_refuse() {
    let t = tempfile::tempdir().expect("tmp");
    let (store, keys) = (t.path().join("store"), t.path().join("keys"));
    let p = publishing_project(&store, &keys, "1.0.0");
    p.expect(
        &["keys", "generate", "--out", keys.to_str().expect("utf8")],
        0,
    );
    let key = keys.join("cutover-signing.key");
    let key = key.to_str().expect("utf8").to_string();
    let second = t.path().join("second");
    p.expect(
        &["keys", "generate", "--out", second.to_str().expect("utf8")],
        0,
    );
    let config = |threshold: u32| {
        format!(
            "name = \"t\"\n[store]\nurl = \"file://{}\"\n[trust]\npublic_keys = [\"{}\", \"{}\"]\nthreshold = {threshold}\n",
            store.display(),
            keys.join("cutover-signing.pub").display(),
            second.join("cutover-signing.pub").display()
        )
    };
    p.write("cutover.toml", &config(2));
    let out = p.expect(&["publish", "api", "--key", &key, "--key", &key], 2);
    assert!(
        out.stderr
            .contains("1 distinct signing key(s) given; the project's threshold is 2"),
        "{out:?}"
    );
    assert!(
        !store.join("api/releases.json").exists() && artifacts(&store, "api", "1.0.0").is_empty()
    );
    p.write("cutover.toml", &config(1));
    p.expect(&["publish", "api", "--key", &key], 0);

    // A deleted index is not started over.
    let index = store.join("api/releases.json");
    let saved = std::fs::read(&index).expect("index");
    std::fs::remove_file(&index).expect("rm");
    let out = p.expect(&["publish", "api", "--key", &key], 4);
    assert!(
        out.stderr
            .contains("is missing, but this project has seen seq 1"),
        "{out:?}"
    );
    assert!(!index.exists());
    std::fs::write(&index, &saved).expect("restore");

    // A symlink where the store writes: refused, the target untouched.
    let victim = t.path().join("victim");
    std::fs::write(&victim, "precious\n").expect("victim");
    p.job("api", "version = \"1.0.1\"\n");
    std::fs::rename(&index, t.path().join("saved-index")).expect("mv");
    std::os::unix::fs::symlink(&victim, &index).expect("symlink");
    let out = p.expect(&["publish", "api", "--key", &key], 4);
    assert!(out.stderr.contains("is a symlink"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n"
    );
    assert!(artifacts(&store, "api", "1.0.1").is_empty());
    std::fs::remove_file(&index).expect("rm link");
    std::fs::rename(t.path().join("saved-index"), &index).expect("mv back");

    // A signing key in the output is never published.
    std::fs::copy(
        keys.join("cutover-signing.key"),
        p.path().join("jobs/api/oops.key"),
    )
    .expect("cp");
    let out = p.expect(&["publish", "api", "--key", &key], 2);
    assert!(
        out.stderr
            .contains("is a private signing key: it is never published"),
        "{out:?}"
    );
    p.remove("jobs/api/oops.key");

    // No version in job.toml: refused.
    p.write("jobs/api/job.toml", "selectors = []\n");
    let out = p.expect(&["publish", "api", "--key", &key], 2);
    assert!(out.stderr.contains("declares no version"), "{out:?}");
}

/// The artifacts of one version in a file store (named by content).
fn artifacts(store: &std::path::Path, job: &str, version: &str) -> Vec<std::path::PathBuf> {
    let prefix = format!("{version}.");
    std::fs::read_dir(store.join(job))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.starts_with(&prefix)
                        && name.ends_with(".tar.zst")
                        && name.len() == prefix.len() + 64 + 8
                })
                .collect()
        })
        .unwrap_or_default()
}
