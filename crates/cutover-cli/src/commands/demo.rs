//! `cutover demo`: the deploy flow on this machine, in seconds, with no
//! setup: an example project on three local workers, a first deploy, a
//! one-file change that reloads one allocation and skips the rest, status,
//! drift; then ticket releases through a real git remote: one that
//! completes, one whose data migration breaks the service, and its revert;
//! then release channels: publish, a canary, a promotion and a rollback.

use std::path::Path;

use super::{channel, deploy, inspect, release, Session};
use crate::args::{
    ChannelChange, ChannelCommand, DeployArgs, Global, Progress, PublishArgs, ReleaseCommand,
};
use cutover_engine::EngineError;

fn step(title: &str) {
    println!();
    println!("==> {title}");
}

pub async fn run(g: &Global) -> Result<u8, EngineError> {
    let tmp = tempfile::Builder::new()
        .prefix("cutover-demo-")
        .tempdir()
        .map_err(|e| {
            EngineError::usage(
                format!("cannot create a temporary directory: {e}"),
                "set TMPDIR to a writable directory",
            )
        })?;
    let dir = tmp.path().join("shop");
    let g = Global {
        project: Some(dir.clone()),
        json: false,
        progress: if g.progress == Progress::Always {
            Progress::Always
        } else {
            Progress::Never
        },
    };
    println!(
        "cutover demo: a project in {} with three local workers",
        dir.display()
    );

    step("cutover init shop --example");
    for f in super::init::scaffold(&dir, true)? {
        println!("created {}", f.display());
    }

    step("cutover check");
    inspect::check(&g)?;

    let deploy_args = |dry_run| DeployArgs {
        jobs: None,
        dry_run,
        force: false,
        sync_only: false,
        verify: false,
        purge_data: false,
    };
    step("cutover deploy --dry-run   (the plan; nothing changes)");
    let s = Session::open_at(&dir, &g, "deploy").await?;
    deploy::run(&s, deploy_args(true)).await?;

    step("cutover deploy   (wave 1: cache; wave 2: hello, which depends on it)");
    let rc = deploy::run(&s, deploy_args(false)).await?;
    if rc != 0 {
        return Ok(rc);
    }
    let greeting = dir.join("local-workers/local-2/jobs/hello/current/greeting.txt");
    if let Ok(text) = std::fs::read_to_string(&greeting) {
        println!(
            "local-2 has jobs/hello/current/greeting.txt: {}",
            text.trim()
        );
    }

    step("edit jobs/cache/settings.txt, then cutover deploy   (one reload, the rest unchanged)");
    std::fs::write(dir.join("jobs/cache/settings.txt"), "max_entries = 5000\n")
        .map_err(|e| EngineError::usage(format!("cannot edit the example: {e}"), "check TMPDIR"))?;
    let rc = deploy::run(&s, deploy_args(false)).await?;
    if rc != 0 {
        return Ok(rc);
    }

    step("cutover deploy   (nothing changed: no worker is touched)");
    deploy::run(&s, deploy_args(false)).await?;

    step("cutover status");
    inspect::status(
        &s,
        crate::args::StatusArgs {
            jobs: None,
            no_health: false,
        },
    )
    .await?;

    step("edit a file by hand on local-3, then cutover drift");
    let _ = std::fs::write(
        dir.join("local-workers/local-3/jobs/hello/current/greeting.txt"),
        "edited by hand\n",
    );
    let rc = inspect::drift(&s, None).await?;
    println!("(exit code {rc}: drift found)");

    step("cutover deploy --force --jobs hello   (puts the promoted content back)");
    let mut force = deploy_args(false);
    force.force = true;
    force.jobs = Some(vec!["hello".into()]);
    deploy::run(&s, force).await?;
    inspect::drift(&s, None).await?;

    release_demo(&dir, tmp.path(), &g).await?;
    channels_demo(&dir, tmp.path(), &g).await?;

    s.ctx.store.close().await;
    step("cleanup");
    println!("removed {}", tmp.path().display());
    drop(tmp);
    Ok(0)
}

