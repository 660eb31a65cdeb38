//! `cutover plan`: classification of a diff and the plan it implies.

use crate::support::{git, write_file, write_job, Project};

fn repo() -> Project {
    let p = Project::new();
    git(p.path(), &["init", "-q", "-b", "main"]);
    git(p.path(), &["config", "user.name", "T"]);
    git(p.path(), &["config", "user.email", "t@example.com"]);
    p.write("cutover.toml", "name = \"t\"\n");
    p.write(".gitignore", ".cutover/\nw/\n");
    p.write(
        "workers.toml",
        "[[worker]]\nname = \"a\"\ntransport = \"local\"\nroot = \"w/a\"\nlabels = [\"web\"]\n",
    );
    write_job(
        p.path(),
        "api",
        "version = \"1\"\nwatch = [\"src/api/**\"]\n",
    );
    write_job(p.path(), "web", "version = \"1\"\n");
    write_job(p.path(), "old", "version = \"1\"\n");
    write_file(p.path(), "jobs/web/a.txt", "a\n");
    git(p.path(), &["add", "-A"]);
    git(p.path(), &["commit", "-q", "-m", "one"]);
    p
}

#[test]
fn every_class_and_both_sides_of_renames_and_deletions() {
    let p = repo();
    p.expect(&["deploy"], 0);
    write_job(
        p.path(),
        "api",
        "version = \"2\"\nwatch = [\"src/api/**\"]\n",
    );
    p.write("src/api/main.rs", "fn main() {}\n");
    p.write("docs/guide.md", "# guide\n");
    p.write("releases/12-fix.sh", "echo\n");
    // A settings change (not the name: a shared store belongs to one).
    p.write("cutover.toml", "name = \"t\"\nmain_branch = \"main\"\n");
    p.write("random.txt", "?\n");
    git(p.path(), &["mv", "jobs/web/a.txt", "jobs/web/b.txt"]);
    git(p.path(), &["rm", "-q", "-r", "jobs/old"]);
    git(p.path(), &["add", "-A"]);
    git(p.path(), &["commit", "-q", "-m", "two"]);

    let out = p.expect(&["plan", "--diff", "HEAD~1"], 0);
    let rows: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let has = |class: &str, job: &str, path: &str| {
        rows.iter()
            .any(|r| r.len() == 4 && r[1] == class && r[2] == job && r[3] == path)
    };
    assert!(has("manifest", "api", "jobs/api/job.toml"), "{out:?}");
    assert!(has("watched", "api", "src/api/main.rs"), "{out:?}");
    assert!(has("job-tree", "web", "jobs/web/b.txt"), "{out:?}");
    assert!(
        has("job-tree", "web", "jobs/web/a.txt"),
        "a rename is classified on both sides: {out:?}"
    );
    assert!(has("job-removed", "old", "jobs/old/job.toml"), "{out:?}");
    assert!(has("docs", "-", "docs/guide.md"), "{out:?}");
    assert!(has("ticket-script", "-", "releases/12-fix.sh"), "{out:?}");
    assert!(has("project", "-", "cutover.toml"), "{out:?}");
    assert!(has("unclassified", "-", "random.txt"), "{out:?}");
    assert!(out.stdout.contains("services: api old web"), "{out:?}");
    assert!(
        out.stdout.contains("job removed from the project"),
        "the plan stops the removed job: {out:?}"
    );
    assert!(out.stdout.contains("version 1 -> 2"), "{out:?}");
    assert!(
        out.stdout
            .contains("warning: 1 unclassified file(s): random.txt"),
        "{out:?}"
    );

    let strict = p.expect(&["plan", "--diff", "HEAD~1", "--strict"], 1);
    assert!(
        strict.stdout.contains("random.txt") && strict.stdout.contains("--strict: failing"),
        "{strict:?}"
    );
    let json = p.expect(&["plan", "--diff", "HEAD~1", "--json"], 0);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(doc["unclassified"][0], "random.txt");
    assert_eq!(
        doc["report"]["classification"]["services"],
        serde_json::json!(["api", "old", "web"])
    );

    // Without --diff: from the last deployed commit.
    let out = p.expect(&["plan"], 0);
    assert!(out.stdout.contains("random.txt"), "{out:?}");
}

#[test]
fn incoming_branch_is_planned_without_checking_it_out() {
    let p = repo();
    git(p.path(), &["checkout", "-q", "-b", "feature"]);
    p.write("jobs/web/new.txt", "n\n");
    git(p.path(), &["add", "-A"]);
    git(p.path(), &["commit", "-q", "-m", "feature"]);
    git(p.path(), &["checkout", "-q", "main"]);
    let out = p.expect(&["plan", "--diff", "main", "--incoming", "feature"], 2);
    assert!(out.stderr.contains("cannot be used with"), "{out:?}");
    let out = p.expect(&["plan", "--incoming", "feature", "--diff", "main"], 2);
    let _ = out;
    let out = p.cutover(&["plan", "--incoming", "feature"]);
    assert_eq!(out.code, 2, "no deployment yet and no --diff: {out:?}");
    p.expect(&["deploy"], 0);
    let out = p.expect(&["plan", "--incoming", "feature"], 0);
    assert!(
        out.stdout.contains("job-tree") && out.stdout.contains("jobs/web/new.txt"),
        "{out:?}"
    );
    assert!(
        !p.path().join("jobs/web/new.txt").exists(),
        "the branch was not checked out"
    );
    let bad = p.expect(&["plan", "--diff", "nope"], 2);
    assert!(bad.stderr.contains("`nope` is not a commit"), "{bad:?}");
}
