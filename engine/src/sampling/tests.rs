use std::collections::BTreeSet;

use super::*;
use crate::error::EngineError;

fn greedy() -> SamplingParams {
    SamplingParams::new(16).unwrap()
}

fn seeded(t: f32) -> SamplingParams {
    greedy().with_temperature(t).unwrap().with_seed(Some(7))
}

/// The field a setter rejected, and the message (which must carry the offending value).
fn rejected<T: std::fmt::Debug>(r: Result<T, EngineError>) -> (&'static str, String) {
    match r.unwrap_err() {
        EngineError::InvalidParameter { field, reason } => (field, reason),
        other => panic!("not an InvalidParameter: {other}"),
    }
}

fn pick(params: SamplingParams, logits: &[f32], ctx: &SampleContext<'_>) -> u32 {
    Sampler::new(params).sample(&mut logits.to_vec(), ctx).id
}

/// The set of tokens drawn in `draws` samples.
fn support(params: SamplingParams, logits: &[f32], draws: usize) -> BTreeSet<u32> {
    let mut s = Sampler::new(params);
    (0..draws).map(|_| s.sample(&mut logits.to_vec(), &SampleContext::default()).id).collect()
}

/// `ln` of probabilities, so expected supports can be worked out by hand.
fn ln(probs: &[f32]) -> Vec<f32> {
    probs.iter().map(|p| p.ln()).collect()
}

#[test]
fn out_of_range_parameters_name_the_field() {
    let p = greedy();
    assert_eq!(rejected(SamplingParams::new(0)).0, "max_tokens");
    let cases = [
        (rejected(p.clone().with_temperature(-1.0)), "temperature", "-1"),
        (rejected(p.clone().with_temperature(f32::NAN)), "temperature", "NaN"),
        (rejected(p.clone().with_temperature(f32::INFINITY)), "temperature", "inf"),
        (rejected(p.clone().with_top_p(0.0)), "top_p", "0"),
        (rejected(p.clone().with_top_p(1.5)), "top_p", "1.5"),
        (rejected(p.clone().with_top_p(f32::NAN)), "top_p", "NaN"),
        (rejected(p.clone().with_top_k(Some(0))), "top_k", "0"),
        (rejected(p.clone().with_min_p(2.0)), "min_p", "2"),
        (rejected(p.clone().with_min_p(f32::NAN)), "min_p", "NaN"),
        (rejected(p.clone().with_n(0)), "n", "0"),
        (rejected(p.clone().with_n(129)), "n", "129"),
        (rejected(p.clone().with_logprobs(Some(21))), "logprobs", "21"),
        (rejected(p.clone().with_min_tokens(17)), "min_tokens", "17"),
        (rejected(p.clone().with_min_tokens(8).unwrap().with_max_tokens(7)), "max_tokens", "7"),
        (rejected(p.clone().with_max_tokens(0)), "max_tokens", "0"),
        (rejected(p.clone().with_repetition_penalty(0.0)), "repetition_penalty", "0"),
        (rejected(p.clone().with_repetition_penalty(f32::INFINITY)), "repetition_penalty", "inf"),
        (rejected(p.clone().with_presence_penalty(2.5)), "presence_penalty", "2.5"),
        (rejected(p.clone().with_presence_penalty(f32::NAN)), "presence_penalty", "NaN"),
        (rejected(p.clone().with_frequency_penalty(-3.0)), "frequency_penalty", "-3"),
        (rejected(p.clone().with_logit_bias(vec![(3, 200.0)])), "logit_bias", "200"),
        (rejected(p.clone().with_logit_bias(vec![(3, 1.0), (4, f32::NEG_INFINITY)])), "logit_bias", "inf"),
        (rejected(p.clone().with_logit_bias(vec![(3, 1.0), (3, 2.0)])), "logit_bias", "3"),
        (rejected(p.clone().with_stop(vec!["a".into(), String::new()])), "stop", "1"),
        (rejected(p.clone().with_stop(vec!["x".into(); 17])), "stop", "17"),
    ];
    for ((field, reason), want, value) in cases {
        assert_eq!(field, want, "{reason}");
        assert!(reason.contains(value), "{field}: {reason:?} should mention {value}");
    }
    let vocab = p.clone().with_logit_bias(vec![(1, -100.0), (9, 100.0)]).unwrap().with_stop_token_ids(vec![2]);
    assert!(vocab.check_vocab(10).is_ok());
    assert_eq!(rejected(vocab.check_vocab(9)).0, "logit_bias");
    let stop = p.with_stop_token_ids(vec![0, 10]);
    let (field, reason) = rejected(stop.check_vocab(10));
    assert_eq!((field, reason.contains("10")), ("stop_token_ids", true));
}

