//! The CPU path of [`super::sample_rows`], and the reference the CUDA kernel is checked
//! against: rows in parallel (rayon), each an exact transcription of the module's semantics.
//! Per row: linear passes over the vocabulary (conversion and adjustments, max, weights, a
//! value histogram that bounds where a top-k / top-p cut can fall), then selection and
//! sorting over the candidates that histogram leaves, and the draw. The helpers here (`exp`,
//! `key`, `fixed`) have twins in `kernels/cuda/sampling.cu` that must stay bit-identical.

use rayon::prelude::*;

use super::{is_greedy, Adjustments, LogitAdjust, RowSampling};
use crate::elem::Elem;

/// How many of the best candidates top-p sorts first, before trying 16× more.
const NUCLEUS_GUESS: usize = 256;

/// The prefilter's histogram buckets: the high bits of [`ordered`] (sign, exponent, 3 mantissa
/// bits), monotone in the value.
const BUCKET_BITS: u32 = 12;

/// Lanes of the vectorized loops.
const LANES: usize = 16;

/// `exp(x)` to ~2 ulp: Cephes' `expf` polynomial (the engine's sampler uses the same one),
/// every operation a separately rounded f32 op (Rust never contracts to FMA), transcribed op
/// for op in sampling.cu. Below -87 (including -inf and NaN) it returns 0; above 88 it
/// saturates (never reached: the callers pass `(x - max) / T <= 0`).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Rounds to nearest by adding 1.5·2²³: the integer then sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = if x > -87.0 { x } else { -87.0 };
    let xc = if xc < 88.0 { xc } else { 88.0 };
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let two_n = f32::from_bits((t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127)) << 23);
    // Cody–Waite: ln 2 = C1 + C2 with C1 short enough that n·C1 is exact.
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r
        + 0.5;
    let y = (p * (r * r) + r + 1.0) * two_n;
    if x >= -87.0 {
        y
    } else {
        0.0
    }
}

/// NaN counts as -inf.
#[inline(always)]
fn finite_or_neg(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// The f32 bits mapped to a u32 whose unsigned order is the float order (x not NaN; -0 is
/// taken as +0, as they compare equal).
#[inline(always)]
fn ordered(x: f32) -> u32 {
    let b = if x == 0.0 { 0 } else { x.to_bits() };
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Token `i` of value `x` as a u64 whose order is the sampling order: a larger key is earlier
/// (higher value, then lower index), so the maximum key is the argmax with the first index.
#[inline(always)]
pub(crate) fn key(x: f32, i: u32) -> u64 {
    (u64::from(ordered(x)) << 32) | u64::from(u32::MAX - i)
}

#[inline(always)]
fn index(key: u64) -> usize {
    (u32::MAX - key as u32) as usize
}

/// A weight in [0, 1] in 32.32 fixed point, rounded down (exact: a power-of-two scaling).
#[inline(always)]
pub(crate) fn fixed(w: f32) -> u64 {
    (f64::from(w) * 4_294_967_296.0) as u64
}

/// Samples every row: row `r` is `data[start + r * stride..][..vocab]`.
pub(crate) fn sample<T: Elem>(
    data: &[T],
    start: usize,
    stride: usize,
    vocab: usize,
    rows: &[RowSampling],
    adjust: &Adjustments,
) -> Vec<u32> {
    rows.par_iter()
        .enumerate()
        .map_init(Scratch::default, |scratch, (r, p)| {
            sample_row(&data[start + r * stride..][..vocab], p, adjust.row(r), scratch)
        })
        .collect()
}

/// Vocabulary-sized buffers, reused across the rows a worker thread samples (fresh ones would
/// cost page faults on every row).
#[derive(Default)]
pub(crate) struct Scratch {
    /// The adjusted logits.
    x: Vec<f32>,
    /// The weights.
    w: Vec<f32>,
    /// Candidate tokens as keys.
    cand: Vec<u64>,
    /// The prefilter's histogram.
    hist: Vec<u64>,
}

/// Walking the buckets from the top, the first where the amounts reach `need`: every token a
/// cut reaching `need` keeps is in it or above. 0 when they never reach it (no cut).
fn lowest_bucket(hist: &[u64], need: u64) -> usize {
    let mut cum = 0;
    (0..hist.len())
        .rev()
        .find(|&b| {
            cum += hist[b];
            cum >= need
        })
        .unwrap_or(0)
}

/// Largest value, NaN ignored; -inf for an empty or all-NaN row. In lanes the compiler
/// vectorizes.
pub fn row_max(xs: &[f32]) -> f32 {
    let max = |a: f32, b: f32| if b > a { b } else { a };
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = max(*a, x);
        }
    }
    acc.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &x| max(m, x))
}

