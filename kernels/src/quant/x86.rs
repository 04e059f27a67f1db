//! AVX2 + FMA block dot products: unsigned weight quants times signed 8-bit activations with
//! `maddubs` (pairs to i16; 31·127·2 fits), `madd` to i32, then one FMA per block with the
//! product of the two scales. Q8_0's signed weights go through the `sign` trick (|w| times
//! x·sign(w)). The zero points and offsets are added per block from the activation sums.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{PackedQ, QKind, QuantizedRows, QK};

pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

pub(super) fn rows_dot(w: &PackedQ, r: usize, x: &QuantizedRows, out: &mut [f32]) {
    super::each_row(w, r, x, out, row_dot)
}

fn row_dot(w: &PackedQ, r: usize, x: &QuantizedRows, out: &mut [f32]) {
    assert!(available(), "the AVX2 kernel is only chosen where AVX2 and FMA exist");
    let kb = w.k / QK;
    let qb = w.kind.quant_bytes();
    // The unchecked loads below stay inside these ranges.
    assert!(x.kb == kb && (r + 1) * kb <= w.d.len() && (r + 1) * kb * qb <= w.qs.len());
    assert!(x.qs.len() >= x.rows * kb * QK && x.d.len() >= x.rows * kb && out.len() >= x.rows);
    assert!(!x.pair_order, "activations quantized for another kernel");
    // SAFETY: AVX2 and FMA are present (asserted), and every pointer read stays inside the
    // slices whose lengths were just checked.
    unsafe { rows_dot_avx2(w, r, x, out) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn rows_dot_avx2(w: &PackedQ, r: usize, x: &QuantizedRows, out: &mut [f32]) {
    let kb = w.k / QK;
    let qb = w.kind.quant_bytes();
    let wd = w.d.as_ptr().add(r * kb);
    let wq = w.qs.as_ptr().add(r * kb * qb);
    let ones = _mm256_set1_epi16(1);
    let low4 = _mm_set1_epi8(0x0f);
    for (t, o) in out.iter_mut().enumerate().take(x.rows) {
        let xd = x.d.as_ptr().add(t * kb);
        let xq = x.qs.as_ptr().add(t * kb * QK);
        // Two accumulators so consecutive blocks' FMAs do not wait on each other.
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for b in 0..kb {
            let xv = _mm256_loadu_si256(xq.add(b * QK) as *const __m256i);
            let prod = match w.kind {
                QKind::Q4_0 | QKind::Q4_1 => {
                    let raw = _mm_loadu_si128(wq.add(b * 16) as *const __m128i);
                    let lo = _mm_and_si128(raw, low4);
                    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low4);
                    _mm256_maddubs_epi16(_mm256_set_m128i(hi, lo), xv)
                }
                QKind::Q5_0 | QKind::Q5_1 => {
                    _mm256_maddubs_epi16(_mm256_loadu_si256(wq.add(b * QK) as *const __m256i), xv)
                }
                QKind::Q8_0 => {
                    let wv = _mm256_loadu_si256(wq.add(b * QK) as *const __m256i);
                    _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv))
                }
            };
            let dots = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
            let scale = _mm256_set1_ps(*wd.add(b) * *xd.add(b));
            if b & 1 == 0 {
                acc0 = _mm256_fmadd_ps(dots, scale, acc0);
            } else {
                acc1 = _mm256_fmadd_ps(dots, scale, acc1);
            }
        }
        let mut total = hsum(_mm256_add_ps(acc0, acc1));
        let xs = t * kb;
        match w.kind {
            QKind::Q4_0 | QKind::Q5_0 => {
                let zero = if w.kind == QKind::Q4_0 { 8.0 } else { 16.0 };
                let mut c = 0f32;
                for b in 0..kb {
                    c += *wd.add(b) * x.qsum[xs + b];
                }
                total -= zero * c;
            }
            QKind::Q4_1 | QKind::Q5_1 => {
                let wm = &w.m[r * kb..(r + 1) * kb];
                total += wm.iter().zip(&x.qsum[xs..xs + kb]).map(|(m, s)| m * s).sum::<f32>();
            }
            QKind::Q8_0 => {}
        }
        *o = total;
    }
}
