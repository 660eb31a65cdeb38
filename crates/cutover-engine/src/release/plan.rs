//! `cutover plan`: classify what changed between two revisions and show
//! what a deploy of the affected jobs would do.

use std::collections::BTreeSet;

use cutover_model::classify::{classify, Classification};
use cutover_model::plan::Plan;
use serde::Serialize;

use super::git::Git;
use crate::deploy::{self, DeployOptions};
use crate::{Context, EngineError};

pub enum Target {
    /// HEAD and the working tree.
    Head,
    /// Another branch, not checked out.
    Incoming(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub base: String,
    pub target: String,
    pub classification: Classification,
    pub plan: Plan,
}

pub async fn plan(
    ctx: &Context,
    base: Option<&str>,
    target: Target,
) -> Result<PlanReport, EngineError> {
    let git = Git::new(&ctx.project.root);
    if !git.is_repo() {
        return Err(EngineError::usage(
            format!("{} is not a git repository", ctx.project.root.display()),
            "cutover plan compares git revisions; run it in the project's clone",
        ));
    }
    let base = match base {
        Some(rev) => rev.to_string(),
        None => last_deployed(ctx).await?.ok_or_else(|| {
            EngineError::usage(
                "no deployment with a recorded commit yet, so there is nothing to compare with",
                "pass --diff REV (for example --diff main~1)",
            )
        })?,
    };
    let bad_rev = |rev: &str, e: super::GitError| {
        EngineError::usage(
            format!("`{rev}` is not a commit: {}", e.stderr),
            "name a branch, tag or commit",
        )
    };
    let base_sha = git.rev_parse(&base).map_err(|e| bad_rev(&base, e))?;
    let (target_name, target_sha, tmp) = match &target {
        Target::Head => (
            "HEAD".to_string(),
            git.head().map_err(|e| bad_rev("HEAD", e))?,
            None,
        ),
        Target::Incoming(branch) => {
            let sha = git.rev_parse(branch).map_err(|e| bad_rev(branch, e))?;
            let tmp = tempfile::Builder::new()
                .prefix("cutover-plan-")
                .tempdir()
                .map_err(EngineError::io("creating a temporary directory"))?;
            git.export(&sha, tmp.path()).map_err(|e| {
                EngineError::usage(
                    e.to_string(),
                    "check that the branch exists locally (git fetch)",
                )
            })?;
            (branch.clone(), sha, Some(tmp))
        }
    };
    let target_ctx = match &tmp {
        Some(dir) => {
            let project =
                cutover_model::Project::load(dir.path(), &ctx.load).map_err(EngineError::Config)?;
            ctx.with_project(project)
        }
        None => ctx.with_project((*ctx.project).clone()),
    };
    let changes = git
        .changes(&base_sha, &target_sha)
        .map_err(|e| EngineError::usage(e.to_string(), "check both revisions"))?;
    let classification = classify(&target_ctx.project, &changes);
    let plan = plan_services(&target_ctx, &classification.services).await?;
    Ok(PlanReport {
        base: base_sha,
        target: format!(
            "{target_name} ({})",
            &target_sha[..12.min(target_sha.len())]
        ),
        classification,
        plan,
    })
}

/// The deploy plan restricted to `services` (empty plan when none): the
/// same planner, on the same scope, as the migrate phase's deploy.
pub(crate) async fn plan_services(ctx: &Context, services: &[String]) -> Result<Plan, EngineError> {
    let services = services_in_scope(ctx, services).await?;
    if services.is_empty() {
        return Ok(Plan {
            stops: Vec::new(),
            waves: Vec::new(),
        });
    }
    let opts = DeployOptions {
        jobs: Some(services),
        dry_run: true,
        ..DeployOptions::default()
    };
    Ok(deploy::deploy(ctx, &opts).await?.plan)
}

/// The SERVICES a deploy can act on: jobs of the project, and jobs the
/// store still records (a removed job's allocations are stopped).
pub(crate) async fn services_in_scope(
    ctx: &Context,
    services: &[String],
) -> Result<BTreeSet<String>, EngineError> {
    let recorded: BTreeSet<String> = ctx
        .store
        .allocations()
        .await?
        .into_iter()
        .map(|a| a.job)
        .collect();
    Ok(services
        .iter()
        .filter(|s| ctx.project.jobs.contains_key(*s) || recorded.contains(*s))
        .cloned()
        .collect())
}

/// The commit of the newest deployment that recorded one.
async fn last_deployed(ctx: &Context) -> Result<Option<String>, EngineError> {
    Ok(ctx
        .store
        .deployments(100)
        .await?
        .into_iter()
        .filter(|d| d.outcome == "success" || d.outcome == "partial")
        .find_map(|d| d.head))
}
