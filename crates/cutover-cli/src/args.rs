//! The command line: every command, flag and its help. Parsing only; no I/O.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use cutover_engine::app::env as env_vars;

#[derive(Debug, Parser)]
#[command(
    name = "cutover",
    version,
    about = "Ship changes from a git repository to the servers that run them, safely.",
    long_about = "Ship changes from a git repository to the servers that run them, safely.\n\n\
        cutover pushes each job of a project (jobs/<job>/) to the workers of workers.toml over SSH, \
        in dependency waves and rolling batches, with lifecycle targets (make start|restart|reload|stop), \
        hooks, health checks and content-hash skip detection.\n\n\
        Start with `cutover init DIR --example`, then `cutover check` and `cutover deploy --dry-run`. \
        `cutover demo` shows the whole flow on this machine.",
    after_help = "Exit codes: 0 success, 1 the operation failed, 2 bad input, 3 project lock held, \
        4 verification refused (drift, a release index or artifact), 5 nothing to release, \
        130/143 interrupted by SIGINT/SIGTERM (in-flight steps finished, the run recorded). \
        `cutover serve` answers the same codes as HTTP statuses: 200, 500, 400, 409, 422."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The project directory (default: the first directory at or above the current one with a cutover.toml).
    #[arg(long, global = true, env = env_vars::CUTOVER_PROJECT, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Print one JSON document instead of text; its outcome agrees with the exit code.
    #[arg(long, global = true)]
    pub json: bool,
    /// Progress: a live view per host on a terminal (auto); plain lines (never);
    /// `always` also prints every per-host step when not on a terminal.
    #[arg(long, global = true, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a project: cutover.toml, workers.toml, jobs/ (with --example: a working example on local workers).
    Init(InitArgs),
    /// Validate cutover.toml, workers.toml and every job.toml; report each problem with file:line:column.
    Check,
    /// Deploy the working tree to the fleet: plan, reconcile, waves, rolling batches.
    Deploy(DeployArgs),
    /// Classify what changed between two revisions and show what a deploy would do.
    Plan(PlanArgs),
    /// Ticket releases: prepare, migrate, ticket script, verify; revert; resume.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Recovery playbooks: what to do when a release fails a known way.
    #[command(subcommand)]
    Playbook(PlaybookCommand),
    /// Each allocation: promoted version and hash, live health and drift, last change.
    Status(StatusArgs),
    /// Compare each worker's files with what is promoted; exit 4 if any differ.
    Drift(JobsFilter),
    /// Run lifecycle targets outside a deploy.
    #[command(subcommand)]
    Job(JobCommand),
    /// Each allocation's log, each line prefixed with its worker: the job's
    /// `logs` Makefile target (it sees LINES and FOLLOW), else the files
    /// under shared/logs/.
    Logs(LogsArgs),
    /// Print the project's workers, jobs, allocations, deployments or KV entries.
    Cat(CatArgs),
    /// The per-job key/value store that templates read as `kv.KEY`.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Who can read the project's secrets: each operator's public key wraps
    /// the key the secrets are encrypted with (envelope encryption, age).
    #[command(
        subcommand,
        after_help = "A team starts with one operator, then adds the others:
  cutover secrets identity                  # your public key (age1...)
  cutover secrets add-operator ana age1...  # the first operator is you
  cutover secrets add-operator bo age1...   # bo's `cutover secrets identity`
