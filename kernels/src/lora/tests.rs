//! The batched LoRA op against per-token dense matmuls.

use super::*;
use candle_core::{Device, IndexOp};

fn rand(seed: u64, shape: &[usize]) -> Tensor {
    crate::testing::lcg_tensor(seed, shape, -1.0, 1.0)
}

/// `scale * x_t @ A[..r]^T @ Bt[..r]` token by token.
fn dense(x: &Tensor, a: &Tensor, b: &Tensor, tokens: &[u32], slots: &[SlotParams]) -> Tensor {
    let d_out = b.dim(2).unwrap();
    let rows: Vec<Tensor> = tokens
        .iter()
        .enumerate()
        .map(|(t, &s)| {
            let p = slots.get(s as usize).copied().unwrap_or_default();
            if s == NO_SLOT || p.scale == 0.0 {
                return Tensor::zeros((1, d_out), DType::F32, &Device::Cpu).unwrap();
            }
            let r = p.rank as usize;
            let a_s = a.i((s as usize, ..r, ..)).unwrap();
            let b_s = b.i((s as usize, ..r, ..)).unwrap();
            let xt = x.i((t..t + 1, ..)).unwrap();
            (xt.matmul(&a_s.t().unwrap()).unwrap().matmul(&b_s).unwrap() * p.scale as f64).unwrap()
        })
        .collect();
    Tensor::cat(&rows, 0).unwrap()
}

#[test]
fn mixed_slots_match_dense_per_token_matmuls() {
    let (slots_n, max_rank, d_in, d_out) = (3, 8, 24, 40);
    let a = rand(1, &[slots_n, max_rank, d_in]);
    let b = rand(2, &[slots_n, max_rank, d_out]);
    let x = rand(3, &[7, d_in]);
    let tokens = vec![0, NO_SLOT, 2, 1, 1, 2, NO_SLOT];
    // Slot 1 uses rank 4 of 8 (the padding rows hold garbage here, which must be ignored);
    // slot 2 is absent from this layer (scale 0).
    let slots = [SlotParams { scale: 2.0, rank: 8 }, SlotParams { scale: 0.5, rank: 4 }, SlotParams { scale: 0.0, rank: 8 }];
    let lt = LoraTokens::new(tokens.clone());
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
        let got = lora_delta(&cast(&x), &cast(&a), &cast(&b), &lt, &slots).unwrap();
        assert_eq!(got.dims(), [7, d_out]);
        assert_eq!(got.dtype(), dtype);
        let want = dense(&cast(&x).to_dtype(DType::F32).unwrap(), &cast(&a).to_dtype(DType::F32).unwrap(), &cast(&b).to_dtype(DType::F32).unwrap(), &tokens, &slots);
        let diff = (got.to_dtype(DType::F32).unwrap() - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        assert!(diff <= tol * scale.max(1.0), "{dtype:?}: {diff}");
    }
    assert!(!lt.is_empty());
    assert!(LoraTokens::new(vec![NO_SLOT; 3]).is_empty());
}

#[test]
fn long_same_slot_runs_match_dense() {
    // Runs of 40 and 37 tokens (the gemm path in f32), a run of 12 (loop path in pieces of 8)
    // and single tokens between them.
    let (slots_n, max_rank, d_in, d_out) = (2, 16, 40, 24);
    let a = rand(4, &[slots_n, max_rank, d_in]);
    let b = rand(5, &[slots_n, max_rank, d_out]);
    let mut tokens = vec![1; 40];
    tokens.push(NO_SLOT);
    tokens.extend([0; 37]);
    tokens.extend([1; 12]);
    tokens.push(0);
    let x = rand(6, &[tokens.len(), d_in]);
    let slots = [SlotParams { scale: 0.5, rank: 12 }, SlotParams { scale: 2.0, rank: 16 }];
    for dtype in [DType::F32, DType::BF16] {
        let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
        let got = lora_delta(&cast(&x), &cast(&a), &cast(&b), &LoraTokens::new(tokens.clone()), &slots).unwrap();
        let f32 = |t: &Tensor| cast(t).to_dtype(DType::F32).unwrap();
        let want = dense(&f32(&x), &f32(&a), &f32(&b), &tokens, &slots);
        let diff = (got.to_dtype(DType::F32).unwrap() - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        assert!(diff <= tol * scale.max(1.0), "{dtype:?}: {diff} (max |want| {scale})");
    }
}

#[test]
fn inconsistent_inputs_are_errors() {
    let a = rand(1, &[2, 4, 8]);
    let b = rand(2, &[2, 4, 6]);
    let x = rand(3, &[3, 8]);
    let ok = [SlotParams { scale: 1.0, rank: 4 }; 2];
    assert!(lora_delta(&x, &a, &b, &LoraTokens::new(vec![0, 1, NO_SLOT]), &ok).is_ok());
    assert!(lora_delta(&x, &a, &b, &LoraTokens::new(vec![0, 2, NO_SLOT]), &ok).is_err(), "slot out of range");
    assert!(lora_delta(&x, &a, &b, &LoraTokens::new(vec![0, 1]), &ok).is_err(), "token count");
    assert!(lora_delta(&x, &a, &b, &LoraTokens::new(vec![0, 1, 1]), &ok[..1]).is_err(), "slot params");
    assert!(lora_delta(&rand(3, &[3, 9]), &a, &b, &LoraTokens::new(vec![0, 1, 1]), &ok).is_err(), "d_in");
}
