//! Snapshot tests of what an operator reads: `check`, a dry run's plan,
//! `status` and `--json`. Release ids, hashes, times, ports and temporary
//! paths are filtered, so a snapshot changes only when the output does.

use crate::support::{Fleet, Project};

fn settings(fleet: &Fleet, p: &Project) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("snapshots");
    s.set_prepend_module_to_snapshot(false);
    s.add_filter(&regex_escape(&p.path().display().to_string()), "[PROJECT]");
    s.add_filter(
        &regex_escape(&fleet.dir.path().display().to_string()),
        "[FLEET]",
    );
    s.add_filter(r"r\d{6}-\d{8}T\d{9}-[0-9a-f]{12}", "[RELEASE]");
    s.add_filter(r"\b[0-9a-f]{64}\b", "[HASH]");
    s.add_filter(r"\b[0-9a-f]{12}\b", "[HASH12]");
    s.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", "[TIME]");
    s.add_filter(r"port = \d+", "port = [PORT]");
    s
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

/// Two columns of a table may shift with the width of a filtered value:
/// snapshots compare lines with runs of spaces collapsed.
fn squeeze(text: &str) -> String {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn check_plan_status_and_json_read_as_they_should() {
    let (fleet, p) = crate::support::web_fleet(2);
    p.job("api", "version = \"1\"\nmax_concurrent_upgrades = 1\nrestart_policy = \"reload\"\nrestart_globs = [\"bin/**\"]\n");
    p.job("web", "version = \"1\"\ndepends_on = [\"api\"]\n");
    p.write("jobs/api/app.conf", "a = 1\n");
    let settings = settings(&fleet, &p);
    let _guard = settings.bind_to_scope();

    insta::assert_snapshot!(
        "plan-first",
        squeeze(&p.expect(&["deploy", "--dry-run"], 0).stdout)
    );
    p.expect(&["deploy"], 0);
    p.write("jobs/api/app.conf", "a = 2\n");
    insta::assert_snapshot!(
        "plan-change",
        squeeze(&p.expect(&["deploy", "--dry-run"], 0).stdout)
    );
    insta::assert_snapshot!("status", squeeze(&p.expect(&["status"], 0).stdout));
    let json: serde_json::Value =
        serde_json::from_str(&p.expect(&["status", "--json"], 0).stdout).expect("json");
    insta::assert_snapshot!(
        "status-json",
        serde_json::to_string_pretty(&json).expect("json")
    );

    p.write("jobs/web/job.toml", "version = \"1\"\ndepends_on = [\"apii\"]\nselectors = [\"wbe\"]\nkeep_releases = \"five\"\n");
    p.write("jobs/old/job.tml", "version = \"1\"\n");
    let out = p.expect(&["check"], 2);
    insta::assert_snapshot!("check-errors", out.stderr);
    let json: serde_json::Value =
        serde_json::from_str(&p.expect(&["check", "--json"], 2).stdout).expect("json");
    insta::assert_snapshot!(
        "check-json",
        serde_json::to_string_pretty(&json).expect("json")
    );
}
