//! `.cutover/audit.log`: one line per mutating command, appended and synced.

use std::io::Write;
use std::path::Path;

use crate::Operator;

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

/// The audit line of one command (ending in a newline).
pub fn line(op: &Operator, command: &str, outcome: &str, rc: i32, detail: &str) -> String {
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
    line
}

/// Appends one line to `.cutover/audit.log` and syncs it.
pub fn append(
    workspace: &Path,
    op: &Operator,
    command: &str,
    outcome: &str,
    rc: i32,
    detail: &str,
) -> std::io::Result<()> {
    append_line(workspace, &line(op, command, outcome, rc, detail))
}

fn append_line(workspace: &Path, line: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(workspace)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(workspace.join("audit.log"))?;
    f.write_all(line.as_bytes())?;
    f.sync_data()
}

/// Records one command: in a shared store's audit log, which every
/// operator reads, then in this clone's `.cutover/audit.log`. A log that
/// cannot be written is reported on stderr; the command's result stands.
pub async fn record(
    ctx: &crate::Context,
    op: &Operator,
    command: &str,
    outcome: &str,
    rc: i32,
    detail: &str,
) {
    let line = line(op, command, outcome, rc, detail);
    if ctx.store.is_shared() {
        if let Err(e) = ctx.store.audit_append(line.trim_end()).await {
            eprintln!("warning: cannot write the store's audit log: {e}");
        }
    }
    if let Err(e) = append_line(&ctx.workspace, &line) {
        eprintln!("warning: cannot write .cutover/audit.log: {e}");
    }
}
