//! CPU bodies of the paged attention kernels: the CPU path and the reference the CUDA
//! kernels are checked against. rayon over (query row, head); scores and softmax in f32.

use rayon::prelude::*;

use super::PagedAttentionMeta;
use crate::elem::Elem;

/// Shapes of one call: `q` `[num_tokens, heads, head_dim]`, caches with `kv_heads` heads.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Streaming-softmax state over a run of keys: running max, sum of weights and the
/// weighted sum of values (unnormalised).
struct Partial {
    max: f32,
    denom: f32,
    acc: Vec<f32>,
}

impl Partial {
    /// Attends `qrow` to the context positions `range` (all visible to it).
    fn over<T: Elem>(
        qrow: &[T],
        range: std::ops::Range<usize>,
        kv: impl Fn(usize) -> usize,
        k: &[T],
        v: &[T],
        scale: f32,
    ) -> Self {
        let d = qrow.len();
        let scores: Vec<f32> = range.clone().map(|p| dot(qrow, &k[kv(p)..][..d]) * scale).collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut acc = vec![0f32; d];
        let mut denom = 0f32;
        for (p, s) in range.zip(&scores) {
            let w = (s - max).exp();
            denom += w;
            for (a, x) in acc.iter_mut().zip(&v[kv(p)..][..d]) {
                *a += w * x.to_f32();
            }
        }
        Partial { max, denom, acc }
    }

    /// Combines the partials of disjoint key ranges (the split-K reduction).
    fn merge(parts: &[Partial], d: usize) -> Partial {
        let max = parts.iter().map(|p| p.max).fold(f32::NEG_INFINITY, f32::max);
        let mut acc = vec![0f32; d];
        let mut denom = 0f32;
        for p in parts.iter().filter(|p| p.max != f32::NEG_INFINITY) {
            let e = (p.max - max).exp();
            denom += p.denom * e;
            for (a, x) in acc.iter_mut().zip(&p.acc) {
                *a += x * e;
            }
        }
        Partial { max, denom, acc }
    }
}

/// Varlen causal attention over the paged cache. `partition` = `Some(n)` computes each row's
/// context in chunks of `n` keys and merges them the way the split-K GPU kernel does.
pub(super) fn attention<T: Elem>(
    meta: &PagedAttentionMeta,
    q: &[T],
    k: &[T],
    v: &[T],
    dims: Dims,
    scale: f32,
    partition: Option<usize>,
) -> Vec<T> {
    let Dims { heads, kv_heads, head_dim } = dims;
    let num_tokens = q.len() / (heads * head_dim);
    let group = heads / kv_heads;
    let bs = meta.block_size;
    // Row -> sequence index, so every (row, head) task finds its context directly.
    let mut row_seq = Vec::with_capacity(num_tokens);
    for (i, s) in meta.seqs.iter().enumerate() {
        row_seq.extend(std::iter::repeat_n(i, s.query_len as usize));
    }
    let mut out = vec![T::from_f32(0.0); q.len()];
    out.par_chunks_mut(head_dim).enumerate().for_each(|(task, out_row)| {
        let (t, h) = (task / heads, task % heads);
        let seq = row_seq[t];
        let span = meta.seqs[seq];
        let table = &meta.block_tables[seq * meta.max_blocks_per_seq..];
        // Causal: this row is token `pos` of its context and sees tokens 0..=pos.
        let pos = (span.context_len - span.query_len) as usize + (t - span.query_start as usize);
        let g = h / group;
        let qrow = &q[(t * heads + h) * head_dim..][..head_dim];
        let kv = |p: usize| {
            let slot = table[p / bs] as usize * bs + p % bs;
            (slot * kv_heads + g) * head_dim
        };
        let part = match partition {
            None => Partial::over(qrow, 0..pos + 1, kv, k, v, scale),
            Some(n) => {
                let parts: Vec<Partial> = (0..=pos)
                    .step_by(n)
                    .map(|start| Partial::over(qrow, start..(start + n).min(pos + 1), kv, k, v, scale))
                    .collect();
                Partial::merge(&parts, head_dim)
            }
        };
        for (o, a) in out_row.iter_mut().zip(&part.acc) {
            *o = T::from_f32(a / part.denom);
        }
    });
    out
}

/// Dot product in f32 over eight independent partial sums, so the compiler can vectorize it
/// (a single running sum is a serial chain of dependent adds).
#[inline]
fn dot<T: Elem>(a: &[T], b: &[T]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let (a_main, a_tail) = a.split_at(a.len() - a.len() % LANES);
    let (b_main, b_tail) = b.split_at(a_main.len());
    for (ca, cb) in a_main.chunks_exact(LANES).zip(b_main.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += ca[l].to_f32() * cb[l].to_f32();
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x.to_f32() * y.to_f32()).sum();
    acc.iter().sum::<f32>() + tail
}
