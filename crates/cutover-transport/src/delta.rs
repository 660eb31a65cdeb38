//! Delta pushes: a new release dir made on the host from the previous one
//! by hard links, with only the changed files sent (as a tar stream on the
//! command's stdin), in one remote command.
//!
//! The result is trusted only after the same check rsync's quick check
//! makes: the command lists the new dir (type, mode, size, mtime to the
//! nanosecond, symlink target of every file) and that listing must equal
//! the local tree's. A previous release edited on the host (a new mtime),
//! a host without GNU tar or find, anything unexpected: the caller falls
//! back to rsync into a clean dir.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::rsync::{Drift, DriftKind};

/// What the quick check compares of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stat {
    File {
        mode: u32,
        size: u64,
        mtime_ns: i128,
    },
    Symlink {
        target: String,
    },
}

pub(crate) type Listing = BTreeMap<String, Stat>;

/// A tree on this machine to push or compare with hosts, and its listing,
/// read once however many hosts it goes to.
#[derive(Debug, Clone)]
pub struct LocalTree {
    root: PathBuf,
    listing: Listing,
}

impl LocalTree {
    pub fn scan(root: PathBuf) -> io::Result<LocalTree> {
        let listing = local_listing(&root)?;
        Ok(LocalTree { root, listing })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn listing(&self) -> &Listing {
        &self.listing
    }
}

/// `find DIR` listing every file (not dir) below DIR: type, mode, size,
/// mtime, link target and path, each NUL-terminated (see `parse_listing`).
macro_rules! find_listing {
    ($dir:literal) => {
        concat!(
            "find ",
            $dir,
            r" -mindepth 1 ! -type d -printf '%y\0%m\0%s\0%T@\0%l\0%P\0'"
        )
    };
}

/// What the delta script prints before the kept release it reused.
macro_rules! reused_mark {
    () => {
        "cutover-reused="
    };
}

/// The delta script. `$1` the new release dir, `$2` the previous release
/// dir (empty: none), `$3` 1 if paths were removed, `$4` and `$5` where a kept release
/// of the same tree may be (the newest `$4/*$5` other than `$2`; `$5`
/// empty: none is looked for); then the relative paths to replace or
/// remove. The tar stream is on stdin, unread when a kept release is
/// hard-linked whole instead (its name goes to stderr, after
/// [`REUSED`]); the listing of the result goes to stdout.
pub(crate) const SCRIPT: &str = concat!(
    r#"k=
if [ -n "$5" ]; then for r in "$4"/*"$5"; do [ -d "$r" ] && [ "$r" != "$2" ] && [ "$r" != "$1" ] && k=$r; done; fi
if [ -n "$k" ]; then
echo ""#,
    reused_mark!(),
    r#"${k##*/}" >&2
rm -rf -- "$1" && cp -al -- "$k" "$1" && cd "$1" || exit 90
else
test -d "$2" || { echo "cutover: no previous release $2" >&2; exit 90; }
rm -rf -- "$1" && cp -al -- "$2" "$1" && cd "$1" || exit 90
pruned=$3
shift 5
if [ $# -gt 0 ]; then rm -rf -- "$@" || exit 90; fi
tar -x -f - || exit 90
if [ "$pruned" = 1 ]; then find . -mindepth 1 -type d -empty -delete || exit 90; fi
fi
exec "#,
    find_listing!(".")
);

/// The line on the delta script's stderr that names the kept release it
/// hard-linked.
pub(crate) const REUSED: &str = reused_mark!();

/// Lists the dir `$1` (given with a trailing slash, so a symlink to a dir
/// is followed).
pub(crate) const LIST: &str = concat!("exec ", find_listing!(r#""$1""#));

/// What a worker's copy of a promoted tree must look like, as far as a
/// listing can tell without the files at hand: each file's mode and the
/// mtime derived from its content hash (see `cutover_model::tree`), each
/// symlink's presence. Its sizes are not known, so a same-mtime edit
/// passes; `cutover drift` reads content.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    files: BTreeMap<String, Option<(u32, i128)>>,
}

impl Expected {
    pub fn file(&mut self, path: String, mode: u32, mtime_ns: i128) {
        self.files.insert(path, Some((mode, mtime_ns)));
    }

    pub fn symlink(&mut self, path: String) {
        self.files.insert(path, None);
    }

    /// What differs between this and a listing found on the worker.
    pub(crate) fn differences(&self, found: &Listing) -> Vec<Drift> {
        let same = |_: &str, want: &Option<(u32, i128)>, got: &Stat| {
            Ok::<_, std::convert::Infallible>(match (want, got) {
                (None, Stat::Symlink { .. }) => true,
                (
                    Some((mode, mtime)),
                    Stat::File {
                        mode: m, mtime_ns, ..
                    },
                ) => mode == m && mtime == mtime_ns,
                _ => false,
            })
        };
        match compare(&self.files, found, same) {
            Ok(d) => d,
            Err(never) => match never {},
        }
    }
}

/// What differs between what a tree should hold (`want`) and what was
/// found: each wanted path that is missing, or not the `same`; then each
/// found path that is not wanted. Sorted by path.
pub(crate) fn compare<W, F, E>(
    want: &BTreeMap<String, W>,
    found: &BTreeMap<String, F>,
    mut same: impl FnMut(&str, &W, &F) -> Result<bool, E>,
) -> Result<Vec<Drift>, E> {
    let mut out = Vec::new();
    for (path, w) in want {
        let kind = match found.get(path) {
            None => DriftKind::Missing,
            Some(f) if !same(path, w, f)? => DriftKind::Modified,
            Some(_) => continue,
        };
        out.push(Drift {
            path: path.clone(),
            kind,
        });
    }
    out.extend(
        found
            .keys()
            .filter(|p| !want.contains_key(*p))
            .map(|p| Drift {
                path: p.clone(),
                kind: DriftKind::Extra,
            }),
    );
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// What differs between the expected listing and the one found.
pub(crate) fn differences(expected: &Listing, found: &Listing) -> Vec<Drift> {
    match compare(expected, found, |_, w, f| {
        Ok::<_, std::convert::Infallible>(w == f)
    }) {
        Ok(d) => d,
        Err(never) => match never {},
    }
}

/// A tar stream of `paths` (relative to `root`) that exist there; paths
/// that do not exist were removed and are not in it. Modes, owners and
/// nanosecond mtimes (a pax record) are the local files'.
pub(crate) fn archive(root: &Path, paths: &[String]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for rel in paths {
        let path = root.join(rel);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut header = tar::Header::new_ustar();
        header.set_metadata(&meta);
        let mtime = format!("{}.{:09}", meta.mtime(), meta.mtime_nsec());
        builder.append_pax_extensions([("mtime", mtime.as_bytes())])?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            builder.append_link(&mut header, rel, target)?;
        } else {
            let file = std::fs::File::open(&path)?;
            builder.append_data(&mut header, rel, file)?;
        }
    }
    builder.into_inner()
}

/// The local tree as the quick check sees it.
pub(crate) fn local_listing(root: &Path) -> io::Result<Listing> {
    let mut out = Listing::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .map_err(io::Error::other)?
            .to_string_lossy()
            .into_owned();
        let stat = if meta.file_type().is_symlink() {
            Stat::Symlink {
                target: std::fs::read_link(entry.path())?
                    .to_string_lossy()
                    .into_owned(),
            }
        } else {
            Stat::File {
                mode: meta.permissions().mode() & 0o7777,
                size: meta.len(),
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            }
        };
        out.insert(rel, stat);
    }
    Ok(out)
}

/// Parses the script's listing; `None` if it is not one.
pub(crate) fn parse_listing(out: &str) -> Option<Listing> {
    let fields: Vec<&str> = out.split('\0').collect();
    let mut listing = Listing::new();
    // Six fields per file, each NUL-terminated: the last split is empty.
    let records = fields.len().checked_sub(1)?;
    if records % 6 != 0 || !fields.last()?.is_empty() {
        return None;
    }
    for f in fields.chunks_exact(6) {
        let (kind, mode, size, mtime, target, path) = (f[0], f[1], f[2], f[3], f[4], f[5]);
        let stat = match kind {
            "l" => Stat::Symlink {
                target: target.to_string(),
            },
            "f" => Stat::File {
                mode: u32::from_str_radix(mode, 8).ok()?,
                size: size.parse().ok()?,
                mtime_ns: parse_mtime(mtime)?,
            },
            // A device, fifo or socket is never part of a release.
            _ => return None,
        };
        listing.insert(path.to_string(), stat);
    }
    Some(listing)
}

/// `find -printf %T@`: seconds, a dot, and (GNU find) ten fraction digits.
fn parse_mtime(text: &str) -> Option<i128> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i128 = secs.parse().ok()?;
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: i128 = digits.parse().ok()?;
    Some(if secs < 0 {
        secs * 1_000_000_000 - nanos
    } else {
        secs * 1_000_000_000 + nanos
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gnu_find_listings() {
        let out = "f\x00644\x0016673\x001010167874.0130632690\x00\x00src/a.txt\x00\
                   l\x00777\x006\x001700000000.5\x00a.txt\x00link\x00";
        let l = parse_listing(out).expect("listing");
        assert_eq!(
            l["src/a.txt"],
            Stat::File {
                mode: 0o644,
                size: 16673,
                mtime_ns: 1_010_167_874_013_063_269
            }
        );
        assert_eq!(
            l["link"],
            Stat::Symlink {
                target: "a.txt".into()
            }
        );
        assert_eq!(parse_listing(""), Some(Listing::new()));
        assert_eq!(parse_listing("f\x00644\x00"), None, "a cut-off listing");
        assert_eq!(parse_listing("p\x00644\x000\x001.0\x00\x00fifo\x00"), None);
    }

    #[test]
    fn an_archive_round_trips_through_gnu_tar_with_nanosecond_mtimes() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).expect("mkdir");
        std::fs::write(src.join("a/b/f.txt"), "hello\n").expect("write");
        std::fs::set_permissions(
            src.join("a/b/f.txt"),
            std::fs::Permissions::from_mode(0o751),
        )
        .expect("chmod");
        let when = std::time::UNIX_EPOCH + std::time::Duration::new(1_010_167_874, 13_063_269);
        std::fs::File::options()
            .write(true)
            .open(src.join("a/b/f.txt"))
            .expect("open")
            .set_modified(when)
            .expect("mtime");
        std::os::unix::fs::symlink("b/f.txt", src.join("a/link")).expect("symlink");

        let tar =
            archive(&src, &["a/b/f.txt".into(), "a/link".into(), "gone".into()]).expect("archive");
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).expect("mkdir");
        let mut child = std::process::Command::new("tar")
            .args(["-x", "-f", "-"])
            .current_dir(&dest)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("tar");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&tar)
            .expect("write");
        assert!(child.wait().expect("wait").success());
        assert_eq!(
            local_listing(&dest).expect("dest"),
            local_listing(&src).expect("src")
        );
    }
}
