//! A BASE release that `keep_releases` pruned, rebuilt for a revert: the
//! project is exported from git at BASE_SHA, the job rendered for the
//! worker, and the result must have the fingerprint recorded when the
//! release started; then it is uploaded under its old release id.

use std::collections::BTreeSet;

use super::files::StateFile;
use super::run::say;
use super::BaseAllocation;
use crate::fleet::Fleet;
use crate::scratch::Scratch;
use crate::{remote, render, Context, EngineError};

/// Rebuilds each `(job, worker, base)` release; refuses, before anything
/// is uploaded, if one does not come out as recorded.
pub(crate) async fn rebuild(
    ctx: &Context,
    fleet: &Fleet,
    state: &StateFile,
    missing: &[(String, String, BaseAllocation)],
) -> Result<(), EngineError> {
    let export = Scratch::create(&ctx.runtime_dir, "base", &ctx.project.root)?;
    let tree = export.path().join("tree");
    super::git::Git::new(&ctx.project.root)
        .export(&state.base_sha, &tree)
        .map_err(|e| {
            EngineError::usage(
                format!("exporting BASE_SHA: {e}"),
                "is the commit still in this clone?",
            )
        })?;
    let project = cutover_model::Project::load(&tree, &ctx.load).map_err(|d| {
        EngineError::usage(
            format!(
                "the project at BASE_SHA {} does not load: {d}",
                &state.base_sha[..12]
            ),
            "restore the BASE release dirs by hand, or deploy BASE_SHA",
        )
    })?;
    let base_ctx = ctx.with_project(project);
    let jobs: BTreeSet<String> = missing.iter().map(|(j, _, _)| j.clone()).collect();
    let kv = crate::kv::for_templates(ctx).await?;
    let certs =
        crate::certs::for_render(&base_ctx, Some(&jobs), crate::certs::Mode::Existing).await?;
    // BASE's working tree: a published job's BASE release is not in it,
    // and its hash check below says so.
    let rendered = render::render_all(
        &base_ctx,
        Some(&jobs),
        &kv,
        &certs,
        &BTreeSet::new(),
        &Default::default(),
    )?;
    for (job, worker, b) in missing {
        let hash = rendered
            .trees
            .get(&(job.clone(), worker.clone()))
            .map(|t| &t.hash);
        if hash != b.hash.as_ref() || hash.is_none() {
            return Err(EngineError::usage(
                format!(
                    "release {} of {job}@{worker} was pruned, and rebuilding it from BASE_SHA {} does not give the same tree",
                    b.release_id,
                    &state.base_sha[..12]
                ),
                "nothing was changed; a KV value its templates read may have changed since: restore it, or revert by deploying BASE_SHA",
            ));
        }
    }
    let wanted = missing
        .iter()
        .map(|(j, w, _)| (j.clone(), w.clone()))
        .collect();
    let stage = Scratch::create(&ctx.runtime_dir, "stage", &ctx.project.root)?;
    let staged = render::stage(ctx, stage.path(), &rendered.trees, &wanted)?;
    let timeout = ctx.project.config.ssh.command_timeout;
    for (job, worker, b) in missing {
        let w = ctx.project.worker(worker).ok_or_else(|| {
            EngineError::usage(
                format!("worker {worker} is not in workers.toml"),
                "add it back to revert it",
            )
        })?;
        let Some(local) = b
            .hash
            .as_ref()
            .and_then(|h| staged.get(&(job.clone(), h.clone())))
        else {
            continue;
        };
        let host = fleet
            .get(worker)
            .map_err(|e| EngineError::usage(e, "the worker must be reachable"))?;
        let job_dir = w.job_dir(job);
        let dest = format!("{job_dir}/releases/{}", b.release_id);
        let setup = remote::upload_setup(&job_dir, &b.release_id, timeout);
        host.push(local, &dest, None, Some(&setup), timeout)
            .await
            .map_err(|e| {
                EngineError::usage(
                    format!("re-uploading {} to {worker}: {e}", b.release_id),
                    "check the worker and run the revert again",
                )
            })?;
        say(
            ctx,
            format!(
                "{job}@{worker}: release {} was pruned; rebuilt from BASE_SHA",
                b.release_id
            ),
        );
    }
    Ok(())
}
