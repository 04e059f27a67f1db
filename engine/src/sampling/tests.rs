use std::collections::BTreeSet;

use rand::{rngs::StdRng, Rng, SeedableRng};

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
fn the_lists_are_capped_and_shared_by_clones_not_copied() {
    let p = greedy()
        .with_stop(vec!["y".repeat(MAX_STOP_BYTES); MAX_STOP])
        .and_then(|p| p.with_stop_token_ids(vec![1; MAX_STOP_TOKEN_IDS]))
        .and_then(|p| p.with_logit_bias((0..MAX_LOGIT_BIAS_ENTRIES as u32).map(|i| (i, 1.0)).collect()))
        .and_then(|p| p.with_n(MAX_N))
        .expect("at the caps is fine");
    let q = p.clone();
    assert!(std::sync::Arc::ptr_eq(p.stop(), q.stop()));
    assert!(std::ptr::eq(p.stop_token_ids(), q.stop_token_ids()));
    assert!(std::ptr::eq(p.logit_bias(), q.logit_bias()));
    let (a, b) = (Sampler::for_sample(p.clone(), 0), Sampler::for_sample(p.clone(), 1));
    assert!(std::ptr::eq(a.params().logit_bias(), b.params().logit_bias()), "samples share them too");
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
        (rejected(p.clone().with_stop(vec!["a".into(), "y".repeat(MAX_STOP_BYTES + 1)])), "stop", "1025"),
        (rejected(p.clone().with_stop_token_ids(vec![1; MAX_STOP_TOKEN_IDS + 1])), "stop_token_ids", "1025"),
        (rejected(p.clone().with_logit_bias((0..301).map(|i| (i, 1.0)).collect())), "logit_bias", "301"),
    ];
    for ((field, reason), want, value) in cases {
        assert_eq!(field, want, "{reason}");
        assert!(reason.contains(value), "{field}: {reason:?} should mention {value}");
    }
    let vocab = p.clone().with_logit_bias(vec![(1, -100.0), (9, 100.0)]).unwrap().with_stop_token_ids(vec![2]).unwrap();
    assert!(vocab.check_vocab(10).is_ok());
    assert_eq!(rejected(vocab.check_vocab(9)).0, "logit_bias");
    let stop = p.with_stop_token_ids(vec![0, 10]).unwrap();
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
    let stop = p.with_stop_token_ids(vec![1]).unwrap();
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
        assert!((f64::from(t.logprob) - want[t.id as usize]).abs() < 1e-5, "{} vs {}", t.logprob, want[t.id as usize]);
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
fn draws_follow_the_distribution() {
    let probs = [0.5f64, 0.3, 0.15, 0.05];
    let logits: Vec<f32> = probs.iter().map(|&p| p.ln() as f32).collect();
    // Temperature 2 flattens to p^(1/2), renormalized.
    let root: Vec<f64> = probs.iter().map(|p| p.sqrt()).collect();
    let hot: Vec<f64> = root.iter().map(|r| r / root.iter().sum::<f64>()).collect();
    // Both the short-list (top-k) and the whole-row paths.
    for (params, want) in [
        (seeded(1.0), probs.to_vec()),
        (seeded(1.0).with_top_k(Some(4)).unwrap(), probs.to_vec()),
        (seeded(2.0), hot.clone()),
        (seeded(2.0).with_top_k(Some(10)).unwrap(), hot),
    ] {
        let mut s = Sampler::new(params);
        let mut counts = [0usize; 4];
        let draws = 20_000;
        for _ in 0..draws {
            counts[s.sample(&mut logits.clone(), &SampleContext::default()).id as usize] += 1;
        }
        for (c, p) in counts.iter().zip(&want) {
            // > 4 standard deviations.
            assert!((*c as f64 / draws as f64 - p).abs() < 0.015, "{counts:?} vs {want:?}");
        }
    }
}

#[test]
fn large_top_k_takes_the_whole_row_path() {
    let rising: Vec<f32> = (0..1000).map(|i| i as f32 * 0.01).collect();
    let k500 = support(seeded(1.0).with_top_k(Some(500)).unwrap(), &rising, 5000);
    let lowest = *k500.first().unwrap();
    assert!((500..600).contains(&lowest), "{lowest}");
    // Ties: the lower ids.
    let k300 = support(seeded(1.0).with_top_k(Some(300)).unwrap(), &[0.0; 1000], 5000);
    assert!(k300.iter().all(|&id| id < 300) && k300.len() > 250, "{} tokens", k300.len());
}

