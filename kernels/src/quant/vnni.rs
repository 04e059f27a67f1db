//! AVX-512 VNNI kernel: two 32-blocks per `vpdpbusd` (64 unsigned-weight × signed-activation
//! products summed in fours into 16 i32 lanes), then one FMA per block pair with the lanes'
//! scales. Activation rows are tiled [`TILE`] at a time so each unpacked weight pair is reused
//! from registers for every row of the tile (a batched decode step streams the weights once).
//!
//! Q4 nibbles unpack to `[b0 lo | b1 lo | b0 hi | b1 hi]`, so the activations are quantized in
//! that pair order ([`x_pair_order`]); Q5 (expanded) and Q8 blocks are 32 bytes each and keep
//! the natural order. Q8_0's signed quants are flipped to unsigned by `xor 0x80` (w + 128), and
//! the extra `128 · Σx` is taken off with the other zero points.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{PackedQ, QKind, QuantizedRows, QK};

/// Activation rows per register tile.
const TILE: usize = 4;

pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
    })
}

/// Whether this kernel handles `w` (pairs of blocks: an even number per row).
pub(super) fn handles(w: &PackedQ) -> bool {
    available() && (w.k / QK).is_multiple_of(2)
}

/// Whether the activations must be quantized in Q4 pair order for `kind`.
pub(super) fn x_pair_order(kind: QKind) -> bool {
    matches!(kind, QKind::Q4_0 | QKind::Q4_1)
}

pub(super) fn rows_dot(w: &PackedQ, r: usize, x: &QuantizedRows, out: &mut [f32]) {
    assert!(handles(w), "the VNNI kernel is only chosen where it applies");
    let kb = w.k / QK;
    let qb = w.kind.quant_bytes();
    // The unchecked loads below stay inside these ranges.
    assert!(x.kb == kb && (r + 1) * kb <= w.d.len() && (r + 1) * kb * qb <= w.qs.len());
    assert!(x.qs.len() >= x.rows * kb * QK && x.d.len() >= x.rows * kb && out.len() >= x.rows);
    assert_eq!(x.pair_order, x_pair_order(w.kind), "activations quantized for another kernel");
    // SAFETY: the CPU has AVX-512 F/BW/VNNI (asserted through `handles`), and every pointer read
    // stays inside the slices whose lengths were just checked.
    unsafe {
        match w.kind {
            QKind::Q4_0 | QKind::Q4_1 => dot_tiles::<Nibbles>(w, r, x, out),
            QKind::Q5_0 | QKind::Q5_1 => dot_tiles::<Bytes>(w, r, x, out),
            QKind::Q8_0 => dot_tiles::<Signed>(w, r, x, out),
        }
    }
    corrections(w, r, x, out);
}

/// How one block pair of weights becomes 64 unsigned bytes, and which lanes hold which block.
trait PairLoad {
    /// Lane → block (0 or 1) of the pair, for spreading the two scales over the 16 lanes.
    const LANES: [i32; 16];
    unsafe fn load(p: *const u8) -> __m512i;
}

struct Nibbles;
impl PairLoad for Nibbles {
    const LANES: [i32; 16] = [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1];
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m512i {
        let raw = _mm256_loadu_si256(p as *const __m256i);
        let low4 = _mm256_set1_epi8(0x0f);
        let lo = _mm256_and_si256(raw, low4);
        let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    }
}

struct Bytes;
impl PairLoad for Bytes {
    const LANES: [i32; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m512i {
        _mm512_loadu_si512(p as *const __m512i)
    }
}

struct Signed;
impl PairLoad for Signed {
    const LANES: [i32; 16] = Bytes::LANES;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m512i {
        _mm512_xor_si512(_mm512_loadu_si512(p as *const __m512i), _mm512_set1_epi8(-128))
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_tiles<L: PairLoad>(w: &PackedQ, r: usize, x: &QuantizedRows, out: &mut [f32]) {
    let kb = w.k / QK;
    let qb = w.kind.quant_bytes();
    let wd = w.d.as_ptr().add(r * kb);
    let wq = w.qs.as_ptr().add(r * kb * qb);
    let lanes = _mm512_loadu_si512(L::LANES.as_ptr() as *const __m512i);
    let mut t0 = 0;
    while t0 < x.rows {
        let tile = TILE.min(x.rows - t0);
        let mut acc = [_mm512_setzero_ps(); TILE];
        for pair in 0..kb / 2 {
            let b = pair * 2;
            let wv = L::load(wq.add(b * qb));
            let ws = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64(wd.add(b) as *const __m128i))));
            for (t, a) in acc.iter_mut().enumerate().take(tile) {
                let row = t0 + t;
                let xv = _mm512_loadu_si512(x.qs.as_ptr().add((row * kb + b) * QK) as *const __m512i);
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, xv);
                let xs = _mm512_permutexvar_ps(
                    lanes,
                    _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64(x.d.as_ptr().add(row * kb + b) as *const __m128i))),
                );
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws, xs), *a);
            }
        }
        for (t, a) in acc.iter().enumerate().take(tile) {
            out[t0 + t] = _mm512_reduce_add_ps(*a);
        }
        t0 += tile;
    }
}

/// Zero points (Q4_0: 8, Q5_0: 16, Q8_0 flipped: 128) and offsets (Q4_1, Q5_1), per block.
fn corrections(w: &PackedQ, r: usize, x: &QuantizedRows, out: &mut [f32]) {
    let kb = w.k / QK;
    let wd = &w.d[r * kb..(r + 1) * kb];
    for (t, o) in out.iter_mut().enumerate().take(x.rows) {
        let xs = t * kb..(t + 1) * kb;
        *o += match w.kind {
            QKind::Q4_0 | QKind::Q5_0 | QKind::Q8_0 => {
                let zero = match w.kind {
                    QKind::Q4_0 => 8.0,
                    QKind::Q5_0 => 16.0,
                    _ => 128.0,
                };
                -zero * wd.iter().zip(&x.qsum[xs]).map(|(d, s)| d * s).sum::<f32>()
            }
            QKind::Q4_1 | QKind::Q5_1 => w.m[r * kb..(r + 1) * kb].iter().zip(&x.qsum[xs]).map(|(m, s)| m * s).sum(),
        };
    }
}
