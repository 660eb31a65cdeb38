//! Secrets a team shares without sharing a key: each operator's identity
//! unwraps the store's data key; a removed operator's key opens nothing
//! stored afterwards; bad input changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cutover_state::{Identity, SecretKey};

use crate::support::{local_project, Output, Project};

const POISON: &str = "p0is0n-env3lope-91d2";
const VALUE: &str = "SELECT value FROM kv WHERE job = 'api' AND key = 'db_password'";

fn project() -> Project {
    let p = local_project();
    p.job("api", "version = \"1\"\n");
    p.write("jobs/api/db.conf.tpl", "password = {{ kv.db_password }}\n");
    p.expect(&["kv", "put", "api", "db_password", POISON, "--secret"], 0);
    p
}

/// Runs cutover as the operator whose identity is `key`.
fn as_op(p: &Project, key: &Path, args: &[&str], code: i32) -> Output {
    let out = p.cutover_env(
        args,
        &[("CUTOVER_IDENTITY_FILE", key.to_str().expect("utf-8"))],
    );
    assert_eq!(out.code, code, "{args:?}: {out:?}");
    out
}

/// The caller's public key, their identity made if need be.
fn my_key(p: &Project) -> String {
    p.expect(&["secrets", "identity"], 0)
        .stdout
        .trim()
        .to_string()
}