#[test]
fn in_range_parameters_are_kept() {
    let p = greedy()
        .with_n(128)
        .unwrap()
        .with_min_tokens(16)
        .unwrap()
        .with_max_tokens(16)
        .unwrap()
        .with_top_p(1.0)
        .unwrap()
        .with_min_p(1.0)
        .unwrap()
        .with_repetition_penalty(0.5)
        .unwrap()
        .with_presence_penalty(-2.0)
        .unwrap()
        .with_frequency_penalty(2.0)
        .unwrap()
        .with_logprobs(Some(20))
        .unwrap()
        .with_stop(vec!["x".into(); 16])
        .unwrap();
    assert_eq!((p.n, p.min_tokens, p.max_tokens, p.logprobs), (128, 16, 16, Some(20)));
    assert!(p.is_greedy());
    let d = greedy();
    assert_eq!((d.n, d.min_tokens, d.min_p, d.repetition_penalty, d.logprobs), (1, 0, 0.0, 1.0, None));
}

#[test]
fn greedy_takes_first_maximum_and_ignores_truncation() {
    let ctx = SampleContext::default();
    assert_eq!(pick(greedy(), &[0.1, 3.0, 3.0, -1.0], &ctx), 1);
    let truncating = greedy().with_top_p(0.1).unwrap().with_min_p(0.9).unwrap().with_top_k(Some(3)).unwrap();
    assert_eq!(pick(truncating, &[0.1, 3.0, 3.0, -1.0], &ctx), 1);
    // top_k = 1 is greedy whatever the temperature.
    assert_eq!(pick(seeded(5.0).with_top_k(Some(1)).unwrap(), &[0.1, 3.0, 3.0, -1.0], &ctx), 1);
    assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN, 2.0]), 3);
}

#[test]
fn seeded_sampling_repeats_and_samples_differ() {
    let logits = [1.0, 1.1, 0.9, 1.05, -5.0, 0.3, 0.7];
    let params = seeded(1.0).with_top_k(Some(5)).unwrap().with_top_p(0.95).unwrap().with_min_p(0.01).unwrap();
    let run = |mut s: Sampler| -> Vec<u32> {
        (0..64).map(|_| s.sample(&mut logits.to_vec(), &SampleContext::default()).id).collect()
    };
    let a = run(Sampler::new(params.clone()));
    assert_eq!(a, run(Sampler::new(params.clone())));
    assert_eq!(a, run(Sampler::for_sample(params.clone(), 0)));
    let b = run(Sampler::for_sample(params.clone(), 1));
    assert_eq!(b, run(Sampler::for_sample(params.clone(), 1)));
    assert_ne!(a, b, "parallel samples must not repeat each other");
    assert!(a.iter().collect::<BTreeSet<_>>().len() > 1);
    // Wrapping: the last seed's neighbour is seed 0.
    let last = run(Sampler::for_sample(params.clone().with_seed(Some(u64::MAX)), 1));
    assert_eq!(last, run(Sampler::new(params.with_seed(Some(0)))));
}

#[test]
fn truncation_restricts_the_support() {
    // Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
    let logits = ln(&[0.5, 0.3, 0.15, 0.05]);
    let all = support(seeded(1.0), &logits, 2000);
    assert_eq!(all, BTreeSet::from([0, 1, 2, 3]));
    let k2 = support(seeded(1.0).with_top_k(Some(2)).unwrap(), &logits, 500);
    assert_eq!(k2, BTreeSet::from([0, 1]));
    // 0.5 < 0.75 <= 0.5 + 0.3.
    let p75 = support(seeded(1.0).with_top_p(0.75).unwrap(), &logits, 500);
    assert_eq!(p75, BTreeSet::from([0, 1]));
    let p40 = support(seeded(1.0).with_top_p(0.4).unwrap(), &logits, 100);
    assert_eq!(p40, BTreeSet::from([0]));
    // 0.25 · 0.5 = 0.125: 0.05 goes; 0.5 · 0.5 = 0.25: 0.15 goes too.
    let m25 = support(seeded(1.0).with_min_p(0.25).unwrap(), &logits, 1000);
    assert_eq!(m25, BTreeSet::from([0, 1, 2]));
    let m50 = support(seeded(1.0).with_min_p(0.5).unwrap(), &logits, 500);
    assert_eq!(m50, BTreeSet::from([0, 1]));
    // Top-p within top-k renormalizes over the top-k set: 0.5/0.8 = 0.625 >= 0.6.
    let kp = support(seeded(1.0).with_top_k(Some(2)).unwrap().with_top_p(0.6).unwrap(), &logits, 200);
    assert_eq!(kp, BTreeSet::from([0]));
}

