//! Shared by the model benches: which model directory to measure.

use std::path::PathBuf;

/// `FLINT_BENCH_MODEL`, else the installed default model (`$FLINT_HOME/models/...`).
pub fn model_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FLINT_BENCH_MODEL") {
        return Some(PathBuf::from(d));
    }
    let home = std::env::var_os("FLINT_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache").join("flint")
    });
    let dir = home.join("models").join("smollm2-135m-instruct");
    dir.join("config.json").is_file().then_some(dir)
}
