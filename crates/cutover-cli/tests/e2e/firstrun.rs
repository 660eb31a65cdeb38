//! A newcomer's first run: `cutover demo` on a machine with only git,
//! make and a POSIX shell besides cutover.

use crate::support::*;

/// The demo's local workers get their trees by a native copy: with
/// `rsync`, `tar`, `find` and `ssh` shadowed by programs that fail (and
/// log that they were called), the whole demo still succeeds and none of
/// them runs.
#[test]
fn demo_needs_no_rsync_tar_find_or_ssh() {
    let p = Project::new();
    let shims = tempfile::tempdir().expect("shims");
    let log = shims.path().join("called.log");
    for program in ["rsync", "tar", "find", "ssh"] {
        write_executable(
            &shims.path().join(program),
            &format!(
                "#!/bin/sh\necho \"{program} $*\" >> '{}'\necho '{program}: not installed' >&2\nexit 127\n",
                log.display()
            ),
        );
    }
    let path = format!(
        "{}:{}",
        shims.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = p.cutover_env(&["demo"], &[("PATH", path.as_str())]);
    assert_eq!(out.code, 0, "{out:?}");
    let called = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(called, "", "the demo ran programs a fresh machine lacks");
}
