//! The CPU path of `sample_rows` on hand-made rows (exact kept sets, boundaries, fallbacks),
//! against a naive full-sort reference, statistically, and on every error.

use super::cpu::{exp, fixed};
use super::*;

const NEG: f32 = f32::NEG_INFINITY;
/// The largest f32 below 1: the draw lands on the last kept token (in vocabulary order).
const TOP: f32 = 1.0 - f32::EPSILON / 2.0;

fn greedy() -> RowSampling {
    RowSampling { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, uniform: 0.0 }
}

fn samp(temperature: f32, top_k: u32, top_p: f32, min_p: f32, uniform: f32) -> RowSampling {
    RowSampling { temperature, top_k, top_p, min_p, uniform }
}

fn adj(row: u32, token: u32) -> LogitAdjust {
    LogitAdjust { row, token, bias: 0.0, pos_scale: 1.0, neg_scale: 1.0, add: 0.0 }
}

fn tensor(rows: &[&[f32]]) -> Tensor {
    let vocab = rows.first().map_or(0, |r| r.len());
    let data: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(data, (rows.len(), vocab), &Device::Cpu).expect("rows of one length")
}

fn one(row: &[f32], p: RowSampling, adjust: &[LogitAdjust]) -> u32 {
    sample_rows(&tensor(&[row]), &[p], adjust).expect("valid call")[0]
}

/// First and last kept token in vocabulary order (uniform 0 and just below 1).
fn ends(row: &[f32], p: RowSampling) -> (u32, u32) {
    (one(row, RowSampling { uniform: 0.0, ..p }, &[]), one(row, RowSampling { uniform: TOP, ..p }, &[]))
}

/// The semantics the slow way: a full sort, explicit cuts, then the draw. `Err(token)` for a
/// row decided without a draw, else `Ok((kept tokens in vocabulary order, their weights))`.
fn reference_kept(row: &[f32], p: &RowSampling, adjust: &[LogitAdjust]) -> std::result::Result<(Vec<usize>, Vec<f32>), u32> {
    let nan_neg = |x: f32| if x.is_nan() { NEG } else { x };
    let raw: Vec<f32> = row.iter().map(|&x| nan_neg(x)).collect();
    let mut x = raw.clone();
    for a in adjust {
        x[a.token as usize] = a.apply(x[a.token as usize]);
    }
    let argmax = |v: &[f32]| {
        let mut best = 0;
        for (i, &xi) in v.iter().enumerate() {
            if xi > v[best] {
                best = i;
            }
        }
        best as u32
    };
    let a = argmax(&x);
    if x[a as usize] == NEG {
        return Err(argmax(&raw));
    }
    if p.temperature == 0.0 || p.top_k == 1 || x[a as usize] == f32::INFINITY {
        return Err(a);
    }
    let m = x[a as usize];
    let w: Vec<f32> = x.iter().map(|&xi| exp((xi - m) / p.temperature)).collect();
    let mut order: Vec<usize> = (0..x.len()).filter(|&i| w[i] > 0.0).collect();
    order.sort_by(|&i, &j| x[j].partial_cmp(&x[i]).expect("no NaN").then(i.cmp(&j)));
    if p.top_k > 0 {
        order.truncate(p.top_k as usize);
    }
    let total: u64 = order.iter().map(|&i| fixed(w[i])).sum();
    let need = (f64::from(p.top_p) * total as f64).ceil() as u64;
    let mut cum = 0;
    let len = order.iter().position(|&i| {
        cum += fixed(w[i]);
        cum >= need
    });
    order.truncate(len.map_or(order.len(), |l| l + 1));
    order.retain(|&i| w[i] >= p.min_p);
    order.sort_unstable();
    Ok((order, w))
}

fn reference(row: &[f32], p: &RowSampling, adjust: &[LogitAdjust]) -> u32 {
    let (kept, w) = match reference_kept(row, p, adjust) {
        Ok(k) => k,
        Err(token) => return token,
    };
    let total: u64 = kept.iter().map(|&i| fixed(w[i])).sum();
    let target = (f64::from(p.uniform) * total as f64) as u64;
    let mut cum = 0;
    *kept
        .iter()
        .find(|&&i| {
            cum += fixed(w[i]);
            target < cum
        })
        .expect("target below the total") as u32
}

