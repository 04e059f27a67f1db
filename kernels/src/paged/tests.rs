//! The paged kernels against a dense causal attention computed with plain candle ops.

use super::*;
use candle_core::{Device, IndexOp, D};

fn lcg_tensor(seed: u64, shape: &[usize]) -> Tensor {
    crate::testing::lcg_tensor(seed, shape, -0.5, 0.5)
}

/// Dense reference: per sequence, full K/V `[ctx, kvh, d]` and queries = the last rows.
fn dense_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let (tq, heads, _) = q.dims3()?;
    let (ctx, kvh, _) = k.dims3()?;
    let group = heads / kvh;
    let mut rows = Vec::new();
    for h in 0..heads {
        let qh = q.i((.., h, ..))?; // [tq, d]
        let kh = k.i((.., h / group, ..))?; // [ctx, d]
        let vh = v.i((.., h / group, ..))?;
        let scores = (qh.matmul(&kh.t()?)? * scale as f64)?; // [tq, ctx]
        let mask: Vec<f32> = (0..tq)
            .flat_map(|i| {
                (0..ctx).map(move |j| if j <= ctx - tq + i { 0.0 } else { f32::NEG_INFINITY })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (tq, ctx), &Device::Cpu)?;
        let p = candle_core::Tensor::softmax_last_dim(&(scores + mask)?)?;
        rows.push(p.matmul(&vh)?.unsqueeze(1)?);
    }
    Tensor::cat(&rows, 1)
}

trait Softmax {
    fn softmax_last_dim(t: &Tensor) -> Result<Tensor>;
}
impl Softmax for Tensor {
    fn softmax_last_dim(t: &Tensor) -> Result<Tensor> {
        let max = t.max_keepdim(D::Minus1)?;
        let e = t.broadcast_sub(&max)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    }
}

/// Runs a batch of sequences `(computed_before, new_tokens)` through the paged kernels with
/// shuffled block tables, and compares each sequence's output with the dense reference.
fn check(dtype: DType, heads: usize, kvh: usize, d: usize, bs: usize, seqs: &[(usize, usize)]) {
    let dev = Device::Cpu;
    let max_blocks = seqs.iter().map(|(c, n)| (c + n).div_ceil(bs)).max().unwrap();
    let num_blocks = max_blocks * seqs.len();
    let k_cache = Tensor::zeros((num_blocks, bs, kvh, d), dtype, &dev).unwrap();
    let v_cache = Tensor::zeros((num_blocks, bs, kvh, d), dtype, &dev).unwrap();
    // Hand out blocks in a scrambled order so tables are not the identity.
    let mut free: Vec<u32> = (0..num_blocks as u32).collect();
    free.sort_by_key(|&i| (i as u64 * 7919 + 13) % num_blocks as u64);
    let mut meta = PagedAttentionMeta::new(bs, max_blocks);
    let (mut qs, mut full_k, mut full_v, mut slots_new) = (vec![], vec![], vec![], vec![]);
    for (i, &(computed, new)) in seqs.iter().enumerate() {
        let ctx = computed + new;
        let table: Vec<u32> = (0..max_blocks).map(|_| free.pop().unwrap()).collect();
        let k = lcg_tensor(100 + i as u64, &[ctx, kvh, d]).to_dtype(dtype).unwrap();
        let v = lcg_tensor(200 + i as u64, &[ctx, kvh, d]).to_dtype(dtype).unwrap();
        let slots: Vec<i64> = (0..ctx).map(|p| (table[p / bs] as usize * bs + p % bs) as i64).collect();
        // Earlier tokens are written in a first call, the new ones with the batch.
        if computed > 0 {
            let s = Tensor::new(&slots[..computed], &dev).unwrap();
            reshape_and_cache(&k.narrow(0, 0, computed).unwrap(), &k_cache, &s).unwrap();
            reshape_and_cache(&v.narrow(0, 0, computed).unwrap(), &v_cache, &s).unwrap();
        }
        slots_new.extend_from_slice(&slots[computed..]);
        meta.seqs.push(SeqSpan {
            query_start: meta.num_tokens() as u32,
            query_len: new as u32,
            context_len: ctx as u32,
        });
        meta.block_tables.extend_from_slice(&table);
        qs.push(lcg_tensor(300 + i as u64, &[new, heads, d]).to_dtype(dtype).unwrap());
        full_k.push(k);
        full_v.push(v);
    }
    let new_k: Vec<Tensor> = full_k.iter().zip(seqs).map(|(k, &(c, n))| k.narrow(0, c, n).unwrap()).collect();
    let new_v: Vec<Tensor> = full_v.iter().zip(seqs).map(|(v, &(c, n))| v.narrow(0, c, n).unwrap()).collect();
    let slots = Tensor::new(slots_new.as_slice(), &dev).unwrap();
    reshape_and_cache(&Tensor::cat(&new_k, 0).unwrap(), &k_cache, &slots).unwrap();
    reshape_and_cache(&Tensor::cat(&new_v, 0).unwrap(), &v_cache, &slots).unwrap();
    let q = Tensor::cat(&qs, 0).unwrap();
    let scale = 1.0 / (d as f32).sqrt();
    let one_pass = paged_attention(&q, &k_cache, &v_cache, &meta, scale).unwrap();
    let split = paged_attention_split_k(&q, &k_cache, &v_cache, &meta, scale, 5).unwrap();
    assert_eq!(one_pass.dtype(), dtype);
    let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
    for (out, (i, span)) in [&one_pass, &split].into_iter().flat_map(|o| std::iter::repeat(o).zip(meta.seqs.iter().enumerate())) {
        let f32k = full_k[i].to_dtype(DType::F32).unwrap();
        let f32v = full_v[i].to_dtype(DType::F32).unwrap();
        let want = dense_attention(&qs[i].to_dtype(DType::F32).unwrap(), &f32k, &f32v, scale).unwrap();
        let got = out.narrow(0, span.query_start as usize, span.query_len as usize).unwrap();
        let diff = (got.to_dtype(DType::F32).unwrap() - want).unwrap().abs().unwrap();
        let max = diff.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(max < tol, "seq {i} ({dtype:?}, h{heads}/kv{kvh}, bs{bs}): max diff {max}");
    }
}

