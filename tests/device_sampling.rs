//! Sampling on the model's device (`--sampling-device device`), run here through the sampling
//! kernel's CPU implementation: the engine path that a GPU takes, minus the GPU.
//!
//! - Greedy, with LoRA adapters in the batch, gives peft's exact tokens.
//! - Greedy with every logit adjustment (bias, `min_tokens`, repetition / presence / frequency
//!   penalties) picks the same tokens as the host sampler.
//! - Rows asking for logprobs go to the host inside the same step, with identical results.
//! - Seeded sampling repeats; top-k 1 is greedy; the first-token distribution of top-k /
//!   temperature sampling matches the host sampler's.

mod common;

use std::collections::HashMap;

use flint_engine::{
    models::{Device, LoadOptions},
    EngineConfig, EngineHandle, KvCacheBudget, LoraSettings, SamplingDevice, SamplingParams, SampleOutput,
};

const ADAPTERS: [&str; 3] = ["attn-r8", "all-r16-rslora", "mlp-r4"];

fn engine(dir: &std::path::Path, sampling: SamplingDevice, lora: bool) -> EngineHandle {
    let mut cfg = EngineConfig::new(dir, LoadOptions { device: Device::Cpu, dtype: None, quantization: None });
    cfg.block_size = 4;
    cfg.kv_cache = KvCacheBudget::Blocks(512);
    cfg.sampling = sampling;
    if lora {
        cfg.lora = Some(LoraSettings { max_loras: 4, max_lora_rank: 16 });
    }
    EngineHandle::start(cfg).expect("engine starts")
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams::new(n).expect("valid").with_ignore_eos(true)
}

