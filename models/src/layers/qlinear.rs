//! [`QLinear`]: a quantized `[out, in]` weight and the matmul that reads it — flint's own CPU
//! kernel ([`flint_kernels::qmatmul`], for the 32-block types Q4_0 … Q8_0, where candle's CPU
//! path has no SIMD for several of them) or candle's [`QMatMul`] (K-quants, GPUs). The same
//! weight also serves embedding lookups, for a token embedding tied to the `lm_head`.

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Device, Module, Result, Tensor};
use flint_kernels::{qmatmul, PackedQ, QKind};

use crate::layers::weights::QuantRows;

#[derive(Debug)]
pub enum QLinear {
    Packed(PackedQ),
    Candle(QMatMul),
}

fn packed_kind(dtype: GgmlDType) -> Option<QKind> {
    Some(match dtype {
        GgmlDType::Q4_0 => QKind::Q4_0,
        GgmlDType::Q4_1 => QKind::Q4_1,
        GgmlDType::Q5_0 => QKind::Q5_0,
        GgmlDType::Q5_1 => QKind::Q5_1,
        GgmlDType::Q8_0 => QKind::Q8_0,
        _ => return None,
    })
}

impl QLinear {
    /// The weight on `device`: repacked for flint's kernel on the CPU where it has one.
    pub fn new(rows: &QuantRows, device: &Device) -> Result<Self> {
        match packed_kind(rows.dtype) {
            Some(kind) if device.is_cpu() && std::env::var_os("FLINT_CANDLE_QMATMUL").is_none() => {
                Ok(Self::Packed(PackedQ::from_ggml(kind, rows.rows, rows.cols, &rows.bytes)?))
            }
            _ => Ok(Self::Candle(QMatMul::from_qtensor(rows.to_qtensor(device)?)?)),
        }
    }

    /// `x [T, in]` → `[T, out]` in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Packed(w) => {
                let dtype = x.dtype();
                qmatmul(&x.to_dtype(DType::F32)?, w)?.to_dtype(dtype)
            }
            Self::Candle(m) => m.forward(x),
        }
    }

    /// Rows `ids` of the weight, dequantized to `dtype`.
    pub fn embedding(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        match self {
            Self::Packed(w) => {
                let (vocab, hidden) = w.dims();
                let ids = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                let mut out = vec![0f32; ids.len() * hidden];
                for (id, row) in ids.iter().zip(out.chunks_exact_mut(hidden)) {
                    let id = *id as usize;
                    if id >= vocab {
                        candle_core::bail!("token id {id} is outside the vocabulary ({vocab})");
                    }
                    w.dequantize_row(id, row);
                }
                Tensor::from_vec(out, (ids.len(), hidden), &Device::Cpu)?.to_dtype(dtype)
            }
            Self::Candle(m) => m.embedding(ids)?.to_dtype(dtype),
        }
    }
}
