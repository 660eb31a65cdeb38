//! The files `cutover init` writes: a bare project, or with `--example` a
//! working one: two jobs (`cache`, then `hello` which depends on it) on
//! three workers that are directories on this machine.

pub const GITIGNORE: &str = ".cutover/\nlocal-workers/\n";

pub const PROJECT: &str = r#"# cutover project settings. See `cutover --help`.
name = "NAME"
main_branch = "main"
remote = "origin"

[ssh]
# user = "deploy"
# identity_file = "~/.ssh/deploy_ed25519"
known_hosts = "strict"
"#;

pub const WORKERS_EMPTY: &str = r#"# The fleet. One [[worker]] per server:
#
# [[worker]]
# name = "web-1"
# host = "10.0.0.11"
# labels = ["web"]
# root = "/opt/cutover"
"#;

pub const WORKERS_EXAMPLE: &str = r#"# Three workers on this machine: transport = "local" needs no ssh, and a
# relative root is inside the project. Real workers have host = "..." and
# are reached over ssh.
[[worker]]
name = "local-1"
transport = "local"
root = "local-workers/local-1"
labels = ["web", "cache"]

[[worker]]
name = "local-2"
transport = "local"
root = "local-workers/local-2"
labels = ["web"]

[[worker]]
name = "local-3"
transport = "local"
root = "local-workers/local-3"
labels = ["web"]
"#;

pub const CACHE_JOB: &str = r#"version = "1.0.0"
selectors = ["cache"]
# A changed file reloads the service; a changed bin/ file restarts it.
restart_policy = "reload"
restart_globs = ["bin/**"]

# A ticket release backs up the service's data before changing anything;
# `cutover release revert` restores it.
[backup]
command = "make -s backup"
restore = "make -s restore BACKUP={{ backup.id }}"

[health]
command = "make health"
attempts = 10
interval = "200ms"
"#;

pub const HELLO_JOB: &str = r#"version = "1.0.0"
selectors = ["web"]
depends_on = ["cache"]
# Upgrades roll one worker at a time.
max_concurrent_upgrades = 1
on_failure = "revert"

[health]
command = "make health"
attempts = 10
interval = "200ms"
"#;

/// Lifecycle targets: each records what it did in the job's shared dir,
/// which survives releases, the way a real service keeps its data there.
pub const MAKEFILE: &str = "# Run by cutover in the release dir (`current`) on each worker.
# CUTOVER_SHARED survives releases; CUTOVER_RELEASE names this one.
start:
\t@echo \"start $(CUTOVER_RELEASE) $(NEW_VERSION)\" >> \"$(CUTOVER_SHARED)/events.log\"
\t@echo running > \"$(CUTOVER_SHARED)/state\"

restart:
\t@echo \"restart $(CUTOVER_RELEASE) $(CURRENT_VERSION) -> $(NEW_VERSION)\" >> \"$(CUTOVER_SHARED)/events.log\"
\t@echo running > \"$(CUTOVER_SHARED)/state\"

reload:
\t@echo \"reload $(CUTOVER_RELEASE)\" >> \"$(CUTOVER_SHARED)/events.log\"

stop:
\t@echo \"stop $(CUTOVER_RELEASE)\" >> \"$(CUTOVER_SHARED)/events.log\"
\t@echo stopped > \"$(CUTOVER_SHARED)/state\"

health:
\t@grep -qx running \"$(CUTOVER_SHARED)/state\"

# The last line a backup prints is its id.
backup:
\t@id=backup-$$(date +%Y%m%d_%H%M%S_%N); cp \"$(CUTOVER_SHARED)/state\" \"$(CUTOVER_SHARED)/$$id\"; echo $$id

restore:
\t@cp \"$(CUTOVER_SHARED)/$(BACKUP)\" \"$(CUTOVER_SHARED)/state\"

.PHONY: start restart reload stop health backup restore
";

pub const CACHE_SETTINGS: &str = "max_entries = 1000\n";

pub const HELLO_TEMPLATE: &str = "Hello from {{ worker.name }}: {{ job.name }} {{ job.version }}\n";
