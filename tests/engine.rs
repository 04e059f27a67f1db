//! The engine end to end on a tiny model: continuous batching, preemption, prefix caching,
//! seeded sampling, stop strings, logprobs and aborts, each checked against a solo run.

mod common;

use std::time::Duration;

use flint_engine::{
    models::{Device, LoadOptions},
    EngineConfig, EngineHandle, FinishReason, KvCacheBudget, SampleOutput, SamplingParams, StopReason,
};

/// A tiny fixture model plus a byte-level tokenizer, in a temp dir.
fn tiny_model() -> tempfile::TempDir {
    common::tiny_model_with_tokenizer("llama-gqa-tied")
}

fn engine(dir: &std::path::Path, tweak: impl FnOnce(&mut EngineConfig)) -> EngineHandle {
    let load = LoadOptions { device: Device::Cpu, dtype: None, quantization: None };
    let mut cfg = EngineConfig::new(dir, load);
    cfg.block_size = 4;
    cfg.kv_cache = KvCacheBudget::Blocks(1024);
    tweak(&mut cfg);
    EngineHandle::start(cfg).expect("engine starts")
}

/// Deterministic pseudo-random prompts of different lengths.
fn prompts(count: usize) -> Vec<Vec<u32>> {
    let mut x = 12345u32;
    (0..count)
        .map(|i| {
            (0..5 + 9 * i)
                .map(|_| {
                    x = x.wrapping_mul(1103515245).wrapping_add(12345);
                    (x >> 16) % 250 + 3
                })
                .collect()
        })
        .collect()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams::new(max_tokens).unwrap()
}

async fn run_one(h: &EngineHandle, prompt: Vec<u32>, params: SamplingParams) -> SampleOutput {
    let mut out = h.generate(prompt, params).expect("accepted").collect().await.expect("runs");
    out.remove(0)
}

async fn run_all(h: &EngineHandle, jobs: Vec<(Vec<u32>, SamplingParams)>) -> Vec<SampleOutput> {
    let streams: Vec<_> = jobs.into_iter().map(|(p, s)| h.generate(p, s).expect("accepted")).collect();
    let tasks: Vec<_> = streams.into_iter().map(|s| tokio::spawn(s.collect())).collect();
    let mut outs = Vec::new();
    for t in tasks {
        outs.push(t.await.expect("task").expect("runs").remove(0));
    }
    outs
}

