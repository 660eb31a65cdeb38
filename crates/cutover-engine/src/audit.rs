//! `.cutover/audit.log`: one line per mutating command, appended and synced.

use std::io::Write;
use std::path::Path;

use crate::Operator;

/// Appends one line: time, user, host, the command, its outcome and exit code.
/// A value as written: bare when it is a plain word, else quoted with
/// Rust's escapes.
fn field(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@:+/".contains(c));
    if plain {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

pub fn append(
    workspace: &Path,
    op: &Operator,
    command: &str,
    outcome: &str,
    rc: i32,
    detail: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(workspace)?;
    // One line per command whatever the values hold: a name with a space,
    // a quote or a newline (from CUTOVER_USER) is quoted and escaped, so
    // it cannot end the line or forge another field.
    let mut line = format!(
        "{} user={} host={} pid={} command={:?} outcome={} rc={}",
        cutover_state::now_rfc3339(),
        field(&op.user),
        field(&op.host),
        op.pid,
        command,
        field(outcome),
        rc
    );
    if !detail.is_empty() {
        line.push_str(&format!(" detail={detail:?}"));
    }
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(workspace.join("audit.log"))?;
    f.write_all(line.as_bytes())?;
    f.sync_data()
}