#[test]
fn mixed_prefill_chunks_and_decodes_match_dense_attention() {
    let seqs = [(0, 7), (5, 1), (16, 9), (31, 1), (0, 1)];
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (heads, kvh) in [(4, 4), (4, 2), (8, 1)] {
            for bs in [1, 4, 16] {
                check(dtype, heads, kvh, 8, bs, &seqs);
            }
        }
    }
}

#[test]
fn split_k_decode_over_long_contexts_matches_dense_attention() {
    let seqs = [(40, 1), (3, 1), (77, 1), (0, 1)];
    for dtype in [DType::F32, DType::BF16] {
        check(dtype, 8, 2, 16, 16, &seqs);
    }
}

#[test]
fn split_k_needs_a_partition() {
    let dev = Device::Cpu;
    let cache = Tensor::zeros((1, 4, 1, 8), DType::F32, &dev).unwrap();
    let q = Tensor::zeros((1, 1, 8), DType::F32, &dev).unwrap();
    let mut meta = PagedAttentionMeta::new(4, 1);
    meta.push(SeqSpan { query_start: 0, query_len: 1, context_len: 1 }, &[0]);
    assert!(paged_attention_split_k(&q, &cache, &cache, &meta, 1.0, 0).is_err());
    assert!(paged_attention_split_k(&q, &cache, &cache, &meta, 1.0, 2).is_ok());
}

#[test]
fn negative_slots_are_skipped_and_out_of_range_slots_are_errors() {
    let dev = Device::Cpu;
    let cache = Tensor::zeros((2, 2, 1, 2), DType::F32, &dev).unwrap();
    let new = Tensor::ones((2, 1, 2), DType::F32, &dev).unwrap();
    reshape_and_cache(&new, &cache, &Tensor::new(&[-1i64, 3], &dev).unwrap()).unwrap();
    let flat: Vec<f32> = cache.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(flat, [0., 0., 0., 0., 0., 0., 1., 1.]);
    let err = reshape_and_cache(&new, &cache, &Tensor::new(&[0i64, 4], &dev).unwrap());
    assert!(err.unwrap_err().to_string().contains("out of range"));
}

#[test]
fn inconsistent_metadata_is_an_error_not_a_panic() {
    let dev = Device::Cpu;
    let cache = Tensor::zeros((2, 4, 1, 8), DType::F32, &dev).unwrap();
    let q = Tensor::zeros((3, 2, 8), DType::F32, &dev).unwrap();
    let span = SeqSpan { query_start: 0, query_len: 3, context_len: 3 };
    let bad_block = PagedAttentionMeta { seqs: vec![span], block_tables: vec![9], ..PagedAttentionMeta::new(4, 1) };
    assert!(paged_attention(&q, &cache, &cache, &bad_block, 1.0).is_err());
    let short_table = PagedAttentionMeta { seqs: vec![SeqSpan { context_len: 9, ..span }], block_tables: vec![0], ..PagedAttentionMeta::new(4, 1) };
    assert!(paged_attention(&q, &cache, &cache, &short_table, 1.0).is_err());
    let wrong_rows = PagedAttentionMeta { seqs: vec![SeqSpan { query_len: 2, ..span }], block_tables: vec![0], ..PagedAttentionMeta::new(4, 1) };
    assert!(paged_attention(&q, &cache, &cache, &wrong_rows, 1.0).is_err());
}
