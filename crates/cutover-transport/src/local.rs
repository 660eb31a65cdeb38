//! Trees moved and compared on this machine, for `transport = "local"`
//! workers, without rsync: the same result as `rsync -a --link-dest`
//! (files that pass the quick check against the previous release are hard
//! links to it; the rest are copied with their mode and nanosecond mtime),
//! and the same comparisons as the remote listing and `rsync -c`.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::symlink;
use std::path::Path;

use crate::delta::{self, LocalTree, Stat};
use crate::rsync::Drift;

/// Makes `dest` a copy of `src`. `dest` must not exist (the upload's setup
/// removed any leftover of an interrupted run). Every file whose stat in
/// `link_dest` equals its stat in `src` is hard-linked from there instead.
pub(crate) fn copy_tree(src: &LocalTree, dest: &Path, link_dest: Option<&Path>) -> io::Result<()> {
    let base = match link_dest {
        Some(dir) => read_listing(dir)?,
        None => delta::Listing::new(),
    };
    fs::create_dir_all(dest)?;
    // Directory modes are set last, deepest first: a read-only directory
    // must still receive its files.
    let mut dirs = Vec::new();
    for entry in walkdir::WalkDir::new(src.root()).min_depth(1) {
        let entry = entry?;
        let rel = entry
            .path()
            .strip_prefix(src.root())
            .map_err(io::Error::other)?;
        let to = dest.join(rel);
        let meta = entry.metadata()?;
        if meta.is_dir() {
            fs::create_dir(&to)?;
            dirs.push((to, meta.permissions()));
            continue;
        }
        let key = rel.to_string_lossy();
        let stat = src.listing().get(key.as_ref());
        if let (Some(dir), Some(stat)) = (link_dest, stat) {
            if base.get(key.as_ref()) == Some(stat) && matches!(stat, Stat::File { .. }) {
                fs::hard_link(dir.join(rel), &to)?;
                continue;
            }
        }
        if meta.file_type().is_symlink() {
            symlink(fs::read_link(entry.path())?, &to)?;
            continue;
        }
        // Written, timed, then given its mode: a read-only file could not
        // be opened again to set its mtime.
        let mut out = fs::File::create(&to)?;
        std::io::copy(&mut fs::File::open(entry.path())?, &mut out)?;
        out.set_times(fs::FileTimes::new().set_modified(meta.modified()?))?;
        drop(out);
        fs::set_permissions(&to, meta.permissions())?;
    }
    for (dir, perms) in dirs.into_iter().rev() {
        fs::set_permissions(dir, perms)?;
    }
    Ok(())
}

/// The quick-check listing of `dir` (followed if it is a symlink, as
/// `current` is); a dir that does not exist lists nothing.
pub(crate) fn read_listing(dir: &Path) -> io::Result<delta::Listing> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(delta::Listing::new()),
        Err(e) => Err(e),
        Ok(_) => delta::local_listing(dir),
    }
}

/// What differs between `src` and `dest` by content, as `rsync -rlpc`
/// sees it: type, permissions, symlink target and bytes.
pub(crate) fn content_diff(src: &Path, dest: &Path) -> io::Result<Vec<Drift>> {
    let want = read_listing(src)?;
    let found = read_listing(dest)?;
    delta::compare(&want, &found, |path, w, f| match (w, f) {
        (Stat::Symlink { target: a }, Stat::Symlink { target: b }) => Ok(a == b),
        (Stat::File { mode: a, .. }, Stat::File { mode: b, .. }) => {
            Ok(a == b && same_bytes(&src.join(path), &dest.join(path))?)
        }
        _ => Ok(false),
    })
}

fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rsync::DriftKind;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn at(ns: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(ns)
    }

    fn write(root: &Path, rel: &str, text: &str, mode: u32, mtime_ns: u64) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(at(mtime_ns)))
            .unwrap();
    }

    #[test]
    fn copies_and_links_like_rsync_link_dest() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        write(&src, "same.txt", "same", 0o644, 1_000_000_001);
        write(&src, "bin/run", "#!/bin/sh\n", 0o755, 2_000_000_002);
        write(&src, "new.txt", "new", 0o600, 3_000_000_003);
        symlink("same.txt", src.join("link")).unwrap();
        let prev = t.path().join("prev");
        write(&prev, "same.txt", "same", 0o644, 1_000_000_001);
        write(&prev, "bin/run", "#!/bin/sh\n", 0o644, 2_000_000_002);
        write(&prev, "old.txt", "gone", 0o644, 1);

        let tree = LocalTree::scan(src.clone()).unwrap();
        let dest = t.path().join("dest");
        copy_tree(&tree, &dest, Some(&prev)).unwrap();

        assert_eq!(read_listing(&dest).unwrap(), *tree.listing());
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&dest.join("same.txt")), ino(&prev.join("same.txt")));
        assert_ne!(ino(&dest.join("bin/run")), ino(&prev.join("bin/run")));
        assert!(!dest.join("old.txt").exists());
        assert_eq!(
            fs::read_link(dest.join("link")).unwrap(),
            Path::new("same.txt")
        );
        assert_eq!(content_diff(&src, &dest).unwrap(), vec![]);
        assert_eq!(
            fs::metadata(prev.join("bin/run")).unwrap().mode() & 0o777,
            0o644,
            "the previous release is untouched"
        );
    }

    #[test]
    fn content_diff_names_every_kind() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write(&a, "edited", "one", 0o644, 5);
        write(&b, "edited", "two", 0o644, 5);
        write(&a, "chmod", "x", 0o644, 5);
        write(&b, "chmod", "x", 0o755, 5);
        write(&a, "missing", "x", 0o644, 5);
        write(&a, "same", "x", 0o644, 5);
        write(&b, "same", "x", 0o644, 9);
        write(&b, "extra", "x", 0o644, 5);
        let d = content_diff(&a, &b).unwrap();
        let got: Vec<_> = d.iter().map(|d| (d.path.as_str(), d.kind)).collect();
        assert_eq!(
            got,
            vec![
                ("chmod", DriftKind::Modified),
                ("edited", DriftKind::Modified),
                ("extra", DriftKind::Extra),
                ("missing", DriftKind::Missing),
            ]
        );
    }
}
