//! Shared by the model benches: which model directory to measure, and the request load the
//! engine benches drive.

#![allow(dead_code)] // each bench uses a part

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

/// Request `r`'s prompt: `len` deterministic token ids below `vocab`, different per request.
pub fn prompt(r: usize, len: usize, vocab: u32) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 7919 + r as u32 * 104_729 + 13) % vocab).collect()
}

/// Waits for every stream to finish; returns the output tokens they produced.
pub async fn drain(streams: Vec<flint_engine::OutputStream>) -> usize {
    let mut tokens = 0;
    for s in streams {
        for out in s.collect().await.expect("runs") {
            tokens += out.token_ids.len();
        }
    }
    tokens
}
