//! The engine end to end inside the crate, on a tiny Llama with random weights (no files but
//! a config.json): the handle's submit options. [`tiny_engine`] is shared with other modules'
//! tests.

use crate::{
    models::{Device, LoadOptions},
    EngineConfig, EngineError, EngineHandle, KvCacheBudget, SamplingParams, SubmitOptions, MAX_CACHE_SALT_BYTES,
};

/// An engine on a tiny Llama with random weights and a long context (8192), so a request can
/// run for thousands of tokens; `tweak` adjusts the config first.
pub(crate) fn tiny_engine(tweak: impl FnOnce(&mut EngineConfig)) -> (tempfile::TempDir, EngineHandle) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
        "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
        "num_hidden_layers": 1, "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write config");
    let mut cfg = EngineConfig::new(dir.path(), LoadOptions { device: Device::Cpu, dtype: None, quantization: None });
    cfg.dummy_weights = true;
    cfg.block_size = 16;
    cfg.kv_cache = KvCacheBudget::Blocks(1024);
    tweak(&mut cfg);
    let h = EngineHandle::start(cfg).expect("engine starts");
    (dir, h)
}

/// Runs a request to its end and returns the prompt tokens it found in the prefix cache.
async fn cached_tokens(h: &EngineHandle, prompt: &[u32], salt: Option<&str>) -> usize {
    let params = SamplingParams::new(2).expect("valid").with_ignore_eos(true);
    let opts = SubmitOptions { cache_salt: salt.map(str::to_owned), ..Default::default() };
    let mut stream = h.submit(prompt.to_vec(), params, opts).expect("accepted");
    while let Some(d) = stream.next().await {
        d.expect("runs");
    }
    stream.usage().cached_tokens
}

#[tokio::test]
async fn only_requests_with_the_same_cache_salt_share_cached_blocks() {
    let (_dir, h) = tiny_engine(|_| {});
    let prompt: Vec<u32> = (0..70).map(|i| (i * 7 + 3) % 250).collect();
    assert_eq!(cached_tokens(&h, &prompt, Some("a")).await, 0);
    assert_eq!(cached_tokens(&h, &prompt, Some("a")).await, 64, "same salt: the 4 full blocks");
    assert_eq!(cached_tokens(&h, &prompt, Some("b")).await, 0, "another salt sees nothing");
    assert_eq!(cached_tokens(&h, &prompt, None).await, 0, "nor does no salt");
    assert_eq!(cached_tokens(&h, &prompt, None).await, 64);
}

#[tokio::test]
async fn bad_submissions_name_the_field() {
    let (_dir, h) = tiny_engine(|_| {});
    let p = || SamplingParams::new(2).expect("valid");
    let salt = |s: &str| SubmitOptions { cache_salt: Some(s.to_owned()), ..Default::default() };
    let field = |r: crate::error::Result<crate::OutputStream>| match r.err().expect("refused") {
        EngineError::InvalidParameter { field, .. } => field,
        e => panic!("{e}"),
    };
    assert_eq!(field(h.submit(vec![5], p(), salt(""))), "cache_salt");
    assert_eq!(field(h.submit(vec![5], p(), salt(&"s".repeat(MAX_CACHE_SALT_BYTES + 1)))), "cache_salt");
    let adapter = SubmitOptions { adapter: Some("nope".into()), ..Default::default() };
    assert!(matches!(h.submit(vec![5], p(), adapter), Err(EngineError::UnknownAdapter(_))));
    // `check` refuses what `submit` would, without queueing anything.
    assert!(h.check(1, &p()).is_ok());
    assert!(matches!(h.check(0, &p()), Err(EngineError::Admit(_))));
    assert!(matches!(h.check(8191, &p()), Err(EngineError::Admit(_))));
    let stop_ids = p().with_stop_token_ids(vec![300]).expect("valid");
    assert!(matches!(h.check(1, &stop_ids), Err(EngineError::InvalidParameter { field: "stop_token_ids", .. })));
}

#[tokio::test]
async fn dropping_a_request_of_many_samples_frees_everything() {
    let (_dir, h) = tiny_engine(|_| {});
    let params = SamplingParams::new(4000)
        .and_then(|p| p.with_n(crate::sampling::MAX_N))
        .and_then(|p| p.with_temperature(1.0))
        .expect("valid")
        .with_ignore_eos(true);
    let mut stream = h.generate((3..40).collect(), params).expect("accepted");
    stream.next().await.expect("a delta").expect("runs");
    drop(stream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let st = h.stats().await.expect("stats");
        let s = st.scheduler;
        if st.requests == 0 && s.running == 0 && s.waiting == 0 && s.free_blocks == s.usable_blocks {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not freed: {st:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