fn operator_names(p: &Project) -> Vec<String> {
    let out = p.expect(&["secrets", "operators", "--json"], 0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    doc["operators"]
        .as_array()
        .expect("operators")
        .iter()
        .map(|o| o["name"].as_str().expect("name").to_string())
        .collect()
}

fn reveal(p: &Project) -> String {
    p.expect(&["kv", "get", "api", "db_password", "--reveal"], 0)
        .stdout
        .trim()
        .to_string()
}

#[test]
fn operators_share_the_secrets_and_a_removed_one_opens_nothing_stored_after() {
    let p = project();
    let elsewhere = tempfile::tempdir().expect("bo's machine");
    let bo_key = elsewhere.path().join("bo.key");
    let bo_pub = as_op(&p, &bo_key, &["secrets", "identity"], 0)
        .stdout
        .trim()
        .to_string();
    assert!(bo_pub.starts_with("age1"), "{bo_pub}");

    // The first operator is the caller: the secrets would otherwise move
    // to a key the caller cannot open.
    let refused = p.expect(&["secrets", "add-operator", "bo", &bo_pub], 2);
    assert!(
        refused.stderr.contains("the first operator must be you"),
        "{refused:?}"
    );
    assert!(operator_names(&p).is_empty());

    let ana_pub = my_key(&p);
    let mode = std::fs::metadata(p.path().join(".cutover/identity.key"))
        .expect("identity")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let added = p.expect(&["secrets", "add-operator", "ana", &ana_pub], 0);
    assert!(added.stdout.contains("1 re-encrypted"), "{added:?}");

    // The secrets no longer depend on the project key file.
    std::fs::rename(
        p.path().join(".cutover/secret.key"),
        elsewhere.path().join("secret.key"),
    )
    .expect("move the key file aside");
    p.expect(&["deploy"], 0);
    let rendered = p.path().join("local-workers/a/jobs/api/current/db.conf");
    assert_eq!(
        std::fs::read_to_string(&rendered).expect("rendered"),
        format!("password = {POISON}\n")
    );

    // Bo is not an operator yet: told who to ask, with his key.
    let out = as_op(
        &p,
        &bo_key,
        &["kv", "get", "api", "db_password", "--reveal"],
        2,
    );
    assert!(
        out.stderr.contains(&bo_pub) && out.stderr.contains("add-operator"),
        "{out:?}"
    );
    p.expect(&["secrets", "add-operator", "bo", &bo_pub], 0);
    let out = as_op(
        &p,
        &bo_key,
        &["kv", "get", "api", "db_password", "--reveal"],
        0,
    );
    assert_eq!(out.stdout.trim(), POISON);
    assert_eq!(operator_names(&p), ["ana", "bo"]);

    // What bo could take with him: his wrapped key and his identity.
    let wrapped = p.store_blob("SELECT wrapped FROM operators WHERE name = 'bo'");
    let bo_identity = Identity::load(&bo_key)
        .expect("load")
        .expect("bo's identity");
    let bos_key = SecretKey::unwrap(&bo_identity, &wrapped).expect("bo unwraps");
    let before = p.store_blob(VALUE);
    assert_eq!(bos_key.decrypt(&before).expect("opens").expose(), POISON);

    let removed = p.expect(&["secrets", "remove-operator", "bo"], 0);
    assert!(
        removed.stdout.contains("1 secrets re-encrypted"),
        "{removed:?}"
    );
    let after = p.store_blob(VALUE);
    assert!(
        bos_key.decrypt(&after).is_err(),
        "the removed operator's data key still opens the stored secret"
    );
    as_op(
        &p,
        &bo_key,
        &["kv", "get", "api", "db_password", "--reveal"],
        2,
    );
    assert_eq!(reveal(&p), POISON);

    // rotate-key: another new data key, same operators, same values.
    p.expect(&["secrets", "rotate-key"], 0);
    assert_ne!(p.store_blob(VALUE), after);
    assert_eq!(reveal(&p), POISON);
    assert_eq!(operator_names(&p), ["ana"]);
    p.expect(&["deploy", "--force"], 0);
    assert_eq!(
        std::fs::read_to_string(&rendered).expect("rendered"),
        format!("password = {POISON}\n")
    );

    let audit = std::fs::read_to_string(p.path().join(".cutover/audit.log")).expect("audit");
    for cmd in [
        "secrets add-operator bo",
        "secrets remove-operator bo",
        "secrets rotate-key",
    ] {
        assert!(audit.contains(cmd), "{cmd} not audited:\n{audit}");
    }
    let store = p.store_bytes();
    for plain in [POISON, "AGE-SECRET-KEY"] {
        assert!(
            !store.windows(plain.len()).any(|w| w == plain.as_bytes()),
            "{plain} in the store"
        );
    }
}

#[test]
fn bad_input_and_a_lost_identity_change_nothing() {
    let p = project();
    let ana_pub = my_key(&p);
    // Nothing to rotate before there are operators.
    p.expect(&["secrets", "rotate-key"], 2);
    p.expect(&["secrets", "add-operator", "ana", &ana_pub], 0);
    let stored = p.store_blob(VALUE);
    let other = tempfile::tempdir().expect("other");
    let bo_key = other.path().join("bo.key");
    let bo_pub = as_op(&p, &bo_key, &["secrets", "identity"], 0)
        .stdout
        .trim()
        .to_string();

    for (args, says) in [
        (
            vec!["secrets", "add-operator", "bo", "age1nope"],
            "not an age public key",
        ),
        (
            vec!["secrets", "add-operator", "b o", &bo_pub],
            "not a valid operator name",
        ),
        (
            vec!["secrets", "add-operator", "ana", &bo_pub],
            "already an operator named `ana`",
        ),
        (
            vec!["secrets", "add-operator", "ana2", &ana_pub],
            "is already operator `ana`",
        ),
        (
            vec!["secrets", "remove-operator", "nobody"],
            "no operator named `nobody`",
        ),
        (vec!["secrets", "remove-operator", "ana"], "`ana` is you"),
        (
            vec![
                "secrets",
                "add-operator",
                "low",
                "age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq5cu47z",
            ],
            "low order",
        ),
    ] {
        let out = p.expect(&args, 2);
        assert!(out.stderr.contains(says), "{args:?}: {out:?}");
    }
    // A private key given for a public one is refused, and not echoed.
    let private = std::fs::read_to_string(&bo_key).expect("bo's key");
    let private = private.lines().last().expect("key line");
    let out = p.expect(&["--json", "secrets", "add-operator", "bo", private], 2);
    assert!(
        !out.all().contains(private) && out.stdout.contains("private key"),
        "{out:?}"
    );
    assert_eq!(operator_names(&p), ["ana"]);
    assert_eq!(p.store_blob(VALUE), stored);
    // Ana cannot remove herself; bo, removed, cannot remove her either.
    p.expect(&["secrets", "add-operator", "bo", &bo_pub], 0);
    let out = p.expect(&["secrets", "remove-operator", "ana"], 2);
    assert!(out.stderr.contains("ask one of bo"), "{out:?}");
    p.expect(&["secrets", "remove-operator", "bo"], 0);
    let out = as_op(&p, &bo_key, &["secrets", "remove-operator", "ana"], 2);
    assert!(
        out.stderr
            .contains("is not one of this project's operators (ana)"),
        "{out:?}"
    );
    assert_eq!(operator_names(&p), ["ana"]);
    assert_eq!(reveal(&p), POISON);
    let stored = p.store_blob(VALUE);

    // An identity other users can read is refused, not used.
    let id = p.path().join(".cutover/identity.key");
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = p.expect(&["kv", "get", "api", "db_password", "--reveal"], 2);
    assert!(out.stderr.contains("chmod 600"), "{out:?}");
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // A lost identity: nothing is read, nothing is written, no key is
    // made over the stored secrets; the restored file reads them all.
    std::fs::rename(&id, other.path().join("ana.key")).expect("lose it");
    let out = p.expect(&["kv", "put", "api", "db_password", "new", "--secret"], 2);
    assert!(out.stderr.contains("you have no identity"), "{out:?}");
    let out = p.expect(&["deploy"], 2);
    assert!(out.stderr.contains("you have no identity"), "{out:?}");
    let out = p.expect(&["doctor"], 1);
    assert!(out.stdout.contains("✗ secrets readable by you"), "{out:?}");
    assert_eq!(p.store_blob(VALUE), stored);
    // A new identity is not an operator: still nothing is read.
    p.expect(&["secrets", "identity"], 0);
    let out = p.expect(&["kv", "get", "api", "db_password", "--reveal"], 2);
    assert!(
        out.stderr
            .contains("not one of this project's operators (ana)"),
        "{out:?}"
    );
    std::fs::rename(other.path().join("ana.key"), &id).expect("restore it");
    assert_eq!(reveal(&p), POISON);
    let out = p.expect(&["doctor"], 1);
    assert!(
        out.stdout.contains("✓ secrets readable by you") && out.stdout.contains("operator `ana`"),
        "{out:?}"
    );
}

/// Every operator lost their identity: the secrets are gone with it (as
/// with a lost key file), and once they are deleted the project starts
/// over, rather than never storing a secret again.
#[test]
fn a_team_that_lost_every_identity_starts_over_once_the_secrets_are_deleted() {
    let p = project();
    let ana_pub = my_key(&p);
    p.expect(&["secrets", "add-operator", "ana", &ana_pub], 0);
    std::fs::remove_file(p.path().join(".cutover/identity.key")).expect("lose it");
    let new_pub = my_key(&p);
    // While a secret is stored, only an operator's key opens the door.
    let out = p.expect(&["secrets", "add-operator", "ana2", &new_pub], 2);
    assert!(
        out.stderr
            .contains("not one of this project's operators (ana)"),
        "{out:?}"
    );
    p.expect(&["kv", "delete", "api", "db_password"], 0);
    // None stored: the caller starts over as the only operator (no one
    // joins unnoticed to read what is stored next).
    let other = tempfile::tempdir().expect("other");
    let stranger = other.path().join("x.key");
    let x_pub = as_op(&p, &stranger, &["secrets", "identity"], 0).stdout;
    let out = p.expect(&["secrets", "add-operator", "x", x_pub.trim()], 2);
    assert!(out.stderr.contains("you can only add yourself"), "{out:?}");
    let out = p.expect(&["secrets", "add-operator", "ana2", &new_pub], 0);
    assert!(
        out.stdout.contains("only operator") && out.stdout.contains("(ana)"),
        "{out:?}"
    );
    assert_eq!(operator_names(&p), ["ana2"]);
    p.expect(&["kv", "put", "api", "db_password", POISON, "--secret"], 0);
    assert_eq!(reveal(&p), POISON);
    // The stranger, still no operator, can neither rotate nor join now.
    as_op(&p, &stranger, &["secrets", "rotate-key"], 2);
    as_op(
        &p,
        &stranger,
        &["secrets", "add-operator", "x", x_pub.trim()],
        2,
    );
    // Arguments swapped: the private key given as the name is not echoed.
    let private = std::fs::read_to_string(&stranger).expect("x's key");
    let out = as_op(
        &p,
        &stranger,
        &["secrets", "add-operator", &private, x_pub.trim()],
        2,
    );
    assert!(
        !out.all().contains(private.lines().last().expect("line")),
        "{out:?}"
    );
}