#[test]
fn truncation_over_a_large_vocabulary() {
    // Uniform over 1000 tokens: top-p 0.5 keeps exactly 500 (ties: lower ids first), which
    // takes the nucleus search through several chunks.
    let flat = vec![0.0; 1000];
    let half = support(seeded(1.0).with_top_p(0.5).unwrap(), &flat, 5000);
    assert!(half.iter().all(|&id| id < 500) && half.len() > 450, "{} tokens", half.len());
    let rising: Vec<f32> = (0..1000).map(|i| i as f32 * 0.01).collect();
    let k10 = support(seeded(1.0).with_top_k(Some(10)).unwrap(), &rising, 1000);
    assert_eq!(k10, (990..1000).collect());
}

/// The processed row, observed through the in-place scratch of a greedy sample.
fn processed(params: SamplingParams, logits: &[f32], ctx: &SampleContext<'_>) -> (u32, Vec<f32>) {
    let mut row = logits.to_vec();
    let id = Sampler::new(params).sample(&mut row, ctx).id;
    (id, row)
}

#[test]
fn repetition_penalty_follows_hugging_face() {
    let p = greedy().with_repetition_penalty(2.0).unwrap();
    // Positive logits are divided: 2.0 / 2 = 1.0 < 1.5; negative ones multiplied: -0.5 · 2 = -1.
    let ctx = SampleContext { prompt: &[0], output: &[2], eos_ids: &[] };
    let (id, row) = processed(p.clone(), &[2.0, 1.5, -0.5, -0.6], &ctx);
    assert_eq!((id, row), (1, vec![1.0, 1.5, -1.0, -0.6]));
    // Each distinct id once, however often it occurs: 3.0 / 2 = 1.5 > 1.4 (twice would be 0.75).
    let ctx = SampleContext { prompt: &[0, 0, 0], output: &[0], eos_ids: &[] };
    assert_eq!(processed(p.clone(), &[3.0, 1.4], &ctx), (0, vec![1.5, 1.4]));
    // -1.0 · 1.5 = -1.5 < -1.2.
    let ctx = SampleContext { prompt: &[], output: &[0], eos_ids: &[] };
    let p15 = greedy().with_repetition_penalty(1.5).unwrap();
    assert_eq!(processed(p15, &[-1.0, -1.2], &ctx).0, 1);
}

#[test]
fn presence_and_frequency_penalties_follow_openai() {
    let presence = greedy().with_presence_penalty(0.3).unwrap();
    // 1.0 - 0.3 = 0.7 < 0.8, once however many times token 0 was produced.
    let ctx = SampleContext { prompt: &[], output: &[0, 0], eos_ids: &[] };
    let (id, row) = processed(presence.clone(), &[1.0, 0.8], &ctx);
    assert_eq!(id, 1);
    assert!((row[0] - 0.7).abs() < 1e-6 && row[1] == 0.8);
    // The prompt does not count.
    let ctx = SampleContext { prompt: &[0], output: &[], eos_ids: &[] };
    assert_eq!(processed(presence, &[1.0, 0.8], &ctx).0, 0);
    // Frequency: 2.0 - 3 · 0.4 = 0.8 < 1.0, but 2.0 - 2 · 0.4 = 1.2 > 1.0.
    let frequency = greedy().with_frequency_penalty(0.4).unwrap();
    let ctx3 = SampleContext { prompt: &[], output: &[0, 1, 0, 0], eos_ids: &[] };
    let (id, row) = processed(frequency.clone(), &[2.0, 1.4], &ctx3);
    assert_eq!(id, 1);
    assert!((row[0] - 0.8).abs() < 1e-6 && (row[1] - 1.0).abs() < 1e-6);
    let ctx2 = SampleContext { prompt: &[], output: &[0, 0], eos_ids: &[] };
    assert_eq!(processed(frequency, &[2.0, 1.0], &ctx2).0, 0);
    // Both: 2.0 - 0.5 - 2 · 0.3 = 0.9 < 1.0.
    let both = greedy().with_presence_penalty(0.5).unwrap().with_frequency_penalty(0.3).unwrap();
    let (id, row) = processed(both, &[2.0, 1.0], &ctx2);
    assert_eq!(id, 1);
    assert!((row[0] - 0.9).abs() < 1e-6);
    // Negative penalties encourage repeats: 0.5 + 2 = 2.5 > 1.0.
    let encourage = greedy().with_presence_penalty(-2.0).unwrap();
    assert_eq!(processed(encourage, &[1.0, 0.5], &SampleContext { output: &[1], ..Default::default() }).0, 1);
}