Until the first operator is added, secrets are under .cutover/secret.key."
    )]
    Secrets(SecretsCommand),
    /// The project lock that keeps deploys from running at the same time.
    #[command(subcommand)]
    Lock(LockCommand),
    /// The state store: rebuild it from what the workers carry.
    #[command(subcommand)]
    State(StateCommand),
    /// Build a job, pack it as a deterministic tar.zst and add it to the
    /// job's signed release index in the store ([store] url).
    Publish(PublishArgs),
    /// Release channels of published jobs: canary a version, promote it to
    /// stable, roll stable back, renew an index's expiry, show each job's
    /// channels and what each worker runs.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Signing keys for release indexes: make a key pair, list the trusted keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The production checklist: each item ✓ or ✗ with what fixes it; exit 1
    /// if any ✗. Also warns about release indexes near expiry.
    Doctor,
    /// The admin UI (/_admin), the JSON API (/api) and the release store
    /// (/store) of this project, until Ctrl-C or SIGTERM. Needs an admin
    /// token (CUTOVER_ADMIN_TOKEN, _FILE or CUTOVER_ADMIN_TOKENS_FILE);
    /// serves plain HTTP on loopback only, unless --tls-cert/--tls-key or
    /// --insecure-http.
    #[command(after_help = "Examples:
  CUTOVER_ADMIN_TOKEN=$(cat ~/.cutover-admin-token) cutover serve
  cutover serve --listen 0.0.0.0:7878 --tls-cert cert.pem --tls-key key.pem
Then open http://127.0.0.1:7878/_admin and sign in with the token; automation
calls /api/... with `Authorization: Bearer TOKEN`.")]
    Serve(ServeArgs),
    /// Certificates of jobs with [certs], from the project CA.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Workers the store remembers: forget one removed from workers.toml.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Deploy an example project to three local workers, change it, redeploy, and clean up.
    Demo,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to create the project (default: the current directory).
    pub dir: Option<PathBuf>,
    /// Add a working example: two jobs on three local workers.
    #[arg(long)]
    pub example: bool,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Only these jobs (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "JOB,...")]
    pub jobs: Option<Vec<String>>,
    /// Print the exact plan (wave, job, worker, action, why, batch) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Roll out even allocations whose content and version are unchanged.
    #[arg(long)]
    pub force: bool,
    /// Upload and switch releases without running lifecycle targets.
    #[arg(long)]
    pub sync_only: bool,
    /// Also compare allocations the state store calls unchanged with their
    /// workers (one connection each) and roll out any that differ.
    #[arg(long)]
    pub verify: bool,
    /// Also delete the shared/ data (and, for a removed job, the KV) of the
    /// allocations this deploy stops. Without it they are kept until
    /// `cutover job purge JOB`.
    #[arg(long)]
    pub purge_data: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Compare REV with HEAD (default: the commit of the last deployment).
    #[arg(long, value_name = "REV", conflicts_with = "incoming")]
    pub diff: Option<String>,
    /// Compare HEAD with BRANCH (not checked out): what merging it would deploy.
    #[arg(long, value_name = "BRANCH")]
    pub incoming: Option<String>,
    /// Fail (exit 1) when a changed file belongs to no class.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    Prepare,
    Migrate,
    Ticket,
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Release what TICKET merged: prepare, migrate, ticket, verify; halt on the first failure.
    Run {
        ticket: String,
        /// Release this branch instead of main (a hotfix; needs --force-allow-non-main).
        branch: Option<String>,
        /// Preview every phase; change nothing (no pull, no backup, no state file).
        #[arg(long)]
        dry_run: bool,
        /// Resume from PHASE, reusing the state file's BASE_SHA, MERGE_SHA, SERVICES and BACKUPS.
        #[arg(long, value_enum, value_name = "PHASE")]
        from: Option<PhaseArg>,
        /// Skip prepare (audited).
        #[arg(long)]
        skip_prepare: bool,
        /// Skip migrate (audited).
        #[arg(long)]
        skip_migrate: bool,
        /// Skip the ticket script (audited).
        #[arg(long)]
        skip_ticket: bool,
        /// Skip verify (audited; not recommended).
        #[arg(long)]
        skip_verify: bool,
        /// Allow releasing a branch other than main_branch (hotfix releases).
        #[arg(long)]
        force_allow_non_main: bool,
        /// Refuse (exit 2, the clone put back) when the merge changed files
        /// that belong to no job; without it they are listed as a warning.
        #[arg(long)]
        strict: bool,
    },
    /// Put back what a release changed: restore its backups, switch services back, revert git.
    Revert {
        ticket: String,
        /// Leave git alone (e.g. a hotfix branch has no merge commit to revert).
        #[arg(long)]
        skip_git: bool,
        /// Restore no backup (you almost never want this).
        #[arg(long)]
        skip_data: bool,
        /// Commit the git revert but do not push it (the next release
        /// refuses to start until it is pushed).
        #[arg(long)]
        no_push: bool,
    },
    /// The state file, the last audit events, and where the release stands.
    State { ticket: String },
    /// After a hotfix release: check out main, fast-forward, deploy, verify clean.
    ReturnToMain,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub job: String,
    /// Only these workers (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "W,...")]
    pub workers: Option<Vec<String>>,
    /// Lines from the end of each log.
    #[arg(short = 'n', long, default_value_t = 100, value_name = "N")]
    pub lines: usize,
    /// Keep printing new lines as they come, until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only these jobs (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "JOB,...")]
    pub jobs: Option<Vec<String>>,
    /// Run no health check: show the health recorded at the last deploy.
    /// (Drift is still checked, by one listing per allocation.)
    #[arg(long)]
    pub no_health: bool,
}

