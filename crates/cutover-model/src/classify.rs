//! Classifying a git diff: which class each changed path belongs to, and
//! which jobs a release must roll out because of it (SPEC section 3).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::project::Project;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    Manifest,
    JobTree,
    Watched,
    JobRemoved,
    Fleet,
    TicketScript,
    Docs,
    Project,
    Unclassified,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Manifest => "manifest",
            Class::JobTree => "job-tree",
            Class::Watched => "watched",
            Class::JobRemoved => "job-removed",
            Class::Fleet => "fleet",
            Class::TicketScript => "ticket-script",
            Class::Docs => "docs",
            Class::Project => "project",
            Class::Unclassified => "unclassified",
        }
    }
}

/// One changed path as git reports it (a rename gives two paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `A`, `M`, `D`, `R`, `C`, `T`.
    pub status: char,
    pub path: String,
    /// For renames and copies: the path before.
    pub from: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Classified {
    pub path: String,
    pub status: String,
    pub class: Class,
    pub job: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    pub files: Vec<Classified>,
    /// Jobs to roll out (or stop, when removed), sorted.
    pub services: Vec<String>,
    pub removed_jobs: Vec<String>,
    pub fleet_changed: bool,
}

impl Classification {
    pub fn unclassified(&self) -> Vec<&str> {
        self.files
            .iter()
            .filter(|f| f.class == Class::Unclassified)
            .map(|f| f.path.as_str())
            .collect()
    }
}

/// Classifies `changes` against the project as it is at the target revision.
/// A rename is classified on both sides; a deletion by the path it had.
pub fn classify(project: &Project, changes: &[Change]) -> Classification {
    let watch: Vec<(String, globset::GlobSet)> = project
        .jobs
        .values()
        .filter(|j| !j.manifest.watch.is_empty())
        .map(|j| (j.name.clone(), j.watch_set()))
        .collect();

    let mut files = Vec::new();
    for c in changes {
        let sides =
            std::iter::once((c.path.as_str(), c.status)).chain(c.from.as_deref().map(|f| (f, 'D')));
        for (path, status) in sides {
            let status = if c.from.is_some() && path == c.path {
                c.status
            } else {
                status
            };
            for (class, job) in classify_path(project, &watch, path) {
                files.push(Classified {
                    path: path.to_string(),
                    status: status.to_string(),
                    class,
                    job,
                });
            }
        }
    }
    files.sort_by(|a, b| (&a.path, a.class).cmp(&(&b.path, b.class)));
    files.dedup_by(|a, b| a.path == b.path && a.class == b.class && a.job == b.job);

    let fleet_changed = files.iter().any(|f| f.class == Class::Fleet);
    let mut services: BTreeSet<String> = files.iter().filter_map(|f| f.job.clone()).collect();
    if fleet_changed {
        services.extend(project.jobs.keys().cloned());
    }
    let removed_jobs: BTreeSet<String> = files
        .iter()
        .filter(|f| f.class == Class::JobRemoved)
        .filter_map(|f| f.job.clone())
        .collect();
    Classification {
        files,
        services: services.into_iter().collect(),
        removed_jobs: removed_jobs.into_iter().collect(),
        fleet_changed,
    }
}

fn classify_path(
    project: &Project,
    watch: &[(String, globset::GlobSet)],
    path: &str,
) -> Vec<(Class, Option<String>)> {
    if let Some(rest) = path.strip_prefix("jobs/") {
        if let Some((job, inner)) = rest.split_once('/') {
            let job = job.to_string();
            return if !project.jobs.contains_key(&job) {
                vec![(Class::JobRemoved, Some(job))]
            } else if inner == crate::project::JOB_FILE {
                vec![(Class::Manifest, Some(job))]
            } else {
                vec![(Class::JobTree, Some(job))]
            };
        }
    }
    if path == crate::project::WORKERS_FILE {
        return vec![(Class::Fleet, None)];
    }
    if path == crate::project::PROJECT_FILE {
        return vec![(Class::Project, None)];
    }
    if let Some(name) = path.strip_prefix("releases/") {
        if !name.contains('/') && name.ends_with(".sh") && name.contains('-') {
            return vec![(Class::TicketScript, None)];
        }
    }
    let watched: Vec<(Class, Option<String>)> = watch
        .iter()
        .filter(|(_, set)| set.is_match(path))
        .map(|(job, _)| (Class::Watched, Some(job.clone())))
        .collect();
    if !watched.is_empty() {
        return watched;
    }
    if path.starts_with("recovery/") || path.starts_with("docs/") || path.ends_with(".md") {
        return vec![(Class::Docs, None)];
    }
    vec![(Class::Unclassified, None)]
}

/// Parses `git diff --name-status -z -M` output.
pub fn parse_name_status(out: &str) -> Vec<Change> {
    let mut parts = out.split('\0').filter(|s| !s.is_empty());
    let mut changes = Vec::new();
    while let Some(status) = parts.next() {
        let letter = status.chars().next().unwrap_or('M');
        match letter {
            'R' | 'C' => {
                let (Some(from), Some(to)) = (parts.next(), parts.next()) else {
                    break;
                };
                changes.push(Change {
                    status: letter,
                    path: to.to_string(),
                    from: Some(from.to_string()),
                });
            }
            _ => {
                let Some(path) = parts.next() else { break };
                changes.push(Change {
                    status: letter,
                    path: path.to_string(),
                    from: None,
                });
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_renames_and_plain_changes() {
        let out = "M\0jobs/api/app.conf\0R087\0docs/a.md\0jobs/api/b.md\0D\0x.txt\0";
        let c = parse_name_status(out);
        assert_eq!(c.len(), 3);
        assert_eq!(c[1].status, 'R');
        assert_eq!(c[1].from.as_deref(), Some("docs/a.md"));
        assert_eq!(c[1].path, "jobs/api/b.md");
        assert_eq!(
            c[2],
            Change {
                status: 'D',
                path: "x.txt".into(),
                from: None
            }
        );
    }
}
