//! The project loader on arbitrary files: `cutover.toml`, `workers.toml`
//! and one `job.toml`, cut from the input at NUL bytes. It must return a
//! project or diagnostics, never panic or hang.
//!
//! Run: `cargo install cargo-fuzz && cd fuzz && cargo fuzz run load_project`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let files = [
        ("cutover.toml", parts.next().unwrap_or_default()),
        ("workers.toml", parts.next().unwrap_or_default()),
        ("jobs/api/job.toml", parts.next().unwrap_or_default()),
    ];
    let Ok(dir) = tempfile::tempdir() else { return };
    for (rel, bytes) in files {
        let path = dir.path().join(rel);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(path, bytes);
    }
    let _ = cutover_model::Project::load(dir.path(), &cutover_model::LoadOptions::default());
});