#[derive(Debug, Args)]
pub struct JobsFilter {
    /// Only these jobs (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "JOB,...")]
    pub jobs: Option<Vec<String>>,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Run `make TARGET` in the job's current release on its workers.
    Run {
        job: String,
        /// The Makefile target, e.g. reload.
        #[arg(long)]
        target: String,
        /// Only these workers (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "W,...")]
        workers: Option<Vec<String>>,
    },
    /// Delete what a stopped job left: the shared/ data of each stopped
    /// allocation and, for a job removed from the project, its KV.
    Purge {
        job: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct CatArgs {
    pub what: CatWhat,
    /// Only these jobs (comma-separated), where it applies.
    #[arg(long, value_delimiter = ',', value_name = "JOB,...")]
    pub jobs: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CatWhat {
    Workers,
    Jobs,
    Allocations,
    Deployments,
    Kv,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print one value (a secret only with --reveal).
    Get {
        job: String,
        key: String,
        #[arg(long)]
        reveal: bool,
    },
    /// Set a value. With --secret it is encrypted at rest and never printed.
    /// Give VALUE as `-` to read it from standard input (keeps it out of shell history).
    Put {
        job: String,
        key: String,
        value: String,
        #[arg(long)]
        secret: bool,
    },
    /// List a job's keys (or every job's); secrets show as <secret> unless --reveal.
    List {
        job: Option<String>,
        #[arg(long)]
        reveal: bool,
    },
    /// Delete a key.
    Delete { job: String, key: String },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Print your public key (age1...), making your identity first if you
    /// have none: .cutover/identity.key (0600), or CUTOVER_IDENTITY_FILE.
    /// Give the public key to an operator; keep the file private and backed up.
    Identity,
    /// The operators who can read the secrets.
    Operators,
    /// Let NAME read the secrets: wrap the data key for PUBKEY (their
    /// `cutover secrets identity`, or an `age-keygen` public key). The
    /// first operator must be you: the secrets then move from
    /// .cutover/secret.key to a data key.
    AddOperator {
        /// Who they are, for lists and removal: letters, digits, _ - . @
        name: String,
        /// Their age public key (age1...), never the private one.
        #[arg(value_name = "PUBKEY")]
        pubkey: String,
    },
    /// Stop NAME from reading the secrets: every secret is re-encrypted
    /// under a new data key, wrapped for the other operators only. (What
    /// NAME read before stays known to them: change those values too.) An
    /// operator is removed by another, never by themselves.
    RemoveOperator {
        /// The operator, as `cutover secrets operators` lists them.
        name: String,
    },
    /// Re-encrypt every secret under a new data key, wrapped for the same
    /// operators.
    RotateKey,
}

#[derive(Debug, Subcommand)]
pub enum PlaybookCommand {
    /// Every playbook under recovery/playbooks/.
    List,
    /// The playbooks that fit TICKET's last failure (its phase and output).
    Match { ticket: String },
    /// Run playbook ID's detection commands and say whether it applies now.
    Check { id: String },
    /// Write a playbook template to recovery/playbooks/ID.yaml.
    New { id: String },
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds the project lock, if anyone.
    Status,
    /// Clear the lock record left by a process that is gone. With
    /// PostgreSQL, also end a live lock that is your own (same user and
    /// host): its run stops at its next step and changes nothing more.
    Release {
        /// End another operator's live lock (PostgreSQL; audited).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    pub job: String,
    /// The channel that points at the new version: stable (only for a job
    /// without [canary], or its first version) or canary.
    #[arg(long, default_value = "stable", value_name = "CHANNEL")]
    pub channel: String,
    /// A private key to sign the index with (repeatable, for a threshold
    /// above one); else CUTOVER_SIGNING_KEY_FILE.
    #[arg(long = "key", value_name = "FILE")]
    pub keys: Vec<PathBuf>,
    /// Point stable at a new version of a job with [canary] (audited).
    #[arg(long)]
    pub force: bool,
    /// Why (recorded in the index).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// The ticket it ships (recorded in the index).
    #[arg(long, default_value = "")]
    pub ticket: String,
}

/// What a channel update records, in the index and the audit log.
#[derive(Debug, Args)]
pub struct ChannelChange {
    /// The published job.
    pub job: String,
    /// The published version.
    #[arg(long, value_name = "V")]
    pub version: String,
    /// Who asks (default: the operator, CUTOVER_USER or USER).
    #[arg(long, value_name = "A")]
    pub actor: Option<String>,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "", value_name = "R")]
    pub reason: String,
    /// The ticket it concerns (recorded in the audit log).
    #[arg(long, default_value = "", value_name = "T")]
    pub ticket: String,
    /// A private key to sign the index with (repeatable, for a threshold
    /// above one); else CUTOVER_SIGNING_KEY_FILE.
    #[arg(long = "key", value_name = "FILE")]
    pub keys: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:7878", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// The TLS certificate chain (PEM), to serve HTTPS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (only behind a TLS proxy
    /// on this machine: tokens and cookies would cross the network in the
    /// clear otherwise).
    #[arg(long)]
    pub insecure_http: bool,
}

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Point canary at V (a signed index update) and deploy V to the job's
    /// canary workers ([canary] selectors, or the first `count`); the soak
    /// starts once every canary allocation is promoted and healthy.
    /// Exit 3 while another command holds the project lock, 4 if the
    /// index or V's artifact does not verify.
    #[command(after_help = "Example:
  cutover publish api --channel canary --key ~/.cutover-keys/cutover-signing.key
  cutover channel canary api --version 1.1.0 --key ~/.cutover-keys/cutover-signing.key --reason 'try it'

To end a canary: cutover channel rollback api --version <stable>")]
    Canary(ChannelChange),
    /// Point stable at V, the canary, once its soak is over and every
    /// canary worker runs V and is healthy now; then roll V out to every
    /// allocation in the job's batches, with its health checks and
    /// on_failure.
    Promote {
        #[command(flatten)]
        change: ChannelChange,
        /// Promote before the soak is over (audited).
        #[arg(long)]
        force: bool,
    },
    /// Point stable at an earlier published V, clear canary, and roll V out
    /// everywhere in batches with health checks.
    Rollback(ChannelChange),
    /// Renew a job's index: the same channels and versions, seq + 1, a new
    /// expiry ([trust] index_lifetime from now).
    Resign {
        /// The published job.
        job: String,
        /// Accept an index older than the highest seq this project has
        /// seen (a store restored from a backup on purpose), and re-sign it
        /// above that seq (audited).
        #[arg(long)]
        allow_rollback: bool,
        /// Accept an expired index (it may be an old one replayed: check it
        /// with `cutover channel status JOB` first) and renew it (audited).
        #[arg(long)]
        allow_expired: bool,
        /// A private key to sign the index with (repeatable); else
        /// CUTOVER_SIGNING_KEY_FILE.
        #[arg(long = "key", value_name = "FILE")]
        keys: Vec<PathBuf>,
    },
    /// Each published job's channels, versions, seq, expiry and signature
    /// validity, and what each worker runs against its channel. Exit 4 if
    /// an index fails verification.
    Status {
        /// Only this job.
        job: Option<String>,
        /// Read the indexes from this store instead of [store] url.
        #[arg(long, value_name = "URL")]
        index_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new ed25519 key pair into DIR (cutover-signing.key, 0600, and
    /// cutover-signing.pub) and print its key id (the hex SHA-256 of the
    /// public key). Existing key files are never overwritten. Keep the
    /// private key out of the project tree.
    Generate {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// The keys this project trusts ([trust] public_keys,
    /// CUTOVER_TRUST_PUBLIC_KEYS_PATH, CUTOVER_TRUST_PUBLIC_KEYS_JSON) and the
    /// threshold of distinct keys that must sign, and which of them signed
    /// each published job's current index.
    List,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Each certificate (and the CA): its expiry, days left, SANs, and
    /// whether the next deploy renews it (under a third of its validity left).
    List,
}

#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// Drop the records of a worker removed from workers.toml that could
    /// not be reached to stop its allocations (an orphan, warned about by
    /// every deploy and by status). Nothing on the machine is touched:
    /// deal with it first.
    Forget { name: String },
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Rebuild the store's allocation records from what each worker carries
    /// (`<root>/jobs/<job>/promoted.json`, written at every promotion): after
    /// a lost or damaged .cutover/state.db, nothing is redeployed. Records
    /// the store still has are kept.
    Rebuild,
    /// Copy this project's store into an empty one, under the project
    /// lock, then read the copy back and compare every row. Nothing is
    /// switched: change [state] (and CUTOVER_STATE_URL) once it says
    /// verified. The embedded store's release files and audit log go too.
    Migrate {
        /// The store to copy into: postgres://USER:PASSWORD@HOST:PORT/DB
        /// (an empty database), or sqlite:PATH (a state.db file).
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    const REFERENCE: &str = include_str!("../../../docs/reference.md");

    /// The text under `heading` (a line starting with it) up to the next
    /// heading of the same or a higher level.
    fn section(heading: &str) -> Option<String> {
        let level = heading.chars().take_while(|c| *c == '#').count();
        let mut lines = REFERENCE.lines().skip_while(|l| !l.starts_with(heading));
        let first = lines.next()?;
        let body = lines.take_while(|l| {
            let h = l.chars().take_while(|c| *c == '#').count();
            h == 0 || h > level
        });
        Some(
            std::iter::once(first)
                .chain(body)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    fn leaves(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        let subs: Vec<_> = cmd
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .collect();
        if subs.is_empty() {
            out.push((path.clone(), cmd.clone()));
        }
        for s in subs {
            leaves(s, format!("{path} {}", s.get_name()), out);
        }
    }

    /// Every command has a heading of its own in docs/reference.md, and
    /// every flag it takes is named under that heading; every global flag
    /// and environment variable is in its table. A command or flag added
    /// without its documentation fails here.
    #[test]
    fn every_command_flag_and_variable_is_in_the_reference() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        let globals = section("## Global options").expect("a Global options section");
        let env = section("## Environment variables").expect("an Environment variables section");
        for arg in cli.get_arguments() {
            if let Some(long) = arg.get_long() {
                if !globals.contains(&format!("`--{long}")) {
                    missing.push(format!("global flag --{long}"));
                }
            }
        }
        let mut all = Vec::new();
        leaves(&cli, "cutover".into(), &mut all);
        for (path, cmd) in &all {
            let Some(text) = section(&format!("### `{path}")) else {
                missing.push(format!("a `### `{path}` heading"));
                continue;
            };
            for arg in cmd.get_arguments().filter(|a| !a.is_global_set()) {
                if let Some(long) = arg.get_long() {
                    if !text.contains(&format!("--{long}")) {
                        missing.push(format!("{path} --{long}"));
                    }
                }
            }
        }
        let mut walk = vec![cli.clone()];
        while let Some(c) = walk.pop() {
            for arg in c.get_arguments() {
                if let Some(var) = arg.get_env() {
                    let var = var.to_string_lossy();
                    if !env.contains(&format!("`{var}`")) {
                        missing.push(format!("environment variable {var}"));
                    }
                }
            }
            walk.extend(c.get_subcommands().cloned());
        }
        assert!(
            missing.is_empty(),
            "docs/reference.md does not document:\n  {}",
            missing.join("\n  ")
        );
    }
}
