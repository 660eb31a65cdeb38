//! What the model's integration tests share: a project written to disk.

use cutover_model::{LoadOptions, Project};

/// Writes `files` (path, text) into a new temporary dir and loads it.
pub fn project(files: &[(&str, &str)]) -> (tempfile::TempDir, Project) {
    let dir = tempfile::tempdir().expect("tmp");
    for (rel, text) in files {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    let project = Project::load(dir.path(), &LoadOptions::default()).expect("loads");
    (dir, project)
}
