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

/// Runs each `(prompt, slot)` as one sequence of a single batch and returns every position's
/// logits per sequence.
pub fn batch_logits(m: &flint_models::LoadedModel, seqs: &[(Vec<u32>, Option<u32>)]) -> Vec<candle_core::Tensor> {
    let bs = 4;
    let per: Vec<usize> = seqs.iter().map(|(p, _)| p.len().div_ceil(bs)).collect();
    let kv = flint_models::KvCache::new(&m.model.kv_cache_spec(), per.iter().sum::<usize>() + 1, bs, &candle_core::Device::Cpu).unwrap();
    let mut next = 1u32;
    let tables: Vec<Vec<u32>> = per
        .iter()
        .map(|&n| {
            let t = (next..next + n as u32).collect();
            next += n as u32;
            t
        })
        .collect();
    let inputs: Vec<flint_models::SeqInput> = seqs
        .iter()
        .zip(&tables)
        .map(|((p, _), t)| flint_models::SeqInput { new_tokens: p, num_computed: 0, block_table: t, logits: flint_models::LogitsRows::All })
        .collect();
    let mut batch = flint_models::ForwardBatch::new(&inputs, bs, &candle_core::Device::Cpu).unwrap();
    batch.set_lora_slots(&seqs.iter().map(|(_, s)| *s).collect::<Vec<_>>()).unwrap();
    let out = m.model.forward(&batch, &kv).unwrap();
    let mut start = 0;
    seqs.iter()
        .map(|(p, _)| {
            let t = out.narrow(0, start, p.len()).unwrap();
            start += p.len();
            t
        })
        .collect()
}

/// Greedy decoding of one sequence in `slot`, one token per step through the paged cache.
pub fn greedy(m: &flint_models::LoadedModel, prompt: &[u32], n: usize, slot: Option<u32>) -> Vec<u32> {
    let bs = 4;
    let kv = flint_models::KvCache::new(&m.model.kv_cache_spec(), (prompt.len() + n).div_ceil(bs), bs, &candle_core::Device::Cpu).unwrap();
    let table: Vec<u32> = (0..kv.num_blocks() as u32).collect();
    let (mut out, mut next, mut computed) = (Vec::new(), prompt.to_vec(), 0);
    while out.len() < n {
        let seq = flint_models::SeqInput { new_tokens: &next, num_computed: computed, block_table: &table, logits: flint_models::LogitsRows::Last };
        let mut batch = flint_models::ForwardBatch::new(&[seq], bs, &candle_core::Device::Cpu).unwrap();
        batch.set_lora_slots(&[slot]).unwrap();
        let logits: Vec<f32> = m.model.forward(&batch, &kv).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        let tok = flint_engine::sampling::argmax(&logits);
        computed += next.len();
        out.push(tok);
        next = vec![tok];
    }
    out
}