/// Deterministic pseudo-random numbers in [0, 1).
fn lcg(state: &mut u64) -> f32 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*state >> 40) as f32 / (1u64 << 24) as f32
}

#[test]
fn greedy_is_argmax_first_on_ties_nan_as_neg_inf() {
    assert_eq!(one(&[1.0, 3.0, f32::NAN, 3.0, 2.0], greedy(), &[]), 1);
    assert_eq!(one(&[f32::NAN, -1.0, -1.0], greedy(), &[]), 1);
    assert_eq!(one(&[-0.0, 0.0], greedy(), &[]), 0);
    assert_eq!(one(&[0.0, -0.0, 0.0], samp(1.0, 0, 1.0, 0.0, 0.0), &[]), 0);
    // top_k == 1 is greedy whatever the temperature and the draw.
    for u in [0.0, 0.5, TOP] {
        assert_eq!(one(&[1.0, 3.0, 2.9, 3.0], samp(5.0, 1, 1.0, 0.0, u), &[]), 1);
    }
}

#[test]
fn all_masked_falls_back_to_the_raw_argmax() {
    let row = [1.0, 5.0, 2.0, 5.0];
    let ban: Vec<LogitAdjust> = (0..4).map(|t| LogitAdjust { add: NEG, ..adj(0, t) }).collect();
    assert_eq!(one(&row, greedy(), &ban), 1);
    assert_eq!(one(&row, samp(1.0, 0, 0.9, 0.1, 0.7), &ban), 1);
    assert_eq!(one(&[NEG, NEG, f32::NAN], greedy(), &[]), 0);
    assert_eq!(one(&[NEG, NEG, f32::NAN], samp(1.0, 3, 0.5, 0.0, 0.5), &[]), 0);
    // NaN produced by the adjustment counts as -inf too (-inf + inf).
    let nan = [LogitAdjust { add: f32::INFINITY, ..adj(0, 1) }];
    assert_eq!(one(&[NEG, NEG, -3.0], greedy(), &nan), 2);
}

#[test]
fn infinity_takes_everything() {
    let row = [1.0, f32::INFINITY, 3.0, f32::INFINITY];
    assert_eq!(ends(&row, samp(1.0, 0, 1.0, 0.0, 0.0)), (1, 1));
    assert_eq!(ends(&row, samp(0.5, 3, 0.3, 0.5, 0.0)), (1, 1));
    assert_eq!(one(&[1.0, 2.0], samp(1.0, 0, 1.0, 0.0, TOP), &[LogitAdjust { bias: f32::INFINITY, ..adj(0, 0) }]), 0);
}

#[test]
fn tied_values_keep_lower_indices_first() {
    // Order: 0, 2, 4 (value 2), then 1, 3 (value 1), then 5.
    let row = [2.0, 1.0, 2.0, 1.0, 2.0, 0.0];
    assert_eq!(ends(&row, samp(1.0, 2, 1.0, 0.0, 0.0)), (0, 2));
    assert_eq!(ends(&row, samp(1.0, 3, 1.0, 0.0, 0.0)), (0, 4));
    assert_eq!(ends(&row, samp(1.0, 4, 1.0, 0.0, 0.0)), (0, 4));
    assert_eq!(ends(&row, samp(1.0, 5, 1.0, 0.0, 0.0)), (0, 4));
    assert_eq!(ends(&row, samp(1.0, 0, 1.0, 0.0, 0.0)), (0, 5));
    assert_eq!(ends(&row, samp(1.0, 100, 1.0, 0.0, 0.0)), (0, 5));
    // Ties at the top-k boundary decided by index: value 1 at 0 and 3; k = 2 keeps 0 only.
    let row = [1.0, 3.0, 0.0, 1.0];
    assert_eq!(ends(&row, samp(1.0, 2, 1.0, 0.0, 0.0)), (0, 1));
    assert_eq!(ends(&row, samp(1.0, 3, 1.0, 0.0, 0.0)), (0, 3));
}