/// Runs every (prompt, params) together and returns each request's first sample.
async fn run_all(h: &EngineHandle, reqs: &[(Vec<u32>, SamplingParams)]) -> Vec<SampleOutput> {
    let tasks: Vec<_> = reqs
        .iter()
        .map(|(p, sp)| tokio::spawn(h.generate(p.clone(), sp.clone()).expect("accepted").collect()))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task").expect("runs").remove(0));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_with_adapters_matches_peft() {
    let dir = common::tiny_model_with_tokenizer("llama-gqa-tied");
    let fixtures = common::fixtures().join("lora").join("llama-gqa-tied");
    let h = engine(dir.path(), SamplingDevice::Device, true);
    for name in ADAPTERS {
        h.load_adapter(name, fixtures.join(name)).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let r = common::read_json(&fixtures.join("reference.json"));
    let mut cases = Vec::new();
    for name in ADAPTERS {
        for c in r["adapters"][name]["greedy_cases"].as_array().expect("cases") {
            cases.push((Some(name), common::ids(&c["prompt_ids"]), common::ids(&c["output_ids"])));
        }
    }
    for c in r["base_greedy_cases"].as_array().expect("cases") {
        cases.push((None, common::ids(&c["prompt_ids"]), common::ids(&c["output_ids"])));
    }
    let tasks: Vec<_> = cases
        .iter()
        .map(|(a, p, want)| tokio::spawn(h.generate_with(p.clone(), greedy(want.len()), *a).expect("accepted").collect()))
        .collect();
    for ((a, p, want), t) in cases.iter().zip(tasks) {
        let out = t.await.expect("task").expect("runs").remove(0);
        assert_eq!(&out.token_ids, want, "adapter {a:?}, prompt {p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjusted_greedy_and_logprob_rows_match_the_host_sampler() {
    let dir = common::tiny_model_with_tokenizer("llama-gqa-tied");
    let prompts: Vec<Vec<u32>> = vec![vec![1, 2, 3, 4, 5], vec![9, 8, 7], vec![40, 41, 40, 41, 40, 41, 40], vec![100]];
    let eos = {
        let h = engine(dir.path(), SamplingDevice::Host, false);
        h.info().eos_ids.clone()
    };
    // Powers of two for the repetition penalty, so `x * (1/r)` on the device and `x / r` on
    // the host round alike.
    let variants: Vec<SamplingParams> = vec![
        greedy(12),
        greedy(12).with_repetition_penalty(2.0).expect("valid"),
        greedy(12).with_presence_penalty(0.5).expect("valid").with_frequency_penalty(0.25).expect("valid"),
        greedy(12).with_logit_bias(vec![(5, 3.0), (17, -100.0), (33, 1.5)]).expect("valid"),
        SamplingParams::new(12).expect("valid").with_min_tokens(8).expect("valid").with_repetition_penalty(0.5).expect("valid"),
        greedy(12).with_logprobs(Some(3)).expect("valid"),
        greedy(12).with_repetition_penalty(4.0).expect("valid").with_logprobs(Some(2)).expect("valid"),
    ];
    let reqs: Vec<(Vec<u32>, SamplingParams)> =
        prompts.iter().flat_map(|p| variants.iter().map(move |v| (p.clone(), v.clone()))).collect();
    let host = run_all(&engine(dir.path(), SamplingDevice::Host, false), &reqs).await;
    let device = run_all(&engine(dir.path(), SamplingDevice::Device, false), &reqs).await;
    for (((p, sp), h), d) in reqs.iter().zip(&host).zip(&device) {
        assert_eq!(h.token_ids, d.token_ids, "prompt {p:?}, params {sp:?}");
        // Logprob rows take the host path on both engines; their values may differ in the last
        // bits because the two runs batch differently (another matmul shape).
        assert_eq!(h.logprobs.len(), d.logprobs.len());
        for (a, b) in h.logprobs.iter().zip(&d.logprobs) {
            assert_eq!(a.token, b.token);
            assert!((a.logprob - b.logprob).abs() < 1e-4, "{a:?} vs {b:?}");
            let ids = |t: &flint_engine::TokenLogprob| t.top.iter().map(|&(id, _)| id).collect::<Vec<_>>();
            assert_eq!(ids(a), ids(b), "{a:?} vs {b:?}");
        }
        if sp.min_tokens() > 0 && !eos.is_empty() {
            let early = d.token_ids.iter().take(sp.min_tokens()).filter(|t| eos.contains(t)).count();
            assert_eq!(early, 0, "min_tokens banned EOS: {:?}", d.token_ids);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_device_sampling_repeats_and_top_k_1_is_greedy() {
    let dir = common::tiny_model_with_tokenizer("llama-gqa-tied");
    let h = engine(dir.path(), SamplingDevice::Device, false);
    let prompt = vec![3u32, 1, 4, 1, 5, 9, 2, 6];
    let sampled = |seed: u64| {
        SamplingParams::new(16)
            .expect("valid")
            .with_ignore_eos(true)
            .with_temperature(1.0)
            .expect("valid")
            .with_top_p(0.95)
            .expect("valid")
            .with_seed(Some(seed))
    };
    let reqs = vec![(prompt.clone(), sampled(7)), (prompt.clone(), sampled(7)), (prompt.clone(), sampled(8))];
    let out = run_all(&h, &reqs).await;
    assert_eq!(out[0].token_ids, out[1].token_ids, "same seed, same tokens");
    assert_ne!(out[0].token_ids, out[2].token_ids, "another seed, other tokens (16 draws)");
    let top1 = greedy(16).with_temperature(1.0).expect("valid").with_top_k(Some(1)).expect("valid");
    let out = run_all(&h, &[(prompt.clone(), greedy(16)), (prompt.clone(), top1)]).await;
    assert_eq!(out[0].token_ids, out[1].token_ids);
}

/// The first sampled token over many seeds: device and host draw from one distribution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_distribution_matches_the_host_sampler() {
    let dir = common::tiny_model_with_tokenizer("llama-gqa-tied");
    const N: u64 = 600;
    let params = |seed: u64| {
        SamplingParams::new(1)
            .expect("valid")
            .with_ignore_eos(true)
            .with_temperature(2.0)
            .expect("valid")
            .with_top_k(Some(6))
            .expect("valid")
            .with_top_p(0.9)
            .expect("valid")
            .with_seed(Some(seed))
    };
    let reqs: Vec<(Vec<u32>, SamplingParams)> = (0..N).map(|s| (vec![2u32, 7, 1, 8], params(s))).collect();
    let hist = |outs: Vec<SampleOutput>| {
        let mut m: HashMap<u32, f64> = HashMap::new();
        for o in outs {
            *m.entry(o.token_ids[0]).or_default() += 1.0 / N as f64;
        }
        m
    };
    let host = hist(run_all(&engine(dir.path(), SamplingDevice::Host, false), &reqs).await);
    let device = hist(run_all(&engine(dir.path(), SamplingDevice::Device, false), &reqs).await);
    assert!(device.len() > 1 && device.len() <= 6, "top-k 6 keeps at most 6 tokens: {device:?}");
    let keys: std::collections::BTreeSet<u32> = host.keys().chain(device.keys()).copied().collect();
    let tv: f64 = keys.iter().map(|k| (host.get(k).unwrap_or(&0.0) - device.get(k).unwrap_or(&0.0)).abs()).sum::<f64>() / 2.0;
    // Two samples of 600 from one distribution over <= 6 tokens differ by ~0.04 in total
    // variation; a different truncation or temperature would move it far more.
    assert!(tv < 0.1, "total variation {tv:.3}: host {host:?} device {device:?}");
}