fn git(dir: &Path, args: &[&str]) -> Result<String, EngineError> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| {
            EngineError::usage(
                format!("cannot run git: {e}"),
                "install git to see the release part of the demo",
            )
        })?;
    if !out.status.success() {
        return Err(EngineError::usage(
            format!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            "this is a bug in the demo; please report it",
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn identity(dir: &Path) -> Result<(), EngineError> {
    git(dir, &["config", "user.name", "cutover demo"])?;
    git(dir, &["config", "user.email", "demo@cutover.invalid"])?;
    Ok(())
}

/// A developer merges a branch into main and pushes it.
fn merge(dev: &Path, branch: &str, files: &[(&str, &str)]) -> Result<(), EngineError> {
    git(dev, &["checkout", "-q", "-b", branch])?;
    for (rel, text) in files {
        let path = dev.join(rel);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(&path, text)
            .map_err(|e| EngineError::usage(format!("cannot write {rel}: {e}"), "check TMPDIR"))?;
    }
    git(dev, &["add", "-A"])?;
    git(dev, &["commit", "-q", "-m", &format!("work on {branch}")])?;
    git(dev, &["checkout", "-q", "main"])?;
    git(
        dev,
        &[
            "merge",
            "-q",
            "--no-ff",
            "-m",
            &format!("Merge {branch}"),
            branch,
        ],
    )?;
    git(dev, &["push", "-q", "origin", "main"])?;
    Ok(())
}

fn run_args(ticket: &str) -> ReleaseCommand {
    ReleaseCommand::Run {
        ticket: ticket.into(),
        branch: None,
        dry_run: false,
        from: None,
        skip_prepare: false,
        skip_migrate: false,
        skip_ticket: false,
        skip_verify: false,
        force_allow_non_main: false,
        strict: false,
    }
}

async fn release_demo(project: &Path, tmp: &Path, g: &Global) -> Result<(), EngineError> {
    step("git: the project goes into a repository with a bare origin; a developer clones it");
    let origin = tmp.join("origin.git");
    git(
        tmp,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            origin.to_str().unwrap_or("origin.git"),
        ],
    )?;
    git(project, &["init", "-q", "-b", "main"])?;
    identity(project)?;
    git(project, &["add", "-A"])?;
    git(project, &["commit", "-q", "-m", "example project"])?;
    git(
        project,
        &[
            "remote",
            "add",
            "origin",
            origin.to_str().unwrap_or_default(),
        ],
    )?;
    git(project, &["push", "-q", "-u", "origin", "main"])?;
    let dev = tmp.join("dev");
    git(
        tmp,
        &["clone", "-q", origin.to_str().unwrap_or_default(), "dev"],
    )?;
    identity(&dev)?;
    println!(
        "origin: {}\ndeveloper clone: {}\ndeploy clone (where cutover runs): {}",
        origin.display(),
        dev.display(),
        project.display()
    );

    step("ticket 101 is merged: a new greeting; cutover release run 101");
    merge(
        &dev,
        "feat/101",
        &[(
            "jobs/hello/greeting.txt.tpl",
            "Hello again from {{ worker.name }}\n",
        )],
    )?;
    let s = Session::open_at(project, g, "release-run").await?;
    release::run(&s, run_args("101")).await?;
    println!("state file .cutover/releases/101.env:");
    print!(
        "{}",
        std::fs::read_to_string(project.join(".cutover/releases/101.env")).unwrap_or_default()
    );

    step("ticket 102 is merged: its data migration breaks the cache; cutover release run 102");
    merge(
        &dev,
        "feat/102",
        &[
            ("jobs/cache/settings.txt", "max_entries = 9000\n"),
            ("releases/102-migrate.sh", "#!/bin/sh\necho \"migrating cache data for $TICKET\"\necho corrupted > local-workers/local-1/jobs/cache/shared/state\n"),
        ],
    )?;
    let rc = release::run(&s, run_args("102")).await?;
    println!("(exit code {rc})");

    step("cutover release revert 102   (old release stopped, backup restored, switched back and started; merge reverted and pushed)");
    let s = Session::open_at(project, g, "release-revert").await?;
    release::run(
        &s,
        ReleaseCommand::Revert {
            ticket: "102".into(),
            skip_git: false,
            skip_data: false,
            no_push: false,
        },
    )
    .await?;
    println!("git log: {}", git(project, &["log", "-1", "--format=%s"])?);
    inspect::drift(&s, None).await?;
    release::run(
        &s,
        ReleaseCommand::State {
            ticket: "102".into(),
        },
    )
    .await?;
    let _ = s;
    Ok(())
}

/// Publishes `hello` to a file store, canaries a new version on one
/// worker, promotes it after its soak, and rolls back. The index is signed
/// with an insecure development key: a demo only.
async fn channels_demo(project: &Path, tmp: &Path, g: &Global) -> Result<(), EngineError> {
    step("release channels: a file store, and a development signing key (CUTOVER_ALLOW_INSECURE_DEV_KEYS=1: never in production)");
    let edit = |rel: &str, f: &dyn Fn(String) -> String| -> Result<(), EngineError> {
        let path = project.join(rel);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, f(text)).map_err(|e| {
            EngineError::usage(format!("cannot edit the example: {e}"), "check TMPDIR")
        })
    };
    let store = tmp.join("store");
    edit("cutover.toml", &|t| {
        format!("{t}\n[store]\nurl = \"file://{}\"\n", store.display())
    })?;
    edit("jobs/hello/job.toml", &|t| {
        format!("{t}\n[canary]\ncount = 1\nsoak = \"2s\"\n")
    })?;
    println!("cutover.toml: [store] url = \"file://{}\"", store.display());
    println!("jobs/hello/job.toml: [canary] count = 1, soak = \"2s\"");
    let open = |prefix| async move {
        let mut s = Session::open_at(project, g, prefix).await?;
        s.ctx.trust_env.insecure_dev_keys = true;
        s.ctx.trust_env.production = false;
        Ok::<_, EngineError>(s)
    };
    let publish = |channel: &str| PublishArgs {
        job: "hello".into(),
        channel: channel.into(),
        keys: Vec::new(),
        force: false,
        reason: "demo".into(),
        ticket: String::new(),
    };
    let change = |version: &str| ChannelChange {
        job: "hello".into(),
        version: version.into(),
        actor: None,
        reason: "demo".into(),
        ticket: String::new(),
        keys: Vec::new(),
    };

    step("cutover publish hello   (1.0.0: a deterministic tar.zst and a signed index; stable -> 1.0.0)");
    let s = open("publish").await?;
    inspect::publish(&s, publish("stable")).await?;

    step("cutover deploy   (hello now deploys from its verified artifact, not the working tree)");
    let s = open("deploy").await?;
    deploy::run(
        &s,
        DeployArgs {
            jobs: Some(vec!["hello".into()]),
            dry_run: false,
            force: false,
            sync_only: false,
            verify: false,
            purge_data: false,
        },
    )
    .await?;

    step("bump hello to 1.1.0, cutover publish hello --channel canary");
    edit("jobs/hello/job.toml", &|t| {
        t.replace("version = \"1.0.0\"", "version = \"1.1.0\"")
    })?;
    edit("jobs/hello/greeting.txt.tpl", &|_| {
        "Hello from {{ worker.name }}, version {{ job.version }}\n".into()
    })?;
    let s = open("publish").await?;
    inspect::publish(&s, publish("canary")).await?;

    step("cutover channel canary hello --version 1.1.0   (one worker runs 1.1.0; the soak starts)");
    let s = open("channel").await?;
    let rc = channel::run(&s, ChannelCommand::Canary(change("1.1.0"))).await?;
    if rc != 0 {
        return Ok(());
    }
    show_greetings(project);

    step("wait for the soak (2s), then cutover channel promote hello --version 1.1.0   (every worker, in batches, health-checked)");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    channel::run(
        &s,
        ChannelCommand::Promote {
            change: change("1.1.0"),
            force: false,
        },
    )
    .await?;
    show_greetings(project);

    step("cutover channel rollback hello --version 1.0.0");
    channel::run(&s, ChannelCommand::Rollback(change("1.0.0"))).await?;
    show_greetings(project);

    step("cutover channel status");
    channel::run(
        &s,
        ChannelCommand::Status {
            job: None,
            index_url: None,
        },
    )
    .await?;
    Ok(())
}

fn show_greetings(project: &Path) {
    for w in ["local-1", "local-2", "local-3"] {
        let path = project.join(format!("local-workers/{w}/jobs/hello/current/greeting.txt"));
        if let Ok(text) = std::fs::read_to_string(path) {
            println!("{w}: {}", text.trim());
        }
    }
}
