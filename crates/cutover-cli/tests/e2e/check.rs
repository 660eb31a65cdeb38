//! `cutover check`: every class of configuration error, with its location.

use crate::support::Project;

fn project() -> Project {
    let p = Project::new();
    p.write("cutover.toml", "name = \"t\"\n");
    p.write(
        "workers.toml",
        "[[worker]]\nname = \"a\"\ntransport = \"local\"\nroot = \"wa\"\nlabels = [\"web\"]\n",
    );
    p
}

#[track_caller]
fn assert_error(p: &Project, needle: &str) {
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr.contains(needle),
        "expected `{needle}` in:\n{out:?}"
    );
}

#[test]
fn a_valid_project_passes() {
    let p = project();
    p.job("api", "version = \"1\"\nselectors = [\"web\"]\n");
    let out = p.expect(&["check"], 0);
    assert!(
        out.stdout
            .contains("ok: 1 job(s), 1 worker(s), 1 allocation(s)"),
        "{out:?}"
    );
}

#[test]
fn unknown_keys_are_located_with_a_suggestion() {
    let p = project();
    p.write(
        "jobs/api/job.toml",
        "version = \"1\"\nverison = \"2\"\n\n[health]\ncomand = \"x\"\n",
    );
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr
            .contains("jobs/api/job.toml:2:1: error: unknown key `verison` at the top level"),
        "{out:?}"
    );
    assert!(out.stderr.contains("did you mean `version`?"), "{out:?}");
    assert!(
        out.stderr
            .contains("jobs/api/job.toml:5:1: error: unknown key `comand` in [health]"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("2 problem(s) found"),
        "every problem is reported: {out:?}"
    );
}

#[test]
fn bad_durations() {
    let p = project();
    p.write(
        "jobs/api/job.toml",
        "[health]\ncommand = \"true\"\ninterval = \"5\"\ntimeout = \"3 days\"\n",
    );
    assert_error(
        &p,
        "jobs/api/job.toml:3:12: error: health.interval: `5` has a number without a unit",
    );
    assert_error(&p, "jobs/api/job.toml:4:11: error: health.timeout");
}

#[test]
fn unknown_selector_labels() {
    let p = project();
    p.write("jobs/api/job.toml", "selectors = [\"wbe\"]\n");
    assert_error(
        &p,
        "jobs/api/job.toml:1:14: error: selector `wbe` matches no worker label",
    );
    assert_error(&p, "did you mean `web`?");
}

#[test]
fn missing_and_cyclic_dependencies() {
    let p = project();
    p.write("jobs/a/job.toml", "depends_on = [\"b\"]\n");
    p.write("jobs/b/job.toml", "depends_on = [\"c\"]\n");
    p.write("jobs/c/job.toml", "depends_on = [\"a\", \"nope\"]\n");
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr
            .contains("jobs/c/job.toml:1:20: error: `depends_on` names `nope`, which is not a job"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("error: dependency cycle: a -> b -> c -> a"),
        "{out:?}"
    );
}

#[test]
fn restart_globs_without_reload() {
    let p = project();
    p.write(
        "jobs/api/job.toml",
        "restart_policy = \"always\"\nrestart_globs = [\"*.conf\"]\n",
    );
    assert_error(&p, "jobs/api/job.toml:2:17: error: `restart_globs` is set but `restart_policy` is not \"reload\"");
}

#[test]
fn duplicate_worker_names() {
    let p = project();
    p.write(
        "workers.toml",
        "[[worker]]\nname = \"a\"\ntransport = \"local\"\n\n[[worker]]\nname = \"a\"\ntransport = \"local\"\n",
    );
    assert_error(&p, "workers.toml:6:8: error: duplicate worker name `a`");
    assert_error(&p, "first defined on line 2");
}