/// Waits until the engine holds no request and every block is back in the pool.
async fn assert_drained(h: &EngineHandle) {
    for _ in 0..500 {
        let st = h.stats().await.unwrap();
        if st.requests == 0 && st.scheduler.free_blocks == st.scheduler.usable_blocks {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("blocks leaked: {:?}", h.stats().await.unwrap());
}

/// 16 requests of different lengths, greedy, each also run alone on a fresh engine.
async fn concurrent_matches_solo(tweak: fn(&mut EngineConfig)) -> flint_engine::EngineStats {
    let dir = tiny_model();
    let jobs: Vec<_> = prompts(16).into_iter().enumerate().map(|(i, p)| (p, greedy(6 + 3 * i))).collect();
    let solo = {
        let h = engine(dir.path(), |c| c.prefix_caching = false);
        let mut v = Vec::new();
        for (p, s) in &jobs {
            v.push(run_one(&h, p.clone(), s.clone()).await);
        }
        v
    };
    let h = engine(dir.path(), tweak);
    let batched = run_all(&h, jobs).await;
    for (i, (a, b)) in solo.iter().zip(&batched).enumerate() {
        assert_eq!(a.token_ids, b.token_ids, "request {i}");
        assert_eq!(a.finish, b.finish, "request {i}");
        assert_eq!(a.text, b.text, "request {i}");
    }
    assert_drained(&h).await;
    h.stats().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_greedy_requests_match_their_solo_runs() {
    let st = concurrent_matches_solo(|c| c.max_num_batched_tokens = 64).await;
    assert!(st.steps > 0);
    assert_eq!(st.scheduler.preemptions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_cache_preempts_and_recomputes_with_identical_output() {
    // 59 blocks of 4 tokens: the longest request just fits, all 16 need ~7x that at once.
    let st = concurrent_matches_solo(|c| c.kv_cache = KvCacheBudget::Blocks(60)).await;
    assert!(st.scheduler.preemptions > 0, "the cache forced preemption: {st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_prompt_hits_the_prefix_cache() {
    let dir = tiny_model();
    let h = engine(dir.path(), |_| {});
    let prompt = prompts(5).pop().unwrap(); // 41 tokens
    let first = h.generate(prompt.clone(), greedy(10)).unwrap();
    let (first_usage, first) = {
        let mut s = first;
        let mut out = Vec::new();
        while let Some(d) = s.next().await {
            out.extend(d.unwrap().token_ids);
        }
        (s.usage(), out)
    };
    assert_eq!(first_usage.cached_tokens, 0);
    let mut s = h.generate(prompt, greedy(10)).unwrap();
    let mut second = Vec::new();
    while let Some(d) = s.next().await {
        second.extend(d.unwrap().token_ids);
    }
    assert_eq!(s.usage().cached_tokens, 40, "ten full blocks of four tokens");
    assert_eq!(s.usage().prompt_tokens, 41);
    assert_eq!(first, second);
    let st = h.stats().await.unwrap();
    assert_eq!(st.scheduler.prefix_cache.hits, 40);
    assert_eq!(st.scheduler.prefix_cache.queries, 82);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_is_reproducible_across_batch_compositions() {
    let dir = tiny_model();
    let seeded = greedy(24).with_temperature(1.0).unwrap().with_top_p(0.9).unwrap().with_seed(Some(42));
    let prompt = prompts(3).pop().unwrap();
    let h = engine(dir.path(), |_| {});
    let alone = run_one(&h, prompt.clone(), seeded.clone()).await;
    // The same request in the middle of a crowd of other sampled requests.
    let mut jobs: Vec<_> =
        prompts(8).into_iter().map(|p| (p, greedy(20).with_temperature(0.8).unwrap())).collect();
    jobs.insert(4, (prompt.clone(), seeded.clone()));
    let crowd = run_all(&h, jobs).await;
    assert_eq!(alone.token_ids, crowd[4].token_ids);
    // n = 3: samples differ from each other but repeat with the same seed.
    let three = || h.generate(prompt.clone(), seeded.clone().with_n(3).unwrap()).unwrap().collect();
    let (a, b) = (three().await.unwrap(), three().await.unwrap());
    assert_eq!(a, b);
    assert_eq!(a[0].token_ids, alone.token_ids, "sample 0 uses the request's seed");
    assert!(a[1].token_ids != a[0].token_ids || a[2].token_ids != a[0].token_ids);
    assert_drained(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_samples_share_the_prompt_in_the_prefix_cache() {
    let dir = tiny_model();
    let h = engine(dir.path(), |_| {});
    let prompt = prompts(4).pop().unwrap(); // 32 tokens
    let params = greedy(5).with_n(4).unwrap();
    let outs = h.generate(prompt, params).unwrap().collect().await.unwrap();
    assert_eq!(outs.len(), 4);
    assert!(outs.iter().all(|o| o.token_ids == outs[0].token_ids), "greedy samples agree");
    let st = h.stats().await.unwrap();
    assert_eq!(st.scheduler.prefix_cache.hits, 3 * 28, "samples 1..4 reuse 7 full blocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_or_aborting_mid_generation_frees_every_block() {
    let dir = tiny_model();
    let h = engine(dir.path(), |_| {});
    let long = || greedy(200).with_ignore_eos(true);
    let mut streams: Vec<_> = prompts(4).into_iter().map(|p| h.generate(p, long()).unwrap()).collect();
    for s in &mut streams {
        s.next().await.unwrap().unwrap();
    }
    let st = h.stats().await.unwrap();
    assert!(st.scheduler.free_blocks < st.scheduler.usable_blocks);
    let last = streams.pop().unwrap();
    h.abort(last.request_id());
    drop(streams);
    assert_drained(&h).await;
    drop(last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_the_text_and_end_the_sample() {
    let dir = tiny_model();
    let h = engine(dir.path(), |_| {});
    let prompt = prompts(2).pop().unwrap();
    // Ban everything but a-z, so the solo text is ASCII and can be cut anywhere.
    let banned: Vec<(u32, f32)> = (0..256u32).filter(|&t| !(t as u8).is_ascii_lowercase()).map(|t| (t, -100.0)).collect();
    let params = greedy(30).with_ignore_eos(true).with_logit_bias(banned).unwrap();
    let full = run_one(&h, prompt.clone(), params.clone()).await;
    assert_eq!(full.text.len(), 30);
    let stop = full.text[12..15].to_string();
    let cut = full.text.find(&stop).unwrap();
    let out = run_one(&h, prompt.clone(), params.clone().with_stop(vec![stop.clone(), "never".into()]).unwrap()).await;
    assert_eq!(out.text, full.text[..cut]);
    assert_eq!(out.finish.reason, FinishReason::Stop);
    assert_eq!(out.finish.stop, Some(StopReason::Text(stop)));
    // A stop token id ends the sample without appearing in it.
    let stop_id = full.token_ids[7];
    let first = full.token_ids.iter().position(|&t| t == stop_id).unwrap();
    let out = run_one(&h, prompt, params.with_stop_token_ids(vec![stop_id]).unwrap()).await;
    assert_eq!(out.token_ids, full.token_ids[..first]);
    assert_eq!(out.finish.stop, Some(StopReason::TokenId(stop_id)));
    assert_drained(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_come_with_every_token() {
    let dir = tiny_model();
    let h = engine(dir.path(), |_| {});
    let out = run_one(&h, prompts(2).pop().unwrap(), greedy(8).with_logprobs(Some(3)).unwrap()).await;
    assert_eq!(out.logprobs.len(), out.token_ids.len());
    for (lp, &t) in out.logprobs.iter().zip(&out.token_ids) {
        assert_eq!(lp.token, t);
        assert_eq!(lp.top.len(), 3);
        assert_eq!(lp.top[0].0, t, "greedy picks the most likely token");
        assert!((lp.top[0].1 - lp.logprob).abs() < 1e-6 && lp.logprob <= 0.0);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_requests_are_refused_before_queueing() {
    let dir = tiny_model();
    let h = engine(dir.path(), |c| c.kv_cache = KvCacheBudget::Blocks(9));
    let err = |p: Vec<u32>, s: SamplingParams| h.generate(p, s).err().expect("refused").to_string();
    assert!(err(vec![5; 40], greedy(1)).contains("whole cache has 8"), "{}", err(vec![5; 40], greedy(1)));
    assert!(err(vec![], greedy(1)).contains("empty"));
    assert!(err(vec![300], greedy(1)).contains("300"));
    assert!(err(vec![5; 10], greedy(250)).contains("context length (256)"));
    assert!(err(vec![5], greedy(1).with_stop_token_ids(vec![999]).unwrap()).contains("stop_token_ids"));
    assert_drained(&h).await;
    // Load failures come back from start, naming the file.
    let empty = tempfile::tempdir().unwrap();
    flint_engine::tokenizer::testing::write_byte_level_tokenizer(empty.path()).unwrap();
    let load = LoadOptions { device: Device::Cpu, dtype: None, quantization: None };
    let e = EngineHandle::start(EngineConfig::new(empty.path(), load)).err().expect("fails").to_string();
    assert!(e.contains("config.json"), "{e}");
}
