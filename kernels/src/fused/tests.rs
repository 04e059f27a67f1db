//! The fused kernels against the unfused candle ops they replace.

use super::*;
use candle_core::D;

fn lcg(seed: u64, shape: &[usize]) -> Tensor {
    crate::testing::lcg_tensor(seed, shape, -2.0, 2.0)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// HF's LlamaRMSNorm in the storage dtype: f32 statistics, cast back, then times the weight.
fn hf_rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let x32 = x.to_dtype(DType::F32).unwrap();
    let var = x32.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let n = x32.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap();
    w.broadcast_mul(&n.to_dtype(x.dtype()).unwrap()).unwrap()
}

#[test]
fn add_rms_norm_matches_hf_in_every_dtype() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (rows, hidden) in [(1, 8), (5, 64), (3, 200)] {
            let x = lcg(1, &[rows, hidden]).to_dtype(dtype).unwrap();
            let r = lcg(2, &[rows, hidden]).to_dtype(dtype).unwrap();
            let w = lcg(3, &[hidden]).to_dtype(dtype).unwrap();
            let (normed, sum) = add_rms_norm(&x, &r, &w, 1e-5).unwrap();
            let want_sum = (&x + &r).unwrap();
            assert_eq!(max_diff(&sum, &want_sum), 0.0, "{dtype:?} sum");
            let want = hf_rms_norm(&want_sum, &w, 1e-5);
            let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
            let d = max_diff(&normed, &want);
            assert!(d <= tol, "{dtype:?} {rows}x{hidden}: {d}");
            assert_eq!(normed.dims(), [rows, hidden]);
        }
    }
}

#[test]
fn rotary_inplace_matches_candle_rope() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let (t, h, d) = (7, 3, 16);
        let x = lcg(4, &[t, h, d]).to_dtype(dtype).unwrap();
        let angles = lcg(5, &[t, d / 2]);
        let (cos, sin) = (angles.cos().unwrap().to_dtype(dtype).unwrap(), angles.sin().unwrap().to_dtype(dtype).unwrap());
        let want = candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0).unwrap(), &cos, &sin).unwrap().squeeze(0).unwrap();
        let y = x.copy().unwrap();
        rotary_inplace(&y, &cos, &sin).unwrap();
        let tol = if dtype == DType::F32 { 1e-6 } else { 2e-2 };
        let diff = max_diff(&y, &want);
        assert!(diff <= tol, "{dtype:?}: {diff}");
    }
}

#[test]
fn silu_and_mul_matches_unfused_ops() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let g = lcg(6, &[4, 100]).to_dtype(dtype).unwrap();
        let u = lcg(7, &[4, 100]).to_dtype(dtype).unwrap();
        let want = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
        let tol = if dtype == DType::F32 { 1e-6 } else { 2e-2 };
        let diff = max_diff(&silu_and_mul(&g, &u).unwrap(), &want);
        assert!(diff <= tol, "{dtype:?}: {diff}");
    }
}

#[test]
fn silu_and_mul_packed_is_silu_and_mul_on_the_halves() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // 5000 columns: wider than one parallel chunk, and not a multiple of it.
        for (rows, inter) in [(1, 7), (3, 100), (2, 5000)] {
            let x = lcg(8, &[rows, 2 * inter]).to_dtype(dtype).unwrap();
            let (g, u) = (x.narrow(1, 0, inter).unwrap(), x.narrow(1, inter, inter).unwrap());
            let want = silu_and_mul(&g, &u).unwrap();
            let got = silu_and_mul_packed(&x).unwrap();
            assert_eq!(got.dims(), [rows, inter]);
            assert_eq!(got.dtype(), dtype);
            assert_eq!(max_diff(&got, &want), 0.0, "{dtype:?} {rows}x{inter}");
        }
    }
    // Any leading dims; a non-contiguous input is copied first.
    let x = lcg(9, &[2, 3, 8]);
    let want = silu_and_mul(&x.narrow(2, 0, 4).unwrap(), &x.narrow(2, 4, 4).unwrap()).unwrap();
    assert_eq!(max_diff(&silu_and_mul_packed(&x).unwrap(), &want), 0.0);
    let xt = lcg(10, &[8, 6]).t().unwrap();
    let want = silu_and_mul(&xt.narrow(1, 0, 4).unwrap(), &xt.narrow(1, 4, 4).unwrap()).unwrap();
    assert_eq!(max_diff(&silu_and_mul_packed(&xt).unwrap(), &want), 0.0);
    assert_eq!(silu_and_mul_packed(&lcg(1, &[0, 6])).unwrap().dims(), [0, 3]);
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let x = lcg(1, &[2, 8]);
    assert!(add_rms_norm(&x, &lcg(2, &[2, 4]), &lcg(3, &[8]), 1e-5).is_err());
    assert!(add_rms_norm(&x, &x, &lcg(3, &[4]), 1e-5).is_err());
    let xi = x.to_dtype(DType::U32).unwrap();
    assert!(silu_and_mul(&xi, &xi).is_err());
    assert!(silu_and_mul(&x, &lcg(2, &[8, 2])).is_err());
    assert!(silu_and_mul_packed(&xi).is_err());
    assert!(silu_and_mul_packed(&lcg(1, &[2, 7])).is_err(), "odd width is no [gate | up] pair");
    let q = lcg(1, &[2, 2, 8]);
    assert!(rotary_inplace(&q, &lcg(2, &[2, 3]), &lcg(2, &[2, 4])).is_err());
    assert!(rotary_inplace(&q.transpose(0, 1).unwrap(), &lcg(2, &[2, 4]), &lcg(2, &[2, 4])).is_err());
}
