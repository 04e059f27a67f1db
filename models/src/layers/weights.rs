//! [`Vb`]: what a layer's `load` reads its weights from — candle's dense [`VarBuilder`] plus,
//! for a quantized model, a [`QuantSource`] that hands out the 2-D projection weights (and the
//! token embedding) as quantized rows ([`QuantRows`]) instead of dense tensors.
//!
//! Two sources exist: a GGUF file read as it is (`crate::gguf::GgufWeights`, each tensor in the
//! file's own type) and in-situ quantization of a safetensors checkpoint ([`Isq`], mistral.rs's
//! ISQ: every projection quantized to one type as it loads). Quantized rows are plain host
//! bytes, so projections that share an input (q|k|v, gate|up) are fused by concatenating rows
//! before the tensor is made on its device.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::gguf::QuantType;

/// A 2-D quantized weight `[rows, cols]` (HF order: rows are outputs) as host bytes in GGML's
/// block layout: each row is `cols / block_size` blocks, rows one after another.
#[derive(Clone, Debug)]
pub struct QuantRows {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: Vec<u8>,
}

impl QuantRows {
    /// Bytes of one row in `dtype` for `cols` columns; `None` when `cols` is not a whole number
    /// of blocks.
    pub fn row_bytes(dtype: GgmlDType, cols: usize) -> Option<usize> {
        cols.is_multiple_of(dtype.block_size()).then(|| cols / dtype.block_size() * dtype.type_size())
    }

    /// Checks that `bytes` holds exactly `rows` rows of `cols` columns.
    pub fn new(dtype: GgmlDType, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self> {
        let Some(row) = Self::row_bytes(dtype, cols) else {
            candle_core::bail!("{cols} columns are not a whole number of {dtype:?} blocks")
        };
        if Some(bytes.len()) != row.checked_mul(rows) {
            candle_core::bail!("{} bytes for {rows}x{cols} {dtype:?} (expected {})", bytes.len(), row * rows);
        }
        Ok(Self { dtype, rows, cols, bytes })
    }

    /// Quantizes a dense `[rows, cols]` tensor.
    pub fn quantize(t: &Tensor, dtype: GgmlDType) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        let q = QTensor::quantize(&t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?, dtype)?;
        Self::new(dtype, rows, cols, q.data()?.into_owned())
    }

    /// These rows followed by `other`'s (same type and width): fusing projections of one input.
    pub fn concat(parts: Vec<QuantRows>) -> Result<Self> {
        let mut it = parts.into_iter();
        let Some(mut first) = it.next() else { candle_core::bail!("no quantized parts to concatenate") };
        for p in it {
            if p.dtype != first.dtype || p.cols != first.cols {
                candle_core::bail!("cannot fuse {:?}x{} with {:?}x{}", first.dtype, first.cols, p.dtype, p.cols);
            }
            first.rows += p.rows;
            first.bytes.extend_from_slice(&p.bytes);
        }
        Ok(first)
    }

    /// The quantized tensor on `device`.
    pub fn to_qtensor(&self, device: &Device) -> Result<QTensor> {
        let storage = QStorage::from_data(Cow::Borrowed(&self.bytes), device, self.dtype)?;
        QTensor::new(storage, (self.rows, self.cols))
    }
}

/// Where quantized weights come from.
pub trait QuantSource: Send + Sync {
    /// The projection weight `name` (full HF name, `[rows, cols]`) quantized, or `None` to load
    /// it dense (the file stores it as a float type, or its width fits no block). `dense`
    /// reads the dense tensor when the source quantizes it itself.
    fn linear(&self, name: &str, shape: (usize, usize), dense: &VarBuilder) -> Result<Option<QuantRows>>;

    /// The token embedding `name` `[vocab, hidden]` quantized (looked up row by row), or `None`
    /// for a dense embedding.
    fn embedding(&self, name: &str, shape: (usize, usize), dense: &VarBuilder) -> Result<Option<QuantRows>>;

    /// What the source is, for logs ("gguf", "isq q4_0").
    fn describe(&self) -> String;
}

/// In-situ quantization: every projection of a dense checkpoint quantized to one type at load
/// (embeddings stay dense; a tied `lm_head` is quantized as a projection), with the type per
/// tensor chosen as `flint quantize` chooses it (llama.cpp's fallback for rows that are not a
/// whole number of K-quant blocks).
#[derive(Clone, Copy, Debug)]
pub struct Isq {
    pub qtype: QuantType,
}

impl Isq {
    /// The type a `cols`-wide weight gets; `None`: it stays dense (a float type).
    pub fn type_for(&self, name: &str, rows: usize, cols: usize) -> Option<GgmlDType> {
        match self.qtype.tensor_dtype(name, &[cols, rows]) {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => None,
            d => Some(d),
        }
    }
}

impl QuantSource for Isq {
    fn linear(&self, name: &str, shape: (usize, usize), dense: &VarBuilder) -> Result<Option<QuantRows>> {
        let Some(dtype) = self.type_for(name, shape.0, shape.1) else { return Ok(None) };
        let w = dense.root().get_with_hints_dtype(shape, name, candle_nn::Init::Const(0.), DType::F32)?;
        QuantRows::quantize(&w, dtype).map(Some)
    }

