//! `.cutover/audit.log`: one line per mutating command, appended and synced.

use std::io::Write;
use std::path::Path;

use crate::Operator;

/// Appends one line: time, user, host, the command, its outcome and exit code.
pub fn append(
    workspace: &Path,
    op: &Operator,
    command: &str,
    outcome: &str,
    rc: i32,
    detail: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(workspace)?;
    let mut line = format!(
        "{} user={} host={} pid={} command={:?} outcome={} rc={}",
        cutover_state::now_rfc3339(),
        op.user,
        op.host,
        op.pid,
        command,
        outcome,
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