/// The argmax of a NaN-free row, first index on ties, and the maximum; (0, -inf) when every
/// value is -inf. Its key is the row's maximal key.
fn argmax(xs: &[f32]) -> (usize, f32) {
    let m = row_max(xs);
    (xs.iter().position(|&x| x == m).unwrap_or(0), m)
}

/// One row; `adj` holds the row's adjustments.
pub(crate) fn sample_row<T: Elem>(raw: &[T], p: &RowSampling, adj: &[LogitAdjust], scratch: &mut Scratch) -> u32 {
    let Scratch { x, w, cand, hist } = scratch;
    x.clear();
    x.extend(raw.iter().map(|v| finite_or_neg(v.to_f32())));
    for a in adj {
        let xi = &mut x[a.token as usize];
        *xi = a.apply(*xi);
    }
    let (best, m) = argmax(x);
    if m == f32::NEG_INFINITY {
        // Everything masked: the raw argmax (0 when the raw row is all -inf as well).
        x.clear();
        x.extend(raw.iter().map(|v| finite_or_neg(v.to_f32())));
        return argmax(x).0 as u32;
    }
    if is_greedy(p) || m == f32::INFINITY {
        return best as u32; // an infinite logit has all the probability
    }
    let m = if m == 0.0 { 0.0 } else { m }; // -0 as +0, as the CUDA kernel decodes it
    let t = p.temperature;
    w.clear();
    w.extend(x.iter().map(|&xi| exp((xi - m) / t)));
    let w = &*w;
    let wk = |k: u64| w[index(k)];
    // Prefilter: a histogram over value buckets finds the lowest bucket top-k (by count) or,
    // without it, top-p (by mass) can reach, so only the tokens from there up become
    // candidates. `top_k_mass` is the mass of what top-k keeps, when the histogram knows it.
    let bucket = |xi: f32| (ordered(xi) >> (32 - BUCKET_BITS)) as usize;
    let mut top_k_mass = None;
    let lowest = if p.top_k > 0 || p.top_p < 1.0 {
        hist.clear();
        hist.resize(1 << BUCKET_BITS, 0);
        for (&xi, &wi) in x.iter().zip(w) {
            if wi > 0.0 {
                hist[bucket(xi)] += if p.top_k > 0 { 1 } else { fixed(wi) };
            }
        }
        if p.top_k > 0 {
            lowest_bucket(hist, u64::from(p.top_k))
        } else {
            let total: u64 = hist.iter().sum();
            top_k_mass = Some(total);
            lowest_bucket(hist, (f64::from(p.top_p) * total as f64).ceil() as u64)
        }
    } else {
        0
    };
    // Candidates: the tokens with a weight, as keys (in vocabulary order until permuted).
    cand.clear();
    cand.extend(
        (0u32..)
            .zip(x.iter().zip(w))
            .filter(|&(_, (&xi, &wi))| wi > 0.0 && bucket(xi) >= lowest)
            .map(|(i, (&xi, _))| key(xi, i)),
    );
    let desc = |a: &u64, b: &u64| b.cmp(a);
    let mut in_vocab_order = true;
    if p.top_k > 0 && (p.top_k as usize) < cand.len() {
        // The first k keys of the order (unsorted); keys are distinct, so this is exact.
        cand.select_nth_unstable_by(p.top_k as usize - 1, desc);
        cand.truncate(p.top_k as usize);
        in_vocab_order = false;
    }
    if p.top_p < 1.0 {
        let total = top_k_mass.unwrap_or_else(|| cand.iter().map(|&k| fixed(wk(k))).sum());
        let need = (f64::from(p.top_p) * total as f64).ceil() as u64;
        // The candidates hold the whole nucleus, usually short: sort the best few, then 16×
        // more, ...
        let mut g = NUCLEUS_GUESS.min(cand.len());
        loop {
            if g < cand.len() {
                cand.select_nth_unstable_by(g - 1, desc);
            }
            cand[..g].sort_unstable_by(desc);
            let mut cum = 0u64;
            if let Some(j) = cand[..g].iter().position(|&k| {
                cum += fixed(wk(k));
                cum >= need
            }) {
                cand.truncate(j + 1);
                break;
            }
            if g == cand.len() {
                break; // unreachable: need <= total
            }
            g = (g * 16).min(cand.len());
        }
        in_vocab_order = false;
    }
    if p.min_p > 0.0 {
        cand.retain(|&k| wk(k) >= p.min_p);
    }
    if !in_vocab_order {
        cand.sort_unstable_by_key(|&k| index(k));
    }
    // The draw, in vocabulary order.
    let total: u64 = cand.iter().map(|&k| fixed(wk(k))).sum();
    let target = (f64::from(p.uniform) * total as f64) as u64;
    let mut cum = 0u64;
    for &k in cand.iter() {
        cum += fixed(wk(k));
        if target < cum {
            return index(k) as u32;
        }
    }
    // Not reached (target < total); the last kept token otherwise.
    cand.last().map_or(best, |&k| index(k)) as u32
}
