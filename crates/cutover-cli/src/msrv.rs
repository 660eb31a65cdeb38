//! The declared minimum Rust version is the real one. No older toolchain
//! can be installed here to build with, so it is checked in two halves:
//! clippy's `incompatible_msrv` lint (in `scripts/test.sh`) refuses any
//! std API of our own code newer than `rust-version`, and this test
//! refuses a dependency (of the build, not of the tests) that declares a
//! newer minimum than ours.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    fn version(v: &str) -> Vec<u64> {
        v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
    }

    #[test]
    fn no_dependency_needs_a_newer_rust_than_declared() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // This machine's platform only: other platforms' crates (Windows)
        // are never built here, and need not be downloaded.
        let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked", "--offline"])
            .args(["--filter-platform", &platform])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let packages: BTreeMap<&str, &serde_json::Value> = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .filter_map(|p| Some((p["id"].as_str()?, p)))
            .collect();
        let ours = packages
            .values()
            .find(|p| p["name"] == "cutover-cli")
            .and_then(|p| p["rust_version"].as_str())
            .expect("cutover-cli declares rust-version");
        // What a build of the workspace compiles: normal and build
        // dependencies, transitively (dev-dependencies are for tests).
        let nodes: BTreeMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
            .as_array()
            .expect("resolve")
            .iter()
            .filter_map(|n| Some((n["id"].as_str()?, n)))
            .collect();
        let mut todo: Vec<&str> = meta["workspace_members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m.as_str())
            .collect();
        let mut seen = BTreeSet::new();
        let mut newer = Vec::new();
        while let Some(id) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(v) = packages.get(id).and_then(|p| p["rust_version"].as_str()) {
                if version(v) > version(ours) {
                    newer.push(format!(
                        "{} needs {v}",
                        packages[id]["name"].as_str().unwrap_or(id)
                    ));
                }
            }
            for dep in nodes
                .get(id)
                .and_then(|n| n["deps"].as_array())
                .into_iter()
                .flatten()
            {
                let built = dep["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k["kind"].is_null() || k["kind"] == "build");
                if built {
                    if let Some(d) = dep["pkg"].as_str() {
                        todo.push(d);
                    }
                }
            }
        }
        assert!(
            newer.is_empty(),
            "rust-version {ours} in Cargo.toml is below what dependencies declare: {newer:?}"
        );
    }
}
