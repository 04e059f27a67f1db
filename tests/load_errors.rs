//! Bad model directories give clear errors naming the file, field or tensor — never a panic.

mod common;

use std::path::Path;

use flint_models::{load, LoadOptions};

/// A copy of the tiny Llama fixture that a test can damage.
fn scratch_model() -> tempfile::TempDir {
    let src = common::fixtures().join("tiny").join("llama-gqa-tied");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not have", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut cfg);
    std::fs::write(path, cfg.to_string()).unwrap();
}

#[test]
fn missing_files_are_named() {
    let dir = scratch_model();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert!(load_err(dir.path()).contains("model.safetensors"));
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert!(load_err(dir.path()).contains("config.json"));
    assert!(load_err(Path::new("/no/such/model")).contains("/no/such/model"));
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = scratch_model();
    edit_config(dir.path(), |c| c["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]));
    let e = load_err(dir.path());
    assert!(e.contains("GPTNeoXForCausalLM") && e.contains("LlamaForCausalLM"), "{e}");
}

#[test]
fn wrong_tensor_shape_names_the_tensor() {
    let dir = scratch_model();
    // The checkpoint's projections no longer fit a config with a wider MLP.
    edit_config(dir.path(), |c| c["intermediate_size"] = serde_json::json!(1000));
    let e = load_err(dir.path());
    assert!(e.contains("mlp") && e.contains("shape"), "{e}");
}

#[test]
fn corrupt_safetensors_header_is_reported_by_file() {
    let dir = scratch_model();
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    // Claim a header far longer than the file.
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("model.safetensors") && e.contains("corrupt"), "{e}");
    // Truncated data: the header's offsets point past the end.
    let good = std::fs::read(common::fixtures().join("tiny/llama-gqa-tied/model.safetensors")).unwrap();
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("model.safetensors") && e.contains("corrupt"), "{e}");
}

#[test]
fn missing_shard_and_escaping_shard_names_are_errors() {
    let src = common::fixtures().join("tiny").join("llama-bf16-sharded");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors.index.json", "model-00001-of-00003.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    assert!(load_err(dir.path()).contains("model-00002-of-00003.safetensors"));
    let index = r#"{"weight_map": {"model.norm.weight": "../outside.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    assert!(load_err(dir.path()).contains("leaves the model directory"));
}

#[test]
fn pickle_only_checkpoints_are_refused() {
    let dir = scratch_model();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not loaded").unwrap();
    assert!(load_err(dir.path()).contains("safetensors only"));
}