    fn embedding(&self, _: &str, _: (usize, usize), _: &VarBuilder) -> Result<Option<QuantRows>> {
        Ok(None)
    }

    fn describe(&self) -> String {
        format!("in-situ {}", self.qtype)
    }
}

/// The weights under one prefix: dense tensors through candle's [`VarBuilder`], quantized
/// projections through the optional [`QuantSource`].
#[derive(Clone)]
pub struct Vb<'a> {
    dense: VarBuilder<'a>,
    quant: Option<Arc<dyn QuantSource + 'a>>,
}

impl<'a> From<VarBuilder<'a>> for Vb<'a> {
    fn from(dense: VarBuilder<'a>) -> Self {
        Self { dense, quant: None }
    }
}

impl<'a> Vb<'a> {
    pub fn new(dense: VarBuilder<'a>, quant: Option<Arc<dyn QuantSource + 'a>>) -> Self {
        Self { dense, quant }
    }

    pub fn pp(&self, s: impl ToString) -> Self {
        Self { dense: self.dense.pp(s), quant: self.quant.clone() }
    }

    pub fn get<S: Into<Shape>>(&self, s: S, name: &str) -> Result<Tensor> {
        self.dense.get(s, name)
    }

    pub fn dtype(&self) -> DType {
        self.dense.dtype()
    }

    pub fn device(&self) -> &Device {
        self.dense.device()
    }

    pub fn dense(&self) -> &VarBuilder<'a> {
        &self.dense
    }

    fn full_name(&self, name: &str) -> String {
        let p = self.dense.prefix();
        if p.is_empty() {
            name.to_owned()
        } else {
            format!("{p}.{name}")
        }
    }

    /// The `[rows, cols]` projection weight `name` under this prefix, quantized when the
    /// source quantizes it.
    pub fn quant_linear(&self, shape: (usize, usize), name: &str) -> Result<Option<QuantRows>> {
        match &self.quant {
            Some(q) => q.linear(&self.full_name(name), shape, &self.dense),
            None => Ok(None),
        }
    }

    /// The `[vocab, hidden]` embedding `name` under this prefix, quantized when the source
    /// keeps it quantized.
    pub fn quant_embedding(&self, shape: (usize, usize), name: &str) -> Result<Option<QuantRows>> {
        match &self.quant {
            Some(q) => q.embedding(&self.full_name(name), shape, &self.dense),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn concat_appends_rows_and_refuses_mixed_types() {
        let a = flint_kernels::testing::lcg_tensor(1, &[4, 64], -1.0, 1.0);
        let b = flint_kernels::testing::lcg_tensor(2, &[2, 64], -1.0, 1.0);
        let qa = QuantRows::quantize(&a, GgmlDType::Q8_0).expect("q");
        let qb = QuantRows::quantize(&b, GgmlDType::Q8_0).expect("q");
        let both = QuantRows::concat(vec![qa.clone(), qb]).expect("concat");
        assert_eq!((both.rows, both.cols), (6, 64));
        let deq = both.to_qtensor(&Device::Cpu).and_then(|q| q.dequantize(&Device::Cpu)).expect("deq");
        let want = Tensor::cat(&[&a, &b], 0).expect("cat");
        let err: f32 = (deq - want).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|d| d.to_scalar()).expect("err");
        assert!(err < 0.01, "{err}");
        let q4 = QuantRows::quantize(&b, GgmlDType::Q4_0).expect("q");
        assert!(QuantRows::concat(vec![qa, q4]).is_err());
        assert!(QuantRows::new(GgmlDType::Q8_0, 2, 64, vec![0; 5]).is_err());
        assert!(QuantRows::new(GgmlDType::Q8_0, 2, 60, vec![]).is_err());
    }

    #[test]
    fn isq_falls_back_like_llama_cpp_for_narrow_rows() {
        let isq = Isq { qtype: QuantType::Q4K };
        assert_eq!(isq.type_for("w", 8, 1536), Some(GgmlDType::Q4K));
        assert_eq!(isq.type_for("w", 8, 576), Some(GgmlDType::Q5_0));
        assert_eq!(isq.type_for("w", 8, 20), None, "f16: stays dense");
        let w = flint_kernels::testing::lcg_tensor(3, &[8, 64], -1.0, 1.0);
        let vb = VarBuilder::from_tensors(HashMap::from([("l.weight".to_string(), w)]), DType::F32, &Device::Cpu);
        let vb = Vb::new(vb, Some(Arc::new(Isq { qtype: QuantType::Q8_0 })));
        let q = vb.pp("l").quant_linear((8, 64), "weight").expect("isq").expect("quantized");
        assert_eq!((q.dtype, q.rows, q.cols), (GgmlDType::Q8_0, 8, 64));
        assert!(vb.pp("l").quant_linear((8, 64), "missing").is_err());
    }
}
