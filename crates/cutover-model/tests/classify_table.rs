//! The classes of SPEC section 3, one row per kind of path.

use cutover_model::classify::{classify, Change, Class};
mod common;

use cutover_model::Project;

fn project() -> (tempfile::TempDir, Project) {
    common::project(&[
        ("cutover.toml", "name = \"p\"\n"),
        ("workers.toml", "[[worker]]\nname = \"w1\"\nhost = \"h\"\n"),
        (
            "jobs/api/job.toml",
            "version = \"1\"\nwatch = [\"src/api/**\"]\n",
        ),
        ("jobs/web/job.toml", "version = \"1\"\n"),
    ])
}

#[test]
fn every_kind_of_path_has_its_class() {
    let (_dir, p) = project();
    let table: &[(&str, Class, Option<&str>)] = &[
        ("jobs/api/job.toml", Class::Manifest, Some("api")),
        ("jobs/api/conf/app.conf", Class::JobTree, Some("api")),
        ("jobs/web/Makefile", Class::JobTree, Some("web")),
        ("jobs/gone/Makefile", Class::JobRemoved, Some("gone")),
        ("src/api/main.c", Class::Watched, Some("api")),
        ("workers.toml", Class::Fleet, None),
        ("cutover.toml", Class::Project, None),
        ("releases/1234-migrate.sh", Class::TicketScript, None),
        ("releases/nested/1234-x.sh", Class::Unclassified, None),
        ("recovery/playbooks/a.yaml", Class::Docs, None),
        ("docs/guide.md", Class::Docs, None),
        ("NOTES.md", Class::Docs, None),
        ("src/other/main.c", Class::Unclassified, None),
    ];
    for (path, class, job) in table {
        let c = classify(
            &p,
            &[Change {
                status: 'M',
                path: path.to_string(),
                from: None,
            }],
        );
        assert_eq!(c.files.len(), 1, "{path}: {:?}", c.files);
        assert_eq!(c.files[0].class, *class, "{path}");
        assert_eq!(c.files[0].job.as_deref(), *job, "{path}");
    }
}

#[test]
fn a_rename_is_classified_on_both_sides_and_the_fleet_touches_every_job() {
    let (_dir, p) = project();
    let c = classify(
        &p,
        &[Change {
            status: 'R',
            path: "jobs/web/page.html".into(),
            from: Some("docs/page.html".into()),
        }],
    );
    let classes: Vec<(String, Class)> = c.files.iter().map(|f| (f.path.clone(), f.class)).collect();
    assert_eq!(
        classes,
        [
            ("docs/page.html".to_string(), Class::Docs),
            ("jobs/web/page.html".to_string(), Class::JobTree)
        ]
    );
    assert_eq!(c.services, ["web"]);

    let c = classify(
        &p,
        &[Change {
            status: 'M',
            path: "workers.toml".into(),
            from: None,
        }],
    );
    assert!(c.fleet_changed);
    assert_eq!(c.services, ["api", "web"]);
}