#[test]
fn logit_bias_forces_and_bans_tokens() {
    let logits = [5.0, 0.0, 0.0];
    let forced = seeded(1.0).with_logit_bias(vec![(2, 100.0)]).unwrap();
    assert_eq!(support(forced, &logits, 200), BTreeSet::from([2]));
    let banned = greedy().with_logit_bias(vec![(0, -100.0)]).unwrap();
    assert_eq!(pick(banned, &logits, &SampleContext::default()), 1);
}

#[test]
fn min_tokens_masks_eos_and_stop_tokens_until_reached() {
    let logits = [5.0, 4.0, 1.0];
    let p = greedy().with_min_tokens(2).unwrap().with_ignore_eos(true);
    let at = |p: &SamplingParams, output: &[u32]| {
        pick(p.clone(), &logits, &SampleContext { prompt: &[7], output, eos_ids: &[0] })
    };
    assert_eq!(at(&p, &[]), 1);
    assert_eq!(at(&p, &[2]), 1);
    assert_eq!(at(&p, &[2, 2]), 0);
    let stop = p.with_stop_token_ids(vec![1]);
    assert_eq!(at(&stop, &[2]), 2);
    assert_eq!(at(&stop, &[2, 2]), 0);
    // Sampled too: eos never drawn before min_tokens.
    let mut s = Sampler::new(seeded(1.0).with_min_tokens(1).unwrap());
    let ctx = SampleContext { prompt: &[], output: &[], eos_ids: &[0] };
    assert!((0..200).all(|_| s.sample(&mut logits.to_vec(), &ctx).id != 0));
}

