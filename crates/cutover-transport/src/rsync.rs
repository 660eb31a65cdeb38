//! rsync invocations: pushing a staged tree into a new release dir, and
//! comparing a staged tree with what a worker has (drift).

use std::path::Path;

use serde::Serialize;

/// One file that differs between the promoted tree and a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub path: String,
    pub kind: DriftKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftKind {
    /// Content or mode differs.
    Modified,
    /// Promoted, but not on the worker.
    Missing,
    /// On the worker, not promoted.
    Extra,
}

/// Flags for a push: archive mode, an exact copy, and hard links to the
/// previous release for every file that did not change.
///
/// "Did not change" is rsync's quick check (size and mtime) at nanosecond
/// precision (`--modify-window=-1`). Staged files carry mtimes derived from
/// their content hash (`cutover_model::tree`), so the quick check compares
/// content without reading every file on both sides as `--checksum` would.
/// A file edited on the worker gets a new mtime and is sent again; on a
/// filesystem without nanosecond times every file is sent: slower, never
/// wrong.
pub(crate) fn push_args(local: &Path, dest: &str, link_dest: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "-a".to_string(),
        "--modify-window=-1".to_string(),
        "--delete".to_string(),
    ];
    if let Some(prev) = link_dest {
        args.push(format!("--link-dest={prev}"));
    }
    args.push(format!("{}/", local.display()));
    args.push(format!("{dest}/"));
    args
}

/// Flags for a dry-run comparison by checksum. Times are left out: a
/// release dir's mtimes say nothing about its content.
pub(crate) fn diff_args(local: &Path, dest: &str) -> Vec<String> {
    vec![
        "-rlpc".into(),
        "--dry-run".into(),
        "--itemize-changes".into(),
        "--delete".into(),
        format!("{}/", local.display()),
        format!("{dest}/"),
    ]
}

/// Parses `--itemize-changes` output into drift entries.
pub(crate) fn parse_itemized(out: &str) -> Vec<Drift> {
    let mut drift = Vec::new();
    for line in out.lines() {
        if let Some(path) = line.strip_prefix("*deleting") {
            drift.push(Drift {
                path: path.trim().trim_end_matches('/').to_string(),
                kind: DriftKind::Extra,
            });
            continue;
        }
        let Some((flags, path)) = line.split_once(' ') else {
            continue;
        };
        let mut chars = flags.chars();
        let (Some(update), Some(ftype)) = (chars.next(), chars.next()) else {
            continue;
        };
        if flags.len() < 9 || !"<>ch.".contains(update) {
            continue;
        }
        if ftype == 'd' && !flags.contains('+') {
            continue; // a directory whose attributes alone differ
        }
        let kind = if flags.contains("+++") {
            DriftKind::Missing
        } else {
            DriftKind::Modified
        };
        drift.push(Drift {
            path: path.trim().trim_end_matches('/').to_string(),
            kind,
        });
    }
    drift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_itemized_changes() {
        let out = "\
.d..t...... ./
>fcs....... app.conf
>f+++++++++ new.txt
cd+++++++++ newdir/
.f...p..... bin/run
*deleting   stray.log
";
        let d = parse_itemized(out);
        assert_eq!(
            d,
            vec![
                Drift {
                    path: "app.conf".into(),
                    kind: DriftKind::Modified
                },
                Drift {
                    path: "new.txt".into(),
                    kind: DriftKind::Missing
                },
                Drift {
                    path: "newdir".into(),
                    kind: DriftKind::Missing
                },
                Drift {
                    path: "bin/run".into(),
                    kind: DriftKind::Modified
                },
                Drift {
                    path: "stray.log".into(),
                    kind: DriftKind::Extra
                },
            ]
        );
    }
}