#[test]
fn top_p_keeps_the_prefix_just_reaching_p() {
    // Four equal weights of exactly 1: each token is a quarter of the mass.
    let row = [0.0; 4];
    assert_eq!(ends(&row, samp(1.0, 0, 0.25, 0.0, 0.0)), (0, 0));
    assert_eq!(ends(&row, samp(1.0, 0, 0.5, 0.0, 0.0)), (0, 1));
    let above_half = f32::from_bits(0.5f32.to_bits() + 1);
    assert_eq!(ends(&row, samp(1.0, 0, above_half, 0.0, 0.0)), (0, 2));
    assert_eq!(ends(&row, samp(1.0, 0, 0.75, 0.0, 0.0)), (0, 2));
    assert_eq!(ends(&row, samp(1.0, 0, 0.76, 0.0, 0.0)), (0, 3));
    // Top-p is relative to what top-k kept: half of two tokens is one.
    assert_eq!(ends(&row, samp(1.0, 2, 0.5, 0.0, 0.0)), (0, 0));
    assert_eq!(ends(&row, samp(1.0, 2, 0.51, 0.0, 0.0)), (0, 1));
    // Unequal weights, the boundary found on the fixed-point masses.
    let row = [-1.0, 0.0, -0.5, -2.0];
    let q: Vec<u64> = row.iter().map(|&x| fixed(exp(x))).collect();
    let total: u64 = q.iter().sum();
    let reach = q[1] + q[2]; // the order is 1, 2, 0, 3
    // The largest p whose target is still `reach`, then the next f32 up.
    let mut p = (reach as f64 / total as f64) as f32;
    while (f64::from(p) * total as f64).ceil() as u64 > reach {
        p = f32::from_bits(p.to_bits() - 1);
    }
    while (f64::from(f32::from_bits(p.to_bits() + 1)) * total as f64).ceil() as u64 <= reach {
        p = f32::from_bits(p.to_bits() + 1);
    }
    assert_eq!(ends(&row, samp(1.0, 0, p, 0.0, 0.0)), (1, 2));
    assert_eq!(ends(&row, samp(1.0, 0, f32::from_bits(p.to_bits() + 1), 0.0, 0.0)), (0, 2));
}

#[test]
fn min_p_drops_weights_below_it() {
    // Weights 1, e^-1 (0.37), e^-2 (0.14), e^-3 (0.05).
    let row = [0.0, -1.0, -2.0, -3.0];
    assert_eq!(ends(&row, samp(1.0, 0, 1.0, 0.2, 0.0)), (0, 1));
    assert_eq!(ends(&row, samp(1.0, 0, 1.0, 0.13, 0.0)), (0, 2));
    assert_eq!(ends(&row, samp(1.0, 0, 1.0, 1.0, 0.0)), (0, 0));
    assert_eq!(ends(&row, samp(1.0, 0, 1.0, exp(-1.0), 0.0)), (0, 1)); // w == min_p stays
    // Temperature 2 flattens: weights 1, 0.61, 0.37, 0.22.
    assert_eq!(ends(&row, samp(2.0, 0, 1.0, 0.3, 0.0)), (0, 2));
    // Combined with top-k: the stricter cut wins.
    assert_eq!(ends(&row, samp(2.0, 2, 1.0, 0.3, 0.0)), (0, 1));
}