#[test]
fn syntax_errors_and_bad_values_are_located() {
    let p = project();
    p.write(
        "jobs/api/job.toml",
        "restart_policy = \"sometimes\"\non_failure = \"retry\"\n",
    );
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr
            .contains("jobs/api/job.toml:1:18: error: `sometimes` is not a valid restart_policy"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("restart_policy is one of: always, reload, never"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("jobs/api/job.toml:2:14: error: `retry` is not a valid on_failure"),
        "{out:?}"
    );
    p.write("jobs/api/job.toml", "version = \n");
    let out = p.expect(&["check"], 2);
    assert!(out.stderr.contains("jobs/api/job.toml:1:"), "{out:?}");
}

#[test]
fn check_json_lists_diagnostics_and_bad_input_changes_nothing() {
    let p = project();
    p.write("jobs/api/job.toml", "selectors = [\"db\"]\n");
    let out = p.expect(&["check", "--json"], 2);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(doc["exit_code"], 2);
    assert_eq!(doc["diagnostics"][0]["file"], "jobs/api/job.toml");
    assert_eq!(doc["diagnostics"][0]["line"], 1);
    // A deploy of an invalid project is refused before anything is created.
    p.expect(&["deploy"], 2);
    assert!(!p.path().join(".cutover").exists());
    assert!(!p.path().join("wa").exists());
}

#[test]
fn init_example_is_valid_and_deploys_locally() {
    let p = Project::new();
    p.expect(&["init", ".", "--example"], 0);
    p.expect(&["check"], 0);
    let out = p.expect(&["deploy"], 0);
    assert!(out.stdout.contains("success (4 start)"), "{out:?}");
    let greeting = std::fs::read_to_string(
        p.path()
            .join("local-workers/local-3/jobs/hello/current/greeting.txt"),
    )
    .expect("greeting");
    assert_eq!(greeting, "Hello from local-3: hello 1.0.0\n");
    let again = p.expect(&["init", ".", "--example"], 2);
    assert!(
        again.stderr.contains("already has a cutover.toml"),
        "{again:?}"
    );
    let gitignore = std::fs::read_to_string(p.path().join(".gitignore")).expect("gitignore");
    assert!(gitignore.contains(".cutover/"));
}

#[test]
fn unknown_jobs_and_commands_are_bad_input() {
    let p = project();
    p.job("api", "version = \"1\"\n");
    let out = p.expect(&["deploy", "--jobs", "nope"], 2);
    assert!(out.stderr.contains("--jobs names `nope`"), "{out:?}");
    p.expect(&["frobnicate"], 2);
    let out = p.expect(&["kv", "get", "api", "missing"], 2);
    assert!(
        out.stderr.contains("job `api` has no key `missing`"),
        "{out:?}"
    );
}

#[test]
fn playbooks_are_validated_created_listed_and_checked() {
    let p = project();
    p.expect(&["playbook", "new", "verify-race"], 0);
    p.expect(&["playbook", "new", "verify-race"], 2);
    let out = p.expect(&["check"], 0);
    assert!(out.stdout.contains("1 playbook(s)"), "{out:?}");
    let list = p.expect(&["playbook", "list"], 0);
    assert!(
        list.stdout.contains("verify-race")
            && list.stdout.contains("recovery/playbooks/verify-race.yaml"),
        "{list:?}"
    );

    p.write(
        "recovery/playbooks/bad.yaml",
        "- id: broken\n  match: [\"unhealthy (\"]\n  phases: [deploy]\n",
    );
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr.contains(
            "recovery/playbooks/bad.yaml:1:1: error: playbook `broken`: bad regex `unhealthy (`"
        ),
        "{out:?}"
    );
    assert!(out.stderr.contains("unknown phase `deploy`"), "{out:?}");
    p.write("recovery/playbooks/bad.yaml", "- id: typo\n  symtom: x\n");
    let out = p.expect(&["check"], 2);
    assert!(
        out.stderr.contains("recovery/playbooks/bad.yaml:2:")
            && out.stderr.contains("unknown field `symtom`"),
        "{out:?}"
    );

    p.write(
        "recovery/playbooks/bad.yaml",
        "- id: disk-full\n  detection:\n    - command: echo 'Use% 100%'\n      expect: \"100%\"\n  fix:\n    adhoc: free some space\n- id: never\n  detection:\n    - command: echo fine\n      expect: broken\n",
    );
    let yes = p.expect(&["playbook", "check", "disk-full"], 0);
    assert!(
        yes.stdout
            .contains("playbook disk-full applies: free some space"),
        "{yes:?}"
    );
    let no = p.expect(&["playbook", "check", "never"], 0);
    assert!(
        no.stdout.contains("playbook never does not apply now"),
        "{no:?}"
    );
    p.expect(&["playbook", "check", "nope"], 2);
}

/// A postgres backend's settings are checked at their line, and a project
/// that asks for shared state never quietly gets a local one: without a
/// URL, or with one that is not PostgreSQL's, it is refused before
/// anything is written.
#[test]
fn a_postgres_backend_without_a_usable_url_is_refused_and_writes_nothing() {
    let p = project();
    p.write(
        "cutover.toml",
        "name = \"t\"\n[state]\nbackend = \"postgres\"\nlease = \"soon\"\n",
    );
    assert_error(&p, "cutover.toml:4:9: error: lease: ");
    p.write(
        "cutover.toml",
        "name = \"t\"\n[state]\nbackend = \"postgres\"\n",
    );
    let out = p.cutover_env(&["deploy", "--dry-run"], &[("CUTOVER_STATE_URL", "")]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(
            "[state] backend = \"postgres\" has no url, and CUTOVER_STATE_URL is not set"
        ),
        "{out:?}"
    );
    let out = p.cutover_env(
        &["deploy", "--dry-run"],
        &[("CUTOVER_STATE_URL", "mysql://ops:hunter2@db/cutover")],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("does not start with postgres://"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("hunter2"), "{out:?}");
    assert!(!p.path().join(".cutover/state.db").exists(), "{out:?}");
}
