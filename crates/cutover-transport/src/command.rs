//! Commands as argv, and the single function that turns them into a shell line.

use std::time::Duration;

/// A command to run on a host: argv, extra environment, working directory.
#[derive(Debug, Clone)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub timeout: Duration,
    /// What errors call the command (`make start`), when its argv does
    /// not say it well (a script).
    pub label: Option<String>,
    /// Enforce the timeout on the host too: the command runs under
    /// `timeout`, which kills its whole process group when time is up.
    /// For the operator's own steps (lifecycle targets, health, backups),
    /// which may start processes that outlive a dropped connection.
    pub kill_on_timeout: bool,
}

impl Command {
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            timeout: Duration::from_secs(600),
            label: None,
            kill_on_timeout: false,
        }
    }

    /// An operator-written shell snippet (`make health`), run by `sh -c`.
    pub fn shell(script: &str) -> Self {
        Command::new(["sh", "-c", script])
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// See [`Command::kill_on_timeout`].
    pub fn kill_on_timeout(mut self) -> Self {
        self.kill_on_timeout = true;
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
}

/// Quotes one word for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r#"'\''"#))
    }
}

/// The shell line for a command: `cd DIR && exec env K=V argv...`.
///
/// Environment goes through `env` rather than ssh's SendEnv so that it does
/// not depend on the worker's sshd `AcceptEnv`.
pub fn command_line(cmd: &Command) -> String {
    shell_line(cmd, true)
}

/// The same line without `exec`, for a command that something else follows
/// in the same shell (`SETUP && rsync ...`).
pub(crate) fn shell_line(cmd: &Command, exec: bool) -> String {
    let mut line = String::new();
    if let Some(dir) = &cmd.cwd {
        line.push_str("cd ");
        line.push_str(&shell_quote(dir));
        line.push_str(" && ");
    }
    let body = argv_line(cmd);
    if exec && cmd.kill_on_timeout {
        // `timeout` puts the command in a process group of its own and
        // kills the group (TERM, then KILL 5 s later) when time is up. A
        // host without it runs the command as is.
        let secs = format!("{:.3}", cmd.timeout.as_secs_f64());
        line.push_str(&format!(
            "if command -v timeout >/dev/null 2>&1; then exec timeout -k 5 {secs} {body}; else exec {body}; fi"
        ));
        return line;
    }
    if exec {
        line.push_str("exec ");
    }
    line.push_str(&body);
    line
}

/// `env K=V ... ARGV...`, each word quoted (just ARGV without env).
fn argv_line(cmd: &Command) -> String {
    let mut line = String::new();
    if !cmd.env.is_empty() {
        line.push_str("env");
        for (k, v) in &cmd.env {
            line.push(' ');
            line.push_str(&shell_quote(&format!("{k}={v}")));
        }
        line.push(' ');
    }
    let words: Vec<String> = cmd.argv.iter().map(|a| shell_quote(a)).collect();
    line.push_str(&words.join(" "));
    line
}

/// What a finished command printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last lines of stderr (or stdout when stderr is empty), for messages.
    /// The last `lines` lines of the whole output: stdout, then stderr (a
    /// failing make target prints its diagnosis on stdout and make's own
    /// `Error 1` on stderr; both count).
    pub fn tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self
            .stdout
            .trim_end()
            .lines()
            .chain(self.stderr.trim_end().lines())
            .filter(|l| !l.trim().is_empty())
            .collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub(crate) fn from_std(o: std::process::Output) -> Output {
        Output {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("make"), "make");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r#"'it'\''s'"#);
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn builds_one_line() {
        let cmd = Command::new(["make", "-C", "/opt/x y", "start"])
            .env("CUTOVER_JOB", "api")
            .cwd("/tmp");
        assert_eq!(
            command_line(&cmd),
            "cd /tmp && exec env CUTOVER_JOB=api make -C '/opt/x y' start"
        );
    }

    #[test]
    fn line_round_trips_through_sh() {
        let nasty = "a 'b' \"c\" $d `e` \\f";
        let cmd = Command::new(["printf", "%s", nasty]).env("X", nasty);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(command_line(&cmd))
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), nasty);
    }
}