#[test]
fn adjustments_follow_the_cpu_samplers_order() {
    // Bias.
    assert_eq!(one(&[1.0, 2.0], greedy(), &[LogitAdjust { bias: 2.0, ..adj(0, 0) }]), 0);
    // Repetition penalty by the sign of x + bias: 3 → 1, -1 → -2 (scale 1/3 up, 2 down).
    let rep = |t| LogitAdjust { pos_scale: 1.0 / 3.0, neg_scale: 2.0, ..adj(0, t) };
    assert_eq!(one(&[3.0, -1.0, 1.5], greedy(), &[rep(0)]), 2);
    assert_eq!(one(&[3.0, -1.0, -1.5], greedy(), &[rep(1)]), 0);
    assert_eq!(one(&[-1.0, -1.9], greedy(), &[rep(0)]), 1); // -1 → -2 < -1.9
    // The bias applies before the sign test: -1 + 2 = 1 > 0 is scaled by pos_scale.
    let both = LogitAdjust { bias: 2.0, pos_scale: 0.5, neg_scale: 10.0, ..adj(0, 0) };
    assert_eq!(one(&[-1.0, 0.6], greedy(), &[both]), 1); // 0.5 < 0.6
    assert_eq!(one(&[-1.0, 0.4], greedy(), &[both]), 0); // 0.5 > 0.4
    // Presence / frequency penalties subtract after the scaling: (2 · 0.5) - 0.5 = 0.5.
    let pen = LogitAdjust { pos_scale: 0.5, add: -0.5, ..adj(0, 0) };
    assert_eq!(one(&[2.0, 0.6], greedy(), &[pen]), 1);
    // A -inf ban, in greedy and sampled rows, touching only its own row.
    let ban = LogitAdjust { add: NEG, ..adj(1, 0) };
    let ids = sample_rows(&tensor(&[&[5.0, 1.0], &[5.0, 1.0]]), &[greedy(), greedy()], &[ban]).expect("valid");
    assert_eq!(ids, [0, 1]);
    let p = samp(1.0, 0, 1.0, 0.0, 0.0);
    let ids = sample_rows(&tensor(&[&[5.0, 1.0], &[5.0, 1.0]]), &[p, p], &[ban]).expect("valid");
    assert_eq!(ids, [0, 1]);
}

#[test]
fn frequencies_follow_the_kept_weights() {
    let vocab = 50;
    let mut s = 7;
    let row: Vec<f32> = (0..vocab).map(|_| -3.0 * lcg(&mut s)).collect();
    let p = samp(0.8, 30, 0.9, 0.05, 0.0);
    let (kept, w) = reference_kept(&row, &p, &[]).expect("a sampled row");
    assert!(kept.len() > 5 && kept.len() <= 30, "{} kept", kept.len());
    let draws = 20_000;
    let logits = tensor(&[&row]).broadcast_as((draws, vocab)).expect("broadcast"); // row stride 0
    let rows: Vec<RowSampling> =
        (0..draws).map(|j| RowSampling { uniform: (j as f32 + 0.5) / draws as f32, ..p }).collect();
    let ids = sample_rows(&logits, &rows, &[]).expect("valid");
    let mut count = vec![0usize; vocab];
    ids.iter().for_each(|&i| count[i as usize] += 1);
    let total: f64 = kept.iter().map(|&i| fixed(w[i]) as f64).sum();
    for (i, &c) in count.iter().enumerate() {
        let expected = if kept.contains(&i) { draws as f64 * fixed(w[i]) as f64 / total } else { 0.0 };
        assert!((c as f64 - expected).abs() <= 1.5, "token {i}: {c} draws, {expected:.2} expected");
    }
}

#[test]
fn matches_the_full_sort_reference() {
    let mut s = 11;
    for case in 0..1000 {
        let vocab = [7, 64, 1000, 5000, 3][case % 5];
        // Coarse values (many ties, as bf16 rows have) or fine ones, spread widely or narrowly.
        let coarse = case % 3 != 1;
        let scale = [8.0, 30.0, 0.01][case % 7 % 3];
        let row: Vec<f32> = (0..vocab)
            .map(|_| {
                let x = scale * lcg(&mut s) - scale;
                if coarse {
                    (x * 2.0).round() / 2.0
                } else {
                    x
                }
            })
            .collect();
        let p = RowSampling {
            temperature: [0.0, 0.3, 1.0, 2.5, 1e-3][case % 11 % 5],
            top_k: [0, 1, 2, 5, 50, 300, 100_000][case % 13 % 7],
            top_p: [1.0, 0.9, 0.5, 0.99, 0.1, 1e-6][case % 6],
            min_p: [0.0, 0.0, 0.05, 0.3][case % 8 % 4],
            uniform: if case % 17 == 0 { TOP } else { lcg(&mut s) },
        };
        let mut adjust: Vec<LogitAdjust> = (0..(case % 5) as u32)
            .map(|j| LogitAdjust {
                bias: lcg(&mut s) - 0.5,
                pos_scale: 0.8,
                neg_scale: 1.25,
                add: if j == 0 { NEG } else { -lcg(&mut s) },
                ..adj(0, (j * 37 + case as u32) % vocab as u32)
            })
            .collect();
        adjust.sort_by_key(|a| a.token);
        adjust.dedup_by_key(|a| a.token);
        assert_eq!(one(&row, p, &adjust), reference(&row, &p, &adjust), "case {case}: {p:?}");
    }
}

