//! GGML block bytes → [`PackedQ`]. Block layouts (little-endian, `d`/`m` are f16):
//! - Q4_0 `{d, qs[16]}`: element j is `qs[j] & 15`, element j+16 is `qs[j] >> 4`; x = (q−8)·d.
//! - Q4_1 `{d, m, qs[16]}`: the same nibbles; x = q·d + m.
//! - Q5_0 `{d, qh: u32, qs[16]}`: Q4_0's nibbles plus bit j of `qh` as bit 4; x = (q−16)·d.
//! - Q5_1 `{d, m, qh, qs[16]}`: x = q·d + m.
//! - Q8_0 `{d, qs: i8[32]}`: x = q·d.

use candle_core::Result;
use half::f16;

use super::{PackedQ, QK};

/// The block types [`PackedQ`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QKind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl QKind {
    /// Bytes of one GGML block.
    pub fn ggml_block_bytes(self) -> usize {
        match self {
            QKind::Q4_0 => 18,
            QKind::Q4_1 => 20,
            QKind::Q5_0 => 22,
            QKind::Q5_1 => 24,
            QKind::Q8_0 => 34,
        }
    }

    /// Quant bytes per block once packed (Q5's fifth bits are merged in: one byte a value).
    pub fn quant_bytes(self) -> usize {
        match self {
            QKind::Q4_0 | QKind::Q4_1 => 16,
            QKind::Q5_0 | QKind::Q5_1 | QKind::Q8_0 => 32,
        }
    }

    pub(crate) fn has_offset(self) -> bool {
        matches!(self, QKind::Q4_1 | QKind::Q5_1)
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

impl PackedQ {
    /// Repacks `n` rows of `k` values stored as GGML `kind` blocks.
    pub fn from_ggml(kind: QKind, n: usize, k: usize, bytes: &[u8]) -> Result<Self> {
        if k == 0 || !k.is_multiple_of(QK) {
            candle_core::bail!("{kind:?}: {k} columns are not a whole number of 32-blocks");
        }
        let blocks = n * (k / QK);
        if bytes.len() != blocks * kind.ggml_block_bytes() {
            candle_core::bail!("{kind:?}: {} bytes for {n}x{k} (expected {})", bytes.len(), blocks * kind.ggml_block_bytes());
        }
        let qb = kind.quant_bytes();
        let mut d = Vec::with_capacity(blocks);
        let mut m = Vec::with_capacity(if kind.has_offset() { blocks } else { 0 });
        let mut qs = vec![0u8; blocks * qb];
        for (i, blk) in bytes.chunks_exact(kind.ggml_block_bytes()).enumerate() {
            d.push(f16_at(blk, 0));
            let out = &mut qs[i * qb..(i + 1) * qb];
            match kind {
                QKind::Q4_0 => out.copy_from_slice(&blk[2..18]),
                QKind::Q4_1 => {
                    m.push(f16_at(blk, 2));
                    out.copy_from_slice(&blk[4..20]);
                }
                QKind::Q5_0 | QKind::Q5_1 => {
                    let at = if kind == QKind::Q5_1 {
                        m.push(f16_at(blk, 2));
                        4
                    } else {
                        2
                    };
                    let qh = u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
                    let nib = &blk[at + 4..at + 20];
                    for j in 0..16 {
                        out[j] = (nib[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
                        out[j + 16] = (nib[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                    }
                }
                QKind::Q8_0 => out.copy_from_slice(&blk[2..34]),
            }
        }
        Ok(Self { kind, n, k, d, m, qs })
    }

    /// Row `r` dequantized (tests, and embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let kb = self.blocks_per_row();
        let qb = self.kind.quant_bytes();
        for b in 0..kb {
            let i = r * kb + b;
            let (d, q) = (self.d[i], &self.qs[i * qb..(i + 1) * qb]);
            let o = &mut out[b * QK..(b + 1) * QK];
            match self.kind {
                QKind::Q4_0 | QKind::Q4_1 => {
                    let (zero, m) = if self.kind == QKind::Q4_0 { (8.0, 0.0) } else { (0.0, self.m[i]) };
                    for j in 0..16 {
                        o[j] = ((q[j] & 0x0f) as f32 - zero) * d + m;
                        o[j + 16] = ((q[j] >> 4) as f32 - zero) * d + m;
                    }
                }
                QKind::Q5_0 | QKind::Q5_1 => {
                    let (zero, m) = if self.kind == QKind::Q5_0 { (16.0, 0.0) } else { (0.0, self.m[i]) };
                    for j in 0..QK {
                        o[j] = (q[j] as f32 - zero) * d + m;
                    }
                }
                QKind::Q8_0 => {
                    for j in 0..QK {
                        o[j] = q[j] as i8 as f32 * d;
                    }
                }
            }
        }
    }
}