/// Log-softmax in f64, independently of the sampler.
fn reference_logprobs(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let lse = max + logits.iter().map(|&x| (f64::from(x) - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&x| f64::from(x) - lse).collect()
}

#[test]
fn logprobs_are_raw_and_top_alternatives_sorted() {
    let logits: Vec<f32> = (0..300).map(|i| ((i * 37 % 101) as f32 * 0.13).sin() * 6.0).collect();
    let want = reference_logprobs(&logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| want[b].total_cmp(&want[a]).then(a.cmp(&b)));
    // Penalties and temperature do not change the reported (raw) logprobs.
    let params = seeded(0.7).with_logprobs(Some(5)).unwrap().with_repetition_penalty(1.3).unwrap();
    let mut s = Sampler::new(params);
    let ctx = SampleContext { prompt: &[order[0] as u32], output: &[3], eos_ids: &[] };
    for _ in 0..50 {
        let t = s.sample(&mut logits.clone(), &ctx);
        assert!((f64::from(t.logprob) - want[t.id as usize]).abs() < 1e-5);
        assert_eq!(t.top_logprobs.len(), 5);
        for (&(id, lp), &expect) in t.top_logprobs.iter().zip(&order) {
            assert_eq!(id as usize, expect);
            assert!((f64::from(lp) - want[expect]).abs() < 1e-5);
        }
    }
    let only = greedy().with_logprobs(Some(0)).unwrap();
    let t = Sampler::new(only).sample(&mut logits.clone(), &SampleContext::default());
    assert_eq!(t.id as usize, order[0]);
    assert!((f64::from(t.logprob) - want[order[0]]).abs() < 1e-5 && t.top_logprobs.is_empty());
    let none = Sampler::new(seeded(1.0)).sample(&mut logits.clone(), &SampleContext::default());
    assert_eq!((none.logprob, none.top_logprobs.len()), (0.0, 0));
    // Ties: lower id first; more alternatives than tokens: all of them.
    let ties = greedy().with_logprobs(Some(20)).unwrap();
    let t = Sampler::new(ties).sample(&mut [1.0, 3.0, 3.0, 2.0], &SampleContext::default());
    let ids: Vec<u32> = t.top_logprobs.iter().map(|&(id, _)| id).collect();
    assert_eq!((t.id, ids), (1, vec![1, 2, 3, 0]));
}

#[test]
fn degenerate_rows_do_not_panic() {
    let ctx = SampleContext::default();
    let all_params = [greedy(), seeded(1.0), seeded(0.5).with_top_p(0.5).unwrap().with_top_k(Some(2)).unwrap()];
    for params in all_params {
        let params = params.with_logprobs(Some(3)).unwrap();
        let mut s = Sampler::new(params.clone());
        let t = s.sample(&mut [f32::NEG_INFINITY; 8], &ctx);
        assert!(t.id < 8 && t.top_logprobs.len() == 3 && !t.logprob.is_nan());
        assert!(s.sample(&mut [f32::NAN; 8], &ctx).id < 8);
        assert!(s.sample(&mut [], &ctx).top_logprobs.is_empty());
        assert_eq!(s.sample(&mut [f32::NAN, 1.0, f32::NAN, f32::NEG_INFINITY], &ctx).id, 1);
        // Everything masked by min_tokens: the raw argmax.
        let masked = params.with_min_tokens(1).unwrap();
        let ctx_all = SampleContext { prompt: &[], output: &[], eos_ids: &[0, 1, 2] };
        assert_eq!(Sampler::new(masked).sample(&mut [0.1, 0.9, 0.3], &ctx_all).id, 1);
    }
    // Tiny temperatures neither overflow nor divide into NaN.
    let cold = seeded(1e-30);
    assert_eq!(support(cold, &[0.5, 0.2, 0.4], 20), BTreeSet::from([0]));
}

#[test]
#[ignore]
fn tmp_perf() {
    let v = 49152;
    let logits: Vec<f32> = (0..v).map(|i| ((i as f32 * 0.7361).sin() * 8.0)).collect();
    let prompt: Vec<u32> = (0..2000).map(|i| (i * 7919 % v) as u32).collect();
    let output: Vec<u32> = (0..500).map(|i| (i * 104729 % v) as u32).collect();
    let cases = [
        ("greedy", greedy()),
        ("greedy+pen+lp", greedy().with_repetition_penalty(1.1).unwrap().with_frequency_penalty(0.5).unwrap().with_logprobs(Some(5)).unwrap()),
        ("t=1", seeded(1.0)),
        ("t=1 top_k50", seeded(1.0).with_top_k(Some(50)).unwrap()),
        ("t=0.8 top_p0.9", seeded(0.8).with_top_p(0.9).unwrap()),
        ("t=1 top_p0.95 (flat)", seeded(3.0).with_top_p(0.95).unwrap()),
        ("t=0.7 k40 p0.9 minp0.05 +pen +lp", seeded(0.7).with_top_k(Some(40)).unwrap().with_top_p(0.9).unwrap().with_min_p(0.05).unwrap().with_repetition_penalty(1.1).unwrap().with_presence_penalty(0.5).unwrap().with_logprobs(Some(5)).unwrap()),
    ];
    for (name, p) in cases {
        let mut s = Sampler::new(p);
        let ctx = SampleContext { prompt: &prompt, output: &output, eos_ids: &[0] };
        let mut row = logits.clone();
        let n = 300;
        let t0 = std::time::Instant::now();
        for _ in 0..n {
            row.copy_from_slice(&logits);
            std::hint::black_box(s.sample(&mut row, &ctx));
        }
        println!("{name:40} {:8.1} us/token", t0.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
}

#[test]
#[ignore]
fn tmp_parts() {
    let v = 49152;
    let logits: Vec<f32> = (0..v).map(|i| ((i as f32 * 0.7361).sin() * 8.0)).collect();
    let n = 300;
    let time = |name: &str, f: &mut dyn FnMut() -> f32| {
        let t0 = std::time::Instant::now();
        let mut acc = 0.0;
        for _ in 0..n { acc += std::hint::black_box(f()); }
        println!("{name:30} {:8.1} us  ({acc})", t0.elapsed().as_secs_f64() * 1e6 / n as f64);
    };
    let mut row = logits.clone();
    time("copy", &mut || { row.copy_from_slice(&logits); row[5] });
    time("argmax", &mut || argmax(std::hint::black_box(&logits)) as f32);
    time("exp sum f64", &mut || logits.iter().map(|&x| f64::from((x - 8.0).exp())).sum::<f64>() as f32);
    time("exp sum f32", &mut || logits.iter().map(|&x| (x - 8.0).exp()).sum::<f32>());
    let mut cand: Vec<u32> = Vec::new();
    time("push all", &mut || { cand.clear(); for (i, &x) in logits.iter().enumerate() { if x > f32::NEG_INFINITY { cand.push(i as u32) } } cand.len() as f32 });
    time("select k=50", &mut || { cand.clear(); cand.extend(0..v as u32); cand.select_nth_unstable_by(49, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b))); cand[0] as f32 });
}