#[test]
fn half_precision_inputs() {
    let row = [0.5, -1.0, 2.0, 2.0, -0.25, 1.5, NEG, 0.0];
    let t = tensor(&[&row]);
    for p in [greedy(), samp(1.0, 3, 1.0, 0.0, TOP), samp(0.7, 0, 0.8, 0.1, 0.6), samp(1.3, 0, 1.0, 0.0, 0.3)] {
        let want = sample_rows(&t, &[p], &[]).expect("f32");
        for dtype in [DType::F16, DType::BF16] {
            let h = t.to_dtype(dtype).expect("cast");
            assert_eq!(sample_rows(&h, &[p], &[]).expect("half"), want, "{dtype:?} {p:?}");
        }
    }
    let nan = Tensor::new(&[[f32::NAN, 1.0]], &Device::Cpu).and_then(|t| t.to_dtype(DType::BF16)).expect("bf16");
    assert_eq!(sample_rows(&nan, &[greedy()], &[]).expect("valid"), [1]);
}

#[test]
fn layouts_and_empty_batches() {
    assert_eq!(sample_rows(&Tensor::zeros((0, 10), DType::F32, &Device::Cpu).expect("t"), &[], &[]).expect("ok"), Vec::<u32>::new());
    assert_eq!(sample_rows(&Tensor::zeros((2, 0), DType::F32, &Device::Cpu).expect("t"), &[greedy(); 2], &[]).expect("ok"), [0, 0]);
    // A transposed (non-contiguous) batch and a row slice of a wider one.
    let base = tensor(&[&[1.0, 5.0, 2.0], &[7.0, 0.0, 3.0]]);
    let t = base.t().expect("t"); // rows (1, 7), (5, 0), (2, 3)
    assert_eq!(sample_rows(&t, &[greedy(); 3], &[]).expect("ok"), [1, 0, 1]);
    let narrow = base.narrow(1, 1, 2).expect("narrow"); // rows (5, 2), (0, 3)
    assert_eq!(sample_rows(&narrow, &[greedy(); 2], &[]).expect("ok"), [0, 1]);
}

#[test]
fn every_error_names_its_argument() {
    let t = tensor(&[&[1.0, 2.0, 3.0]]);
    let err = |logits: &Tensor, rows: &[RowSampling], adjust: &[LogitAdjust], what: &str| {
        let e = sample_rows(logits, rows, adjust).expect_err(what).to_string();
        assert!(e.contains(what), "{e:?} should mention {what}");
    };
    let v = Tensor::new(&[1f32, 2.0], &Device::Cpu).expect("t");
    err(&v, &[greedy()], &[], "2-D");
    err(&t.unsqueeze(0).expect("t"), &[greedy()], &[], "2-D");
    err(&t.to_dtype(DType::U32).expect("t"), &[greedy()], &[], "dtype");
    err(&t, &[], &[], "rows has 0 entries");
    err(&t, &[greedy(); 2], &[], "rows has 2 entries");
    err(&t, &[greedy()], &[adj(1, 0)], "adjust[0].row");
    err(&t, &[greedy()], &[adj(0, 1), adj(0, 3)], "adjust[1].token");
    err(&t, &[greedy()], &[adj(0, 2), adj(0, 1), adj(0, 2)], "two entries for row 0 token 2");
    for bad in [-1.0, f32::NAN] {
        err(&t, &[samp(bad, 0, 1.0, 0.0, 0.0)], &[], "temperature");
    }
    for bad in [0.0, -0.5, 1.01, f32::NAN] {
        err(&t, &[samp(1.0, 0, bad, 0.0, 0.0)], &[], "top_p");
    }
    for bad in [-0.1, 1.01, f32::NAN] {
        err(&t, &[samp(1.0, 0, 1.0, bad, 0.0)], &[], "min_p");
    }
    for bad in [1.0, -0.1, f32::NAN] {
        err(&t, &[samp(1.0, 0, 1.0, 0.0, bad)], &[], "uniform");
    }
}
