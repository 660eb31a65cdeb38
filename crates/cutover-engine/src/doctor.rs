//! `cutover doctor`: the production checklist. Each item passes or fails
//! with what fixes it; warnings (an index near expiry) do not fail it.

use std::time::Duration;

use serde::Serialize;

use crate::fleet::Fleet;
use crate::Context;

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub item: String,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// The command or setting that fixes it (when not ok, or a warning).
    pub fix: String,
    /// A warning only: shown, but it does not fail the checklist.
    pub warning: bool,
}

impl Item {
    pub fn pass(item: impl Into<String>, detail: impl Into<String>) -> Item {
        Item {
            item: item.into(),
            ok: true,
            detail: detail.into(),
            fix: String::new(),
            warning: false,
        }
    }

    pub fn fail(
        item: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Item {
        Item {
            item: item.into(),
            ok: false,
            detail: detail.into(),
            fix: fix.into(),
            warning: false,
        }
    }
}

/// What the environment says of the admin server (read by the CLI).
#[derive(Debug, Clone, Default)]
pub struct AdminEnv {
    /// CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN=1.
    pub unauthenticated: bool,
    /// Which of CUTOVER_ADMIN_TOKEN, _TOKEN_FILE, _TOKENS_FILE is set.
    pub token_source: Option<String>,
    /// Why `cutover serve` would refuse the token(s) set, if it would.
    pub token_problem: Option<(String, String)>,
}

/// The checklist items that need no project.
pub fn environment(ctx_env: &crate::keys::TrustEnv, admin: &AdminEnv) -> Vec<Item> {
    let mut out = Vec::new();
    out.push(if ctx_env.production {
        Item::pass("CUTOVER_ENV=production", "set")
    } else {
        Item::fail(
            "CUTOVER_ENV=production",
            "not set: production safeguards are off",
            "export CUTOVER_ENV=production on the machines that release to production",
        )
    });
    out.push(if ctx_env.insecure_dev_keys {
        Item::fail(
            "insecure dev keys not enabled",
            "CUTOVER_ALLOW_INSECURE_DEV_KEYS=1: indexes are signed with a key kept in .cutover/",
            "unset CUTOVER_ALLOW_INSECURE_DEV_KEYS and sign with --key FILE (cutover keys generate)",
        )
    } else {
        Item::pass("insecure dev keys not enabled", "CUTOVER_ALLOW_INSECURE_DEV_KEYS is unset")
    });
    out.push(if admin.unauthenticated {
        Item::fail(
            "unauthenticated admin not enabled",
            "CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN=1",
            "unset CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN",
        )
    } else {
        Item::pass(
            "unauthenticated admin not enabled",
            "CUTOVER_ALLOW_UNAUTHENTICATED_ADMIN is unset",
        )
    });
    out.push(match (&admin.token_source, &admin.token_problem) {
        (Some(_), Some((why, fix))) => Item::fail("admin auth configured", why.clone(), fix.clone()),
        (Some(s), None) => Item::pass("admin auth configured", format!("{s} is set")),
        (None, _) => Item::fail(
            "admin auth configured",
            "no admin token",
            "set CUTOVER_ADMIN_TOKEN_FILE to a 0600 file holding a long random token (or CUTOVER_ADMIN_TOKENS_FILE)",
        ),
    });
    out
}

/// The items that need the project: trusted keys, the state store, every
/// worker, the git remote, and the release indexes.
pub async fn project(ctx: &Context) -> Vec<Item> {
    let mut out = Vec::new();
    out.push(match crate::keys::trust(ctx) {
        Ok(t) if crate::keys::trust_configured(ctx) => {
            Item::pass(
                "trusted keys configured",
                format!("{} key(s), threshold {}", t.keys.len(), t.threshold),
            )
        }
        Ok(_) => Item::fail(
            "trusted keys configured",
            "no trusted keys",
            "cutover keys generate --out ~/.cutover-keys, then [trust] public_keys = [\"keys/release.pub\"] with its .pub copied into the project",
        ),
        Err(e) => Item::fail("trusted keys configured", e.to_string(), "fix [trust] in cutover.toml"),
    });
    out.push(match ctx.store.meta_get("doctor_probe").await {
        Ok(_) => Item::pass(
            "state backend reachable, at this cutover's schema",
            format!(
                "the state store at {} answers, its schema migrations applied",
                ctx.store.location()
            ),
        ),
        Err(e) => Item::fail(
            "state backend reachable, at this cutover's schema",
            e.to_string(),
            "check [state] in cutover.toml and that .cutover/ is writable",
        ),
    });
    out.push(secrets(ctx).await);
    out.extend(workers(ctx).await);
    out.push(git_remote(ctx).await);
    out.extend(indexes(ctx).await);
    out
}

/// Whether this operator can open the stored secrets (a deploy renders
/// them): with the project key file, or as one of the operators.
async fn secrets(ctx: &Context) -> Item {
    const ITEM: &str = "secrets readable by you";
    match crate::kv::read(ctx, None, crate::kv::Open::IfSecrets).await {
        Ok(ring) => match ring.key {
            Some(key) => Item::pass(ITEM, format!("they open with {}", key.source)),
            None => Item::pass(ITEM, "no secret is stored"),
        },
        Err(e) => Item::fail(
            ITEM,
            e.to_string(),
            e.help()
                .unwrap_or_else(|| "see `cutover secrets operators`".into()),
        ),
    }
}

/// Every enabled worker: reachable, with make (and rsync over ssh).
async fn workers(ctx: &Context) -> Vec<Item> {
    let workers: Vec<cutover_model::Worker> = ctx
        .project
        .workers
        .iter()
        .filter(|w| !w.disabled)
        .cloned()
        .collect();
    if workers.is_empty() {
        return vec![Item::fail(
            "workers reachable",
            "workers.toml has no enabled worker",
            "add [[worker]] entries to workers.toml",
        )];
    }
    let fleet = match Fleet::connect(ctx, workers.clone()).await {
        Ok(f) => f,
        Err(e) => {
            return vec![Item::fail(
                "workers reachable",
                e.to_string(),
                "check [ssh] in cutover.toml",
            )]
        }
    };
    let checks = crate::join::join_all(workers.iter().map(|w| {
        let fleet = &fleet;
        async move {
            let item = if ctx.project.config.worker_fetch {
                format!(
                    "worker {} reachable with sshd, rsync, make and what worker_fetch needs",
                    w.name
                )
            } else {
                format!("worker {} reachable with sshd, rsync and make", w.name)
            };
            let host = match fleet.get(&w.name) {
                Ok(h) => h,
                Err(e) => {
                    return Item::fail(
                        item,
                        e,
                        format!(
                            "check that sshd runs on {} and that `ssh {}` works without a prompt",
                            w.host, w.host
                        ),
                    )
                }
            };
            let local = w.transport == cutover_model::config::TransportKind::Local;
            let mut tools: Vec<&str> = if local {
                vec!["make"]
            } else {
                vec!["rsync", "make"]
            };
            if ctx.project.config.worker_fetch {
                // It downloads, checks and unpacks artifacts itself.
                tools.extend(["curl", "sha256sum", "zstd", "tar"]);
            }
            let script = tools
                .iter()
                .map(|t| format!("command -v {t} >/dev/null || echo {t}"))
                .collect::<Vec<_>>()
                .join("; ");
            let mut cmd = cutover_transport::Command::shell(&script);
            cmd.timeout = Duration::from_secs(30);
            match host.run(&cmd).await {
                Ok(o) if o.success() && o.stdout.trim().is_empty() => {
                    Item::pass(item, tools.join(", ") + " found")
                }
                Ok(o) => Item::fail(
                    item,
                    format!(
                        "missing: {}",
                        o.stdout.split_whitespace().collect::<Vec<_>>().join(", ")
                    ),
                    format!("install them on {}", w.name),
                ),
                Err(e) => Item::fail(item, e.to_string(), format!("check {}", w.name)),
            }
        }
    }))
    .await;
    fleet.close().await;
    checks
}

/// The git remote answers `git ls-remote`, within 20 seconds.
async fn git_remote(ctx: &Context) -> Item {
    let remote = &ctx.project.config.remote;
    let item = format!("git remote `{remote}` reachable");
    let run = tokio::process::Command::new("git")
        .args(["ls-remote", "--exit-code", "--heads", "--", remote])
        .current_dir(&ctx.project.root)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(o)) if o.status.success() => Item::pass(item, "it answers"),
        Ok(Ok(o)) => Item::fail(
            item,
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("git ls-remote failed")
                .to_string(),
            format!("git remote add {remote} URL (or fix its URL), and check the credentials"),
        ),
        Ok(Err(e)) => Item::fail(item, format!("cannot run git: {e}"), "install git"),
        Err(_) => Item::fail(
            item,
            "no answer in 20 s",
            "check the network path to the remote",
        ),
    }
}

/// Each published job's index verifies; one near expiry is a warning.
async fn indexes(ctx: &Context) -> Vec<Item> {
    if ctx.project.config.store_url.is_none() {
        return Vec::new();
    }
    let status = match crate::channel::status::status(ctx, None, None).await {
        Ok(s) => s,
        Err(e) => {
            return vec![Item::fail(
                "release store readable",
                e.to_string(),
                "check [store] url",
            )]
        }
    };
    let mut out = Vec::new();
    for j in status.jobs {
        let item = format!("release index of {} valid", j.job);
        if let Some(why) = j.refused {
            out.push(Item::fail(
                item,
                why,
                format!("cutover channel status {}", j.job),
            ));
            continue;
        }
        match j.expiry_warning {
            Some(w) => out.push(Item {
                item,
                ok: true,
                detail: w,
                fix: format!("cutover channel resign {}", j.job),
                warning: true,
            }),
            None => out.push(Item::pass(
                item,
                format!(
                    "seq {}, expires {}",
                    j.seq.unwrap_or(0),
                    j.expires.unwrap_or_default()
                ),
            )),
        }
    }
    out
}
