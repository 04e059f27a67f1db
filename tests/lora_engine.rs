//! LoRA through the engine: requests for different adapters and the base in flight together
//! (more adapters than LoRA slots, so residency changes between steps) each get peft's exact
//! greedy tokens; unloading refuses new requests but lets running ones finish.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use flint_engine::{
    models::{Device, LoadOptions},
    EngineConfig, EngineError, EngineHandle, KvCacheBudget, LoraSettings, SamplingParams,
};

const ADAPTERS: [&str; 3] = ["attn-r8", "all-r16-rslora", "mlp-r4"];

fn lora_fixtures() -> PathBuf {
    common::fixtures().join("lora").join("llama-gqa-tied")
}

/// The tiny base model with a byte-level tokenizer, in a temp dir.
fn base_dir() -> tempfile::TempDir {
    common::tiny_model_with_tokenizer("llama-gqa-tied")
}

async fn engine(dir: &std::path::Path, max_loras: usize) -> EngineHandle {
    let mut cfg = EngineConfig::new(dir, LoadOptions { device: Device::Cpu, dtype: None, quantization: None });
    cfg.block_size = 4;
    cfg.kv_cache = KvCacheBudget::Blocks(256);
    cfg.lora = Some(LoraSettings { max_loras, max_lora_rank: 16 });
    let h = EngineHandle::start(cfg).expect("engine starts");
    for name in ADAPTERS {
        h.load_adapter(name, lora_fixtures().join(name)).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    h
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams::new(n).expect("valid").with_ignore_eos(true)
}

/// (adapter or base, prompt, expected ids) for every fixture greedy case.
fn cases() -> Vec<(Option<&'static str>, Vec<u32>, Vec<u32>)> {
    let r = common::read_json(&lora_fixtures().join("reference.json"));
    let mut v = Vec::new();
    for name in ADAPTERS {
        for c in r["adapters"][name]["greedy_cases"].as_array().expect("cases") {
            v.push((Some(name), common::ids(&c["prompt_ids"]), common::ids(&c["output_ids"])));
        }
    }
    for c in r["base_greedy_cases"].as_array().expect("cases") {
        v.push((None, common::ids(&c["prompt_ids"]), common::ids(&c["output_ids"])));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_adapters_in_flight_match_peft_with_fewer_slots_than_adapters() {
    let dir = base_dir();
    for max_loras in [1, 2, 4] {
        let h = engine(dir.path(), max_loras).await;
        let cases = cases();
        let streams: Vec<_> = cases
            .iter()
            .map(|(a, p, want)| h.generate_with(p.clone(), greedy(want.len()), *a).expect("accepted"))
            .collect();
        let tasks: Vec<_> = streams.into_iter().map(|s| tokio::spawn(s.collect())).collect();
        for ((a, p, want), t) in cases.iter().zip(tasks) {
            let out = t.await.expect("task").expect("runs").remove(0);
            assert_eq!(&out.token_ids, want, "max_loras {max_loras}, adapter {a:?}, prompt {p:?}");
        }
        let st = h.stats().await.unwrap();
        assert!(st.adapters_resident <= max_loras, "{st:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_refuses_new_requests_and_lets_running_ones_finish() {
    let dir = base_dir();
    let h = engine(dir.path(), 2).await;
    let (_, prompt, _) = cases().remove(0);
    let long = h.generate_with(prompt.clone(), greedy(60), Some("attn-r8")).expect("accepted");
    h.unload_adapter("attn-r8").expect("unloads");
    assert!(matches!(h.generate_with(prompt.clone(), greedy(4), Some("attn-r8")), Err(EngineError::UnknownAdapter(_))));
    assert!(matches!(h.unload_adapter("attn-r8"), Err(EngineError::UnknownAdapter(_))));
    assert!(h.adapters().iter().all(|a| a.name != "attn-r8"));
    let out = long.collect().await.expect("the running request finishes").remove(0);
    assert_eq!(out.token_ids.len(), 60);
    // Once its last request is gone the adapter leaves its slot.
    for _ in 0..200 {
        // A step runs the slot collection; a base request drives one.
        h.generate(prompt.clone(), greedy(1)).expect("accepted").collect().await.expect("runs");
        if h.stats().await.unwrap().adapters_resident == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.stats().await.unwrap().adapters_resident, 0);
    // Reloading the same name works and gives the same tokens.
    h.load_adapter("attn-r8", lora_fixtures().join("attn-r8")).await.expect("reloads");
    let (_, p, want) = cases().remove(0);
    let again = h.generate_with(p, greedy(want.len()), Some("attn-r8")).unwrap().collect().await.unwrap().remove(0);
    assert_eq!(again.token_ids, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_errors_are_typed() {
    let dir = base_dir();
    let h = engine(dir.path(), 1).await;
    assert!(matches!(h.load_adapter("attn-r8", lora_fixtures().join("attn-r8")).await, Err(EngineError::AdapterExists(_))));
    assert!(matches!(h.load_adapter("x", lora_fixtures().join("missing")).await, Err(EngineError::InvalidAdapter(_))));
    assert!(matches!(h.generate_with(vec![5, 6], greedy(2), Some("nope")), Err(EngineError::UnknownAdapter(_))));
    assert_eq!(h.adapters().len(), 3);
    // LoRA off: adapters are refused up front.
    let mut cfg = EngineConfig::new(dir.path(), LoadOptions { device: Device::Cpu, dtype: None, quantization: None });
    cfg.kv_cache = KvCacheBudget::Blocks(64);
    let plain = EngineHandle::start(cfg).unwrap();
    assert!(matches!(plain.load_adapter("a", lora_fixtures().join("attn-r8")).await, Err(EngineError::LoraDisabled)));
}