/// A row of values in `0..levels` steps of `step` (so with ties), some NaN when `nan`.
fn random_row(seed: u64, len: usize, levels: u32, step: f32, nan: bool) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len)
        .map(|_| if nan && rng.random_ratio(1, 20) { f32::NAN } else { rng.random_range(0..levels) as f32 * step })
        .collect()
}

/// Ids in the documented order: value descending (NaN as -inf), lower id first.
fn reference_order(xs: &[f32]) -> Vec<u32> {
    let k = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let mut ids: Vec<u32> = (0..xs.len() as u32).collect();
    ids.sort_by(|&a, &b| k(xs[b as usize]).total_cmp(&k(xs[a as usize])).then(a.cmp(&b)));
    ids
}

#[test]
fn fast_exp_is_accurate() {
    let mut worst = 0.0f64;
    for i in 0..=200_000 {
        let x = -87.0 + 175.0 * i as f32 / 200_000.0;
        let want = f64::from(x).exp();
        worst = worst.max(((f64::from(exp(x)) - want) / want).abs());
    }
    assert!(worst < 4e-7, "relative error {worst}");
    assert_eq!(exp(0.0), 1.0);
    assert_eq!((exp(f32::NEG_INFINITY), exp(f32::NAN), exp(-100.0)), (0.0, 0.0, 0.0));
}

#[test]
fn row_primitives_match_their_definitions() {
    for seed in 0..40 {
        let len = [0, 1, 5, 16, 17, 100, 1000, 5000][seed as usize % 8];
        let xs = random_row(seed, len, 50, 0.25, seed % 2 == 0);
        let order = reference_order(&xs);
        assert_eq!(argmax(&xs), order.first().map_or(0, |&i| if xs[i as usize].is_nan() { 0 } else { i }));
        let finite: Vec<f32> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
        let (max, total) = (finite.iter().copied().fold(f32::NEG_INFINITY, f32::max), finite.iter().sum::<f32>());
        assert_eq!(row_max(&xs), max);
        assert!((sum(&finite) - f64::from(total)).abs() < 1e-3);
        let mut top = Vec::new();
        for k in [0, 1, 3, 20, 64, 2000] {
            top_few(&xs, k, &mut top);
            let ids: Vec<u32> = top.iter().map(|r| r.id).collect();
            assert_eq!(ids, order[..k.min(len)], "seed {seed} k {k}");
        }
    }
}

#[test]
fn cuts_match_a_full_sort() {
    let (mut hist, mut members) = (Vec::new(), Vec::new());
    let rows = (0..30u64).map(|seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        let len = [3, 100, 3000][seed as usize % 3];
        let row: Vec<f32> = match seed % 3 {
            // Spread weights with ties and zeros.
            0 => {
                random_row(seed, len, 40, 0.5, false).iter().map(|&x| if x > 19.0 { 0.0 } else { (-x).exp() }).collect()
            }
            // Clustered: one histogram bucket, which the radix levels must split.
            1 => (0..len).map(|_| 0.5 + rng.random_range(0..500) as f32 * 1e-6).collect(),
            _ => vec![1.0; len],
        };
        (seed, row)
    });
    for (seed, w) in rows {
        let order = reference_order(&w);
        let positive = w.iter().filter(|&&x| x > 0.0).count();
        for k in [1, 2, 10, 50, 1500, 5000] {
            let want = (k <= positive).then(|| order[k - 1]);
            let got = cut(&w, CutBy::Count, k as f64, &mut hist, &mut members).map(|(_, id)| id);
            assert_eq!(got, want, "seed {seed} count {k}");
        }
        let total: f64 = w.iter().map(|&x| f64::from(x)).sum();
        for frac in [0.1, 0.5, 0.9, 0.999] {
            let target = total * frac;
            let mut cum = 0.0;
            let want = order.iter().find(|&&i| {
                cum += f64::from(w[i as usize]);
                cum >= target
            });
            let got = cut(&w, CutBy::Mass, target, &mut hist, &mut members).map(|(_, id)| id);
            assert_eq!(got, want.copied(), "seed {seed} mass {frac}");
        }
        // Zeroing after the cut leaves exactly the prefix.
        if let Some(last) = cut(&w, CutBy::Count, 7.0, &mut hist, &mut members) {
            let mut z = w.clone();
            zero_after(&mut z, last);
            let kept: BTreeSet<u32> = (0..z.len() as u32).filter(|&i| z[i as usize] > 0.0).collect();
            assert_eq!(kept, order[..7].iter().copied().collect());
        }
    }
}
