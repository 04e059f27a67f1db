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

use super::{Kernel, PackedQ, QKind, QuantizedRows, QK};

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

/// The VNNI kernel for `kind` (callers check [`handles`]).
pub(super) fn kernel(kind: QKind) -> Kernel {
    Kernel { rows_dot, pair_order: x_pair_order(kind), prepare: Some(prepare) }
}

/// The block (0 or 1 of its pair) each of the 16 lanes belongs to.
fn lane_blocks(kind: QKind) -> &'static [i32; 16] {
    if x_pair_order(kind) {
        &Nibbles::LANES
    } else {
        &Bytes::LANES
    }
}

/// Fills the per-lane activation data: the zero point goes into the integer dot (the
/// accumulator starts at −zero·Σq of the lane), the scale and the offset's sum are spread over
/// their block's lanes, so the inner loop has no per-block scalar work.
pub(super) fn prepare(x: &mut QuantizedRows, kind: QKind) {
    let zero = match kind {
        QKind::Q4_0 => 8,
        QKind::Q5_0 => 16,
        QKind::Q8_0 => 128,
        QKind::Q4_1 | QKind::Q5_1 => 0,
    };
    let pairs = x.rows * x.kb / 2;
    let lanes = lane_blocks(kind);
    x.lane_zero.resize(pairs * 16, 0);
    x.lane_scale.resize(pairs * 16, 0.0);
    x.lane_msum.resize(pairs * 16, 0.0);
    for p in 0..pairs {
        let q = &x.qs[p * 2 * QK..(p + 1) * 2 * QK];
        for l in 0..16 {
            let sum: i32 = q[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum();
            let d = x.d[2 * p + lanes[l] as usize];
            x.lane_zero[p * 16 + l] = -zero * sum;
            x.lane_scale[p * 16 + l] = d;
            x.lane_msum[p * 16 + l] = d * sum as f32;
        }
    }
}

pub(super) fn rows_dot(w: &PackedQ, r: usize, x: &QuantizedRows, out: &mut [f32]) {
    // Four weight rows at a time share each activation load; the rest one by one.
    let quads = out.len() / x.rows / 4;
    let (four, rest) = out.split_at_mut(quads * 4 * x.rows);
    for (i, o) in four.chunks_exact_mut(4 * x.rows).enumerate() {
        rows_n::<4>(w, r + 4 * i, x, o);
    }
    super::each_row(w, r + 4 * quads, x, rest, rows_n::<1>);
}

/// Checks what the unchecked loads of rows `r..r + nr` rely on.
fn check(w: &PackedQ, r: usize, nr: usize, x: &QuantizedRows, out: &[f32]) {
    assert!(handles(w), "the VNNI kernel is only chosen where it applies");
    let kb = w.k / QK;
    let qb = w.kind.quant_bytes();
    assert!(x.kb == kb && (r + nr) * kb <= w.d.len() && (r + nr) * kb * qb <= w.qs.len());
    assert!(x.qs.len() >= x.rows * kb * QK && out.len() >= nr * x.rows);
    assert!(x.lane_zero.len() >= x.rows * kb * 8 && x.lane_scale.len() >= x.rows * kb * 8 && x.lane_msum.len() >= x.rows * kb * 8);
    assert!(!w.kind.has_offset() || (r + nr) * kb <= w.m.len());
    assert_eq!(x.pair_order, x_pair_order(w.kind), "activations quantized for another kernel");
}

/// Rows `r..r + R` against every activation row.
fn rows_n<const R: usize>(w: &PackedQ, r: usize, x: &QuantizedRows, out: &mut [f32]) {
    check(w, r, R, x, out);
    // SAFETY: the CPU has AVX-512 F/BW/VNNI (asserted through `handles`), and every pointer read
    // stays inside the slices whose lengths were just checked.
    unsafe {
        match w.kind {
            QKind::Q4_0 => dot_rows::<Nibbles, false, R>(w, r, x, out),
            QKind::Q4_1 => dot_rows::<Nibbles, true, R>(w, r, x, out),
            QKind::Q5_0 => dot_rows::<Bytes, false, R>(w, r, x, out),
            QKind::Q5_1 => dot_rows::<Bytes, true, R>(w, r, x, out),
            QKind::Q8_0 => dot_rows::<Signed, false, R>(w, r, x, out),
        }
    }
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

/// Two f32 per-block values of a pair spread over their lanes.
#[inline(always)]
unsafe fn spread(lanes: __m512i, p: *const f32) -> __m512 {
    _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64(p as *const __m128i))))
}

/// `R` weight rows × [`TILE`] activation rows per register block (R·TILE accumulators), each
/// activation pair (with its lane data) loaded once for the R rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_rows<L: PairLoad, const OFFSET: bool, const R: usize>(w: &PackedQ, r: usize, x: &QuantizedRows, out: &mut [f32]) {
    let kb = w.k / QK;
    let qb = w.kind.quant_bytes();
    let lanes = _mm512_loadu_si512(L::LANES.as_ptr() as *const __m512i);
    let (xz, xs, xm) = (x.lane_zero.as_ptr(), x.lane_scale.as_ptr(), x.lane_msum.as_ptr());
    let pairs = kb / 2;
    let mut t0 = 0;
    while t0 < x.rows {
        let tile = TILE.min(x.rows - t0);
        let mut acc = [[_mm512_setzero_ps(); TILE]; R];
        for pair in 0..pairs {
            let b = pair * 2;
            let mut wv = [_mm512_setzero_si512(); R];
            let mut ws = [_mm512_setzero_ps(); R];
            let mut wo = [_mm512_setzero_ps(); R];
            for i in 0..R {
                let row = (r + i) * kb + b;
                wv[i] = L::load(w.qs.as_ptr().add(row * qb));
                ws[i] = spread(lanes, w.d.as_ptr().add(row));
                if OFFSET {
                    wo[i] = spread(lanes, w.m.as_ptr().add(row));
                }
            }
            #[allow(clippy::needless_range_loop)] // `t` picks the accumulator of each of the R rows
            for t in 0..tile {
                let xrow = t0 + t;
                let lane = (xrow * pairs + pair) * 16;
                let xv = _mm512_loadu_si512(x.qs.as_ptr().add((xrow * kb + b) * QK) as *const __m512i);
                let start = _mm512_loadu_si512(xz.add(lane) as *const __m512i);
                let xsc = _mm512_loadu_ps(xs.add(lane));
                let xms = if OFFSET { _mm512_loadu_ps(xm.add(lane)) } else { xsc };
                for i in 0..R {
                    let dot = _mm512_dpbusd_epi32(start, wv[i], xv);
                    let a = &mut acc[i][t];
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws[i], xsc), *a);
                    if OFFSET {
                        *a = _mm512_fmadd_ps(wo[i], xms, *a);
                    }
                }
            }
        }
        for (i, accs) in acc.iter().enumerate() {
            for (t, a) in accs.iter().enumerate().take(tile) {
                out[i * x.rows + t0 + t] = _mm512_reduce_add_ps(*a);
            }
        }
        t0 += tile;
    }
}
