//! Rendering every allocation in scope, once, and staging the trees that
//! will be uploaded into a private temporary directory (never `.cutover/`:
//! rendered files may hold secrets).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use cutover_model::config::Job;
use cutover_model::plan::{Candidate, Recorded};
use cutover_model::tree::{JobSource, Promoted, RenderContext, StoredTree, Tree};
use cutover_state::AllocStatus;
use cutover_transport::LocalTree;

use crate::{Context, EngineError};

pub(crate) type Key = (String, String);

pub(crate) struct Rendered {
    pub trees: BTreeMap<Key, Tree>,
    pub candidates: BTreeMap<Key, Candidate>,
    /// Jobs of `defer` whose templates did not render (dry runs: a
    /// `pre_deploy` hook that has not run may be what sets their values),
    /// with why. They have no candidates.
    pub deferred: BTreeMap<String, String>,
    pub bytes: u64,
    pub files: usize,
}

/// Renders every allocation of the jobs in `scope` (`None` = all). It
/// reads and hashes every file: the async runtime is told it blocks.
pub(crate) fn render_all(
    ctx: &Context,
    scope: Option<&BTreeSet<String>>,
    kv: &crate::kv::TemplateKv,
    certs: &crate::certs::Files,
    defer: &BTreeSet<String>,
    published: &crate::channel::artifact::Published,
) -> Result<Rendered, EngineError> {
    tokio::task::block_in_place(|| render_blocking(ctx, scope, kv, certs, defer, published))
}

fn render_blocking(
    ctx: &Context,
    scope: Option<&BTreeSet<String>>,
    kv: &crate::kv::TemplateKv,
    certs: &crate::certs::Files,
    defer: &BTreeSet<String>,
    published: &crate::channel::artifact::Published,
) -> Result<Rendered, EngineError> {
    let project = &ctx.project;
    let empty = BTreeMap::new();
    let template_env = ctx.template_env();
    let fleet =
        cutover_model::view::FleetView::of(project).with_versions(&published.view_versions());
    let mut out = Rendered {
        trees: BTreeMap::new(),
        candidates: BTreeMap::new(),
        deferred: BTreeMap::new(),
        bytes: 0,
        files: 0,
    };
    for job in project.jobs.values() {
        if scope.is_some_and(|s| !s.contains(&job.name)) {
            continue;
        }
        // A published job renders its channels' artifacts, a version per
        // worker; any other its working tree.
        let pubjob = published.jobs.get(&job.name);
        // version -> its files, and the job as its templates see it
        // (`job.version` is the version they render).
        let mut sources: BTreeMap<String, (JobSource, Cow<'_, Job>)> = BTreeMap::new();
        match pubjob {
            Some(p) => {
                for (version, tree) in &p.dirs {
                    let mut versioned = job.clone();
                    versioned.manifest.version = version.clone();
                    // As read when its seal was checked: what ships.
                    let source = JobSource::clone(&tree.source);
                    sources.insert(version.clone(), (source, Cow::Owned(versioned)));
                }
            }
            None => {
                sources.insert(
                    job.manifest.version.clone(),
                    (JobSource::scan(job, project)?, Cow::Borrowed(job)),
                );
            }
        }
        for (source, _) in sources.values() {
            out.bytes += source.bytes;
            out.files += source.file_count();
        }
        let rctx = RenderContext {
            kv: kv.get(&job.name).unwrap_or(&empty),
            secrets: kv.secret_keys(&job.name),
            env: &template_env,
            fleet: &fleet,
        };
        for w in project.workers_for(job) {
            let key = (job.name.clone(), w.name.clone());
            let version = match pubjob {
                Some(p) => match p.version_for(&w.name) {
                    Some(v) => v.to_string(),
                    None => continue,
                },
                None => job.manifest.version.clone(),
            };
            let Some((source, job)) = sources.get(&version) else {
                continue;
            };
            let job: &Job = job;
            let generated = certs.get(&key).cloned().unwrap_or_default();
            let tree = match source.render(job, w, &rctx) {
                Err(e @ cutover_model::tree::TreeError::Template { .. })
                    if defer.contains(&job.name) =>
                {
                    out.deferred.insert(job.name.clone(), e.to_string());
                    out.candidates.retain(|(j, _), _| j != &job.name);
                    out.trees.retain(|(j, _), _| j != &job.name);
                    break;
                }
                r => r?.with_generated(job, generated)?,
            };
            out.candidates.insert(
                key.clone(),
                Candidate {
                    hash: tree.hash.clone(),
                    manifest: tree.manifest(),
                    inputs: tree.inputs.clone(),
                    version,
                },
            );
            out.trees.insert(key, tree);
        }
    }
    Ok(out)
}

/// What the store says of every allocation, with promoted manifests.
pub(crate) async fn recorded(
    ctx: &Context,
) -> Result<
    (
        BTreeMap<Key, Recorded>,
        Vec<cutover_state::AllocationRecord>,
    ),
    EngineError,
> {
    let allocs = ctx.store.allocations().await?;
    let mut out = BTreeMap::new();
    let mut manifests: BTreeMap<(String, String), Option<StoredTree>> = BTreeMap::new();
    for a in &allocs {
        let manifest = match &a.hash {
            Some(h) => {
                let k = (a.job.clone(), h.clone());
                if !manifests.contains_key(&k) {
                    let m = ctx
                        .store
                        .tree(&a.job, h)
                        .await?
                        .and_then(|json| Promoted::parse(&json));
                    manifests.insert(k.clone(), m);
                }
                manifests.get(&k).cloned().flatten()
            }
            None => None,
        };
        out.insert((a.job.clone(), a.worker.clone()), recorded_of(a, manifest));
    }
    Ok((out, allocs))
}

/// What the planner needs of one allocation record.
pub(crate) fn recorded_of(
    a: &cutover_state::AllocationRecord,
    manifest: Option<StoredTree>,
) -> Recorded {
    let (files, inputs) = match manifest {
        Some(t) => (Some(t.files), t.inputs),
        None => (None, None),
    };
    Recorded {
        promoted_hash: a.hash.clone(),
        promoted_version: a.version.clone(),
        promoted_manifest: files,
        promoted_inputs: inputs,
        failed: a.status == AllocStatus::Failed,
        stopped: a.status == AllocStatus::Stopped,
        drift: Vec::new(),
    }
}

/// Stages each distinct (job, hash) once under `root`, and reads its listing.
/// Files of the artifact cache (which nothing writes) are hard links where
/// they can be; the rest, the working tree's above all, are copied: an edit
/// during the run must not reach what is shipped.
pub(crate) fn stage(
    ctx: &Context,
    root: &Path,
    trees: &BTreeMap<Key, Tree>,
    wanted: &BTreeSet<Key>,
) -> Result<BTreeMap<(String, String), Arc<LocalTree>>, EngineError> {
    let linkable = crate::channel::artifact::cache_root(ctx);
    let mut staged: BTreeMap<(String, String), Arc<LocalTree>> = BTreeMap::new();
    for key in wanted {
        let Some(tree) = trees.get(key) else { continue };
        let by_hash = (key.0.clone(), tree.hash.clone());
        if staged.contains_key(&by_hash) {
            continue;
        }
        let dir = root.join(&key.0).join(&tree.hash);
        let local = tree
            .stage(&dir, Some(&linkable))
            .and_then(|()| LocalTree::scan(dir))
            .map_err(EngineError::io(format!("staging {} for upload", key.0)))?;
        staged.insert(by_hash, Arc::new(local));
    }
    Ok(staged)
}
