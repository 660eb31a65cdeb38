//! Property tests of the planner: whatever the fleet and the store say,
//! batches respect their limits, new allocations start before upgrades,
//! an allocation is skipped exactly when nothing changed, and upgrades
//! follow `rollout_order`.

use std::collections::BTreeMap;

use cutover_model::plan::{self, Action, Candidate, PlanInput, PlanOptions, Recorded};
use cutover_model::Project;
use proptest::prelude::*;

mod common;

/// What the store says of one worker's allocation.
#[derive(Debug, Clone, Copy)]
enum Prior {
    None,
    Same,
    OtherHash,
    OtherVersion,
    Failed,
}

fn prior() -> impl Strategy<Value = Prior> {
    prop_oneof![
        Just(Prior::None),
        Just(Prior::Same),
        Just(Prior::OtherHash),
        Just(Prior::OtherVersion),
        Just(Prior::Failed),
    ]
}

fn project(workers: usize, starts: usize, upgrades: usize) -> (tempfile::TempDir, Project) {
    let mut fleet = String::new();
    for i in 0..workers {
        fleet.push_str(&format!(
            "[[worker]]\nname = \"w{i}\"\nhost = \"10.0.0.{i}\"\nlabels = [\"web\"]\n\n"
        ));
    }
    let job = format!(
        "version = \"2\"\nselectors = [\"web\"]\nmax_concurrent_starts = {starts}\nmax_concurrent_upgrades = {upgrades}\n"
    );
    common::project(&[
        ("cutover.toml", "name = \"p\"\n"),
        ("workers.toml", &fleet),
        ("jobs/api/job.toml", &job),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn batches_starts_skips_and_rollout_order(
        priors in proptest::collection::vec(prior(), 1..9),
        starts in 0usize..4,
        upgrades in 1usize..4,
        force in any::<bool>(),
        order_seed in any::<u64>(),
    ) {
        let n = priors.len();
        let (_dir, project) = project(n, starts, upgrades);
        let mut candidates = BTreeMap::new();
        let mut recorded = BTreeMap::new();
        for (i, p) in priors.iter().enumerate() {
            let key = ("api".to_string(), format!("w{i}"));
            candidates.insert(key.clone(), Candidate { hash: "new".into(), manifest: BTreeMap::new(), inputs: BTreeMap::new(), version: "2".into() });
            let rec = |hash: &str, version: &str, failed: bool| Recorded {
                promoted_hash: Some(hash.into()),
                promoted_version: Some(version.into()),
                failed,
                ..Recorded::default()
            };
            match p {
                Prior::None => {}
                Prior::Same => { recorded.insert(key, rec("new", "2", false)); }
                Prior::OtherHash => { recorded.insert(key, rec("old", "2", false)); }
                Prior::OtherVersion => { recorded.insert(key, rec("new", "1", false)); }
                Prior::Failed => { recorded.insert(key, rec("new", "2", true)); }
            }
        }
        // A rollout order: the workers, rotated by the seed.
        let mut order: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
        order.rotate_left((order_seed as usize) % n);
        let rollout = BTreeMap::from([("api".to_string(), order.clone())]);
        let options = PlanOptions { force, ..PlanOptions::default() };
        let plan = plan::plan(&PlanInput {
            project: &project,
            candidates: &candidates,
            recorded: &recorded,
            rollout_order: &rollout,
            post_deploy_failed: &BTreeMap::new(),
            options: &options,
        });
        let job = plan.jobs().next().expect("the job is planned");
        prop_assert_eq!(job.allocations.len(), n);

        let mut per_batch: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for a in &job.allocations {
            let i: usize = a.worker[1..].parse().expect("index");
            let unchanged = matches!(priors[i], Prior::Same);
            // Skipped exactly when nothing changed (and not forced).
            prop_assert_eq!(a.action == Action::Skip, unchanged && !force, "{:?}", a);
            prop_assert_eq!(a.batch.is_none(), a.action == Action::Skip);
            let new = matches!(priors[i], Prior::None);
            prop_assert_eq!(a.action == Action::Start, new);
            if let Some(b) = a.batch {
                let e = per_batch.entry(b).or_default();
                if new { e.0 += 1 } else { e.1 += 1 }
            }
        }
        let mut last_start = 0;
        let mut first_upgrade = usize::MAX;
        for (b, (s, u)) in &per_batch {
            prop_assert!(*s == 0 || *u == 0, "batch {} mixes starts and upgrades", b);
            if starts > 0 { prop_assert!(*s <= starts); }
            prop_assert!(*u <= upgrades);
            if *s > 0 { last_start = last_start.max(*b); }
            if *u > 0 { first_upgrade = first_upgrade.min(*b); }
        }
        prop_assert!(last_start < first_upgrade, "an upgrade batch comes before a start batch");
        prop_assert_eq!(job.batches, per_batch.len());

        // Upgrades follow rollout_order: batch numbers never go down along it.
        let batch_of: BTreeMap<&str, usize> = job
            .allocations
            .iter()
            .filter(|a| a.action != Action::Skip && a.action != Action::Start)
            .filter_map(|a| Some((a.worker.as_str(), a.batch?)))
            .collect();
        let along: Vec<usize> = order.iter().filter_map(|w| batch_of.get(w.as_str()).copied()).collect();
        prop_assert!(along.windows(2).all(|w| w[0] <= w[1]), "{:?} along {:?}", along, order);
    }
}
