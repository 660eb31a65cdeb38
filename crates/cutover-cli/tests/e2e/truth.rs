//! What cutover says equals what it does: every change that the
//! fingerprint covers rolls the job out, and a plan printed is the plan run.

use crate::support::*;

fn kinds(events: &[String]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| e.split_whitespace().next())
        .filter(|k| *k != "healthy")
        .collect()
}

/// A file matched by `watch` (outside the job dir, never shipped) and a
/// job.toml change other than `version` are part of the fingerprint: each
/// rolls the job out, by the restart policy in force.
#[test]
fn a_watched_file_or_a_manifest_change_rolls_the_job_out() {
    let (fleet, p) = web_fleet(1);
    let manifest = |policy: &str| {
        format!("version = \"1\"\nrestart_policy = \"{policy}\"\nwatch = [\"protos/**\"]\n")
    };
    p.job("api", &manifest("reload"));
    p.write("protos/api.proto", "message A {}\n");
    p.write("docs/notes.md", "not watched\n");
    p.expect(&["deploy"], 0);

    p.write("protos/api.proto", "message A { int32 x = 1; }\n");
    p.write("docs/notes.md", "still not watched\n");
    let plan = p.expect(&["deploy", "--dry-run"], 0);
    assert!(
        plan.stdout.contains("reload") && plan.stdout.contains("changed: protos/api.proto"),
        "{plan:?}"
    );
    p.expect(&["deploy"], 0);
    assert_eq!(
        kinds(&fleet.worker("w1").events("api")),
        ["start", "reload"]
    );
    assert!(
        !fleet.worker("w1").path("jobs/api/current/protos").exists(),
        "a watched file is fingerprinted, not shipped"
    );

    // job.toml: a new restart policy (same version) rolls out, and the new
    // policy decides how.
    p.job("api", &manifest("always"));
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("1 restart"), "{out:?}");
    assert_eq!(
        kinds(&fleet.worker("w1").events("api")),
        ["start", "reload", "restart"]
    );
    let plan = p.expect(&["deploy", "--dry-run"], 0);
    assert!(plan.stdout.contains("unchanged"), "{plan:?}");

    // An unwatched file outside the job changes nothing.
    p.write("docs/notes.md", "edited again\n");
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
}
