//! `cutover demo`: the deploy flow on this machine, in seconds, with no
//! setup: an example project on three local workers, a first deploy, a
//! one-file change that reloads one allocation and skips the rest, status,
//! drift, and cleanup.

use super::{deploy, inspect, Session};
use crate::args::{DeployArgs, Global, Progress};
use crate::error::CliError;

fn step(title: &str) {
    println!();
    println!("==> {title}");
}

pub async fn run(g: &Global) -> Result<u8, CliError> {
    let tmp = tempfile::Builder::new()
        .prefix("cutover-demo-")
        .tempdir()
        .map_err(|e| {
            CliError::usage(
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
        .map_err(|e| CliError::usage(format!("cannot edit the example: {e}"), "check TMPDIR"))?;
    let rc = deploy::run(&s, deploy_args(false)).await?;
    if rc != 0 {
        return Ok(rc);
    }

    step("cutover deploy   (nothing changed: no worker is touched)");
    deploy::run(&s, deploy_args(false)).await?;

    step("cutover status");
    inspect::status(&s, None).await?;

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

    s.store.close().await;
    step("cleanup");
    println!("removed {}", tmp.path().display());
    drop(tmp);
    Ok(0)
}
