//! A KV secret reaches the worker's rendered file and nowhere else: not
//! `.cutover/` in plain text, not any output, not the audit log.

use crate::support::{on_postgres, Fleet, Project};

const POISON: &str = "p0is0n-s3cret-7f1c";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn grep_tree(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    crate::support::snapshot(dir)
        .into_iter()
        .filter(|(_, _, content)| content.windows(needle.len()).any(|w| w == needle))
        .map(|(p, _, _)| p)
        .collect()
}

#[test]
fn a_secret_is_rendered_on_the_worker_and_never_stored_or_printed_in_plain_text() {
    let fleet = Fleet::start(1);
    let p = Project::new();
    p.write("cutover.toml", &fleet.project_toml());
    p.write("workers.toml", &fleet.workers_toml(&[("w1", &["web"])]));
    p.job("api", "version = \"1\"\n");
    p.write(
        "jobs/api/db.conf.tpl",
        "password = {{ kv.db_password }}\nhost = {{ kv.db_host }}\n",
    );

    // Rendering without the key is an error that names the file.
    let out = p.expect(&["deploy", "--dry-run"], 2);
    assert!(out.stderr.contains("jobs/api/db.conf.tpl"), "{out:?}");

    let outputs = [
        p.expect(&["kv", "put", "api", "db_password", POISON, "--secret"], 0),
        p.expect(&["kv", "put", "api", "db_host", "db.internal"], 0),
        p.expect(&["deploy"], 0),
        p.expect(&["deploy", "--force", "--json"], 0),
        p.expect(&["kv", "list", "api"], 0),
        p.expect(&["kv", "get", "api", "db_password"], 0),
        p.expect(&["cat", "kv", "--json"], 0),
        p.expect(&["status", "--json"], 0),
        p.expect(&["cat", "deployments", "--json"], 0),
    ];

    let w = &fleet.workers[0];
    assert_eq!(
        w.read("jobs/api/current/db.conf"),
        format!("password = {POISON}\nhost = db.internal\n")
    );

    for o in &outputs {
        assert!(!o.all().contains(POISON), "secret printed:\n{o:?}");
    }
    let leaked = grep_tree(&p.path().join(".cutover"), POISON.as_bytes());
    assert!(
        leaked.is_empty(),
        "secret in plain text in .cutover: {leaked:?}"
    );
    // The store itself (a PostgreSQL database is not under .cutover).
    let store = p.store_bytes();
    assert!(
        !contains(&store, POISON.as_bytes()),
        "secret in plain text in the store"
    );
    let plain_host = grep_tree(&p.path().join(".cutover"), b"db.internal");
    assert!(
        !plain_host.is_empty() || contains(&store, b"db.internal"),
        "the check itself can find plain values in the store"
    );

    let revealed = p.expect(&["kv", "get", "api", "db_password", "--reveal"], 0);
    assert_eq!(revealed.stdout.trim(), POISON);
}

/// A failing post_deploy hook that prints a secret: its output is kept for
/// the retry, and shown by the next plan; neither holds the secret.
#[test]
fn a_failed_hooks_output_is_kept_and_shown_without_the_secret() {
    let p = Project::new();
    p.write("cutover.toml", "name = \"t\"\n");
    p.write(
        "workers.toml",
        "[[worker]]\nname = \"a\"\ntransport = \"local\"\nroot = \"local-workers/a\"\n",
    );
    p.job(
        "api",
        &format!(
            "version = \"1\"\n[hooks]\npost_deploy = \"cat {}/local-workers/a/jobs/api/current/db.conf; exit 1\"\n",
            p.path().display()
        ),
    );
    p.write("jobs/api/db.conf.tpl", "password = {{ kv.db_password }}\n");
    p.expect(&["kv", "put", "api", "db_password", POISON, "--secret"], 0);
    let outputs = [
        p.expect(&["deploy"], 1),
        p.expect(&["deploy", "--dry-run"], 0),
        p.expect(&["--json", "deploy", "--dry-run"], 0),
    ];
    assert!(
        outputs[1]
            .stdout
            .contains("retry: the last post_deploy failed"),
        "{:?}",
        outputs[1]
    );
    assert!(outputs[1].stdout.contains("<redacted>"), "{:?}", outputs[1]);
    for o in &outputs {
        assert!(!o.all().contains(POISON), "secret printed:\n{o:?}");
    }
    let leaked = grep_tree(&p.path().join(".cutover"), POISON.as_bytes());
    assert!(
        leaked.is_empty(),
        "secret in plain text in .cutover: {leaked:?}"
    );
}

#[test]
fn the_state_store_is_the_operators_alone() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    p.write("cutover.toml", "name = \"t\"\n");
    p.write(
        "workers.toml",
        "[[worker]]\nname = \"a\"\ntransport = \"local\"\nroot = \"local-workers/a\"\n",
    );
    p.job("api", "version = \"1\"\n");
    p.expect(&["deploy"], 0);
    // On PostgreSQL, the database's own access control applies.
    let files: &[&str] = if on_postgres() {
        &["events.jsonl"]
    } else {
        &["state.db", "events.jsonl"]
    };
    for f in files {
        let path = p.path().join(".cutover").join(f);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is mode {:o}", mode & 0o777);
    }
}
