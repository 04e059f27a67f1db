//! Helpers shared by the end-to-end tests: fixture paths and reference files.

#![allow(dead_code)]

use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an array of token ids").iter().map(|x| x.as_u64().expect("a token id") as u32).collect()
}

/// The default model directory (`$FLINT_HOME/models/smollm2-135m-instruct`), if installed.
/// With `FLINT_REQUIRE_DEFAULT_MODEL=1` (set by `make test`) a missing model fails the test
/// instead of skipping it.
pub fn default_model() -> Option<PathBuf> {
    let home = std::env::var_os("FLINT_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache").join("flint")
    });
    let dir = home.join("models").join("smollm2-135m-instruct");
    if dir.join("config.json").is_file() {
        return Some(dir);
    }
    if std::env::var("FLINT_REQUIRE_DEFAULT_MODEL").is_ok_and(|v| v == "1") {
        panic!("the default model is missing at {} (run scripts/default-model.sh)", dir.display());
    }
    eprintln!("skipped: default model not installed at {} (run scripts/default-model.sh)", dir.display());
    None
}

/// A copy of the tiny fixture model `name` with a byte-level tokenizer, in a temp dir (the
/// fixtures ship no tokenizer; engine tests speak token ids anyway).
pub fn tiny_model_with_tokenizer(name: &str) -> tempfile::TempDir {
    let src = fixtures().join("tiny").join(name);
    let dir = tempfile::tempdir().expect("temp dir");
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy fixture");
    }
    flint_engine::tokenizer::testing::write_byte_level_tokenizer(dir.path()).expect("tokenizer");
    dir
}
