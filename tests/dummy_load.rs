//! `--load-format dummy`: random weights from config.json alone, and the real-size configs
//! committed in benches/configs.

mod common;

use flint_engine::{
    models::{load_dummy, Device, LoadOptions, ModelConfig},
    EngineConfig, EngineHandle, KvCacheBudget, SamplingParams,
};

#[test]
fn the_committed_real_size_configs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches").join("configs");
    let want = [("llama-3.2-1b", 16, 128_256), ("llama-3.1-8b", 32, 128_256), ("qwen2.5-7b", 28, 152_064)];
    for (name, layers, vocab) in want {
        let cfg = ModelConfig::from_file(&dir.join(name).join("config.json")).unwrap();
        assert_eq!((cfg.num_layers, cfg.vocab_size), (layers, vocab), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_alone_serves_with_random_weights() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixtures().join("tiny").join("qwen2").join("config.json");
    std::fs::copy(src, dir.path().join("config.json")).unwrap();
    let opts = LoadOptions { device: Device::Cpu, dtype: None, quantization: None };
    let m = load_dummy(dir.path(), &opts).unwrap();
    assert_eq!(m.config.num_layers, 2);

    let mut cfg = EngineConfig::new(dir.path(), opts);
    cfg.dummy_weights = true;
    cfg.kv_cache = KvCacheBudget::Blocks(64);
    let h = EngineHandle::start(cfg).expect("no weights or tokenizer needed");
    let params = SamplingParams::new(8).unwrap().with_ignore_eos(true);
    let out = h.generate(vec![1, 2, 3, 300], params).unwrap().collect().await.unwrap();
    assert_eq!(out[0].token_ids.len(), 8);
    assert!(out[0].token_ids.iter().all(|&t| (t as usize) < 384));
}
