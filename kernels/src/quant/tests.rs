use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::*;
use crate::testing::lcg_tensor;

const KINDS: [(QKind, GgmlDType); 5] = [
    (QKind::Q4_0, GgmlDType::Q4_0),
    (QKind::Q4_1, GgmlDType::Q4_1),
    (QKind::Q5_0, GgmlDType::Q5_0),
    (QKind::Q5_1, GgmlDType::Q5_1),
    (QKind::Q8_0, GgmlDType::Q8_0),
];

/// A random `[n, k]` weight quantized by candle (GGML's layout), and its dequantized values.
fn weight(seed: u64, n: usize, k: usize, g: GgmlDType) -> (Vec<u8>, Tensor) {
    let w = lcg_tensor(seed, &[n, k], -1.0, 1.0);
    let q = QTensor::quantize(&w, g).expect("quantize");
    (q.data().expect("bytes").into_owned(), q.dequantize(&Device::Cpu).expect("dequantize"))
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let scale: f32 = b.abs().and_then(|t| t.max_all()).and_then(|t| t.to_scalar()).expect("scale");
    let d: f32 = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|d| d.to_scalar()).expect("diff");
    d / scale.max(1e-6)
}

#[test]
fn repacked_rows_dequantize_like_candle() {
    for (kind, g) in KINDS {
        let (bytes, deq) = weight(1, 3, 64, g);
        let p = PackedQ::from_ggml(kind, 3, 64, &bytes).expect("pack");
        let mut row = vec![0f32; 64];
        for r in 0..3 {
            p.dequantize_row(r, &mut row);
            let want: Vec<f32> = deq.get(r).and_then(|t| t.to_vec1()).expect("row");
            assert_eq!(row, want, "{kind:?} row {r}");
        }
    }
}

#[test]
fn qmatmul_matches_the_dequantized_matmul() {
    for (kind, g) in KINDS {
        for rows in [1, 3, 17] {
            let (n, k) = (70, 96);
            let (bytes, deq) = weight(2, n, k, g);
            let p = PackedQ::from_ggml(kind, n, k, &bytes).expect("pack");
            let x = lcg_tensor(3 + rows as u64, &[rows, k], -2.0, 2.0);
            let got = qmatmul(&x, &p).expect("qmatmul");
            let want = x.matmul(&deq.t().expect("t")).expect("matmul");
            assert_eq!(got.dims(), [rows, n]);
            // Only the 8-bit activations differ from the exact product.
            let err = max_rel(&got, &want);
            assert!(err < 0.012, "{kind:?} rows {rows}: {err}");
        }
    }
}

#[test]
fn simd_and_portable_kernels_agree() {
    for (kind, g) in KINDS {
        let (n, k, rows) = (11, 256, 6);
        let (bytes, _) = weight(4, n, k, g);
        let p = PackedQ::from_ggml(kind, n, k, &bytes).expect("pack");
        let x: Vec<f32> = lcg_tensor(5, &[rows, k], -3.0, 3.0).flatten_all().and_then(|t| t.to_vec1()).expect("x");
        let mut xq = QuantizedRows::default();
        xq.quantize(&x, rows, k, false);
        let mut want = vec![0f32; rows * n];
        matmul_into(&p, &xq, &mut want, portable_rows_dot);
        for (name, kernel) in all_kernels(&p) {
            kernel.quantize(&mut xq, &x, rows, &p);
            let mut got = vec![0f32; rows * n];
            matmul_into(&p, &xq, &mut got, kernel.rows_dot);
            for (u, v) in want.iter().zip(&got) {
                assert!((u - v).abs() <= 1e-4 * u.abs().max(1.0), "{kind:?} {name}: {u} vs {v}");
            }
        }
    }
}

#[test]
fn bad_shapes_and_inputs_are_errors() {
    let (bytes, _) = weight(6, 2, 64, GgmlDType::Q4_0);
    assert!(PackedQ::from_ggml(QKind::Q4_0, 2, 60, &bytes).is_err(), "k not a multiple of 32");
    assert!(PackedQ::from_ggml(QKind::Q4_0, 3, 64, &bytes).is_err(), "too few bytes");
    let p = PackedQ::from_ggml(QKind::Q4_0, 2, 64, &bytes).expect("pack");
    assert!(qmatmul(&lcg_tensor(1, &[1, 32], -1.0, 1.0), &p).is_err(), "wrong width");
    let x = lcg_tensor(1, &[1, 64], -1.0, 1.0).to_dtype(candle_core::DType::F16).expect("f16");
    assert!(qmatmul(&x, &p).is_err(), "f16 activations");
    // A zero row quantizes to zeros, not NaN.
    let y = qmatmul(&Tensor::zeros((2, 64), candle_core::DType::F32, &Device::Cpu).expect("z"), &p).expect("mm");
    assert!(y.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("y").iter().all(|v| *v == 0.0));
}

/// The offsets of Q4_1/Q5_1 take the quantized activations' sums (llama.cpp's Q8_1): with the
/// exact sums the error roughly doubles. candle's kernel (which does the same) is the yardstick.
#[test]
fn offset_types_are_no_less_accurate_than_candle() {
    use candle_core::quantized::QMatMul;
    use candle_core::Module;
    for (kind, g) in [(QKind::Q4_1, GgmlDType::Q4_1), (QKind::Q5_1, GgmlDType::Q5_1)] {
        let (n, k) = (64, 512);
        let w = lcg_tensor(7, &[n, k], -1.0, 1.0);
        let q = QTensor::quantize(&w, g).expect("quantize");
        let deq = q.dequantize(&Device::Cpu).expect("dequantize");
        let p = PackedQ::from_ggml(kind, n, k, &q.data().expect("bytes")).expect("pack");
        // Activations with a few large channels, as real hidden states have.
        let x = (lcg_tensor(8, &[4, k], -1.0, 1.0) * 0.5).expect("x");
        let spikes = Tensor::from_vec((0..4 * k).map(|i| if i % 97 == 0 { 8.0f32 } else { 0.0 }).collect(), (4, k), &Device::Cpu).expect("s");
        let x = (x + spikes).expect("x");
        let exact = x.matmul(&deq.t().expect("t")).expect("exact");
        let ours = max_rel(&qmatmul(&x, &p).expect("ours"), &exact);
        let theirs = max_rel(&QMatMul::from_qtensor(q).expect("qmm").forward(&x).expect("candle"), &exact);
        assert!(ours <= 1.25 * theirs, "{kind:?}: {ours} vs candle {theirs}");
    }
}
