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
