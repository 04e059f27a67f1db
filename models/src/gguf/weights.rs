//! A llama GGUF file read as model weights without converting it: [`GgufWeights`] serves the
//! quantized projections and token embedding as they are stored ([`QuantSource`]) and
//! everything else (norms, float-typed tensors) dequantized through candle's
//! [`SimpleBackend`], under Hugging Face tensor names.
//!
//! llama.cpp stores q/k rows permuted for its interleaved rotary; quantized blocks run along a
//! row, so undoing the permutation is moving whole rows of bytes — exact, no dequantization.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Result as CResult, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::convert::{dequantize, plan_tensors, unpermute};
use super::params::{bad, LlamaParams};
use super::reader::GgufFile;
use super::GgufError;
use crate::layers::weights::{QuantRows, QuantSource};

/// One tensor by its HF name: index into the file's tensors, and the q/k head count whose
/// permutation to undo.
#[derive(Clone, Copy, Debug)]
struct Entry {
    index: usize,
    unpermute_heads: Option<usize>,
}

/// A memory-mapped llama GGUF, its tensors looked up by Hugging Face name. The map is dropped
/// with the last reference (the model keeps its own copies of what it uses).
pub struct GgufWeights {
    file: GgufFile,
    by_hf: HashMap<String, Entry>,
}

impl std::fmt::Debug for GgufWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GgufWeights({}, {} tensors)", self.file.path().display(), self.by_hf.len())
    }
}

impl GgufWeights {
    /// Opens and checks `path` (metadata, tensor names and shapes, data ranges).
    pub fn open(path: &Path) -> Result<Arc<Self>, GgufError> {
        let file = GgufFile::open(path)?;
        let architecture = file.get_str("general.architecture")?.to_string();
        if architecture != "llama" {
            return Err(GgufError::UnsupportedArchitecture { path: path.to_path_buf(), architecture });
        }
        let params = LlamaParams::from_gguf(&file)?;
        let by_hf = plan_tensors(&file, &params)?
            .into_iter()
            .map(|p| {
                let index = file
                    .tensors
                    .iter()
                    .position(|t| std::ptr::eq(t, p.info))
                    .expect("planned tensors are the file's own");
                (p.hf_name, Entry { index, unpermute_heads: p.unpermute_heads })
            })
            .collect();
        Ok(Arc::new(Self { file, by_hf }))
    }

    /// The dense view of the file for candle's [`VarBuilder`] (`dtype` on `device`).
    pub fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Dense(self.clone())), dtype, device.clone())
    }

    /// The GGML type the file stores `hf_name` in.
    pub fn dtype_of(&self, hf_name: &str) -> Option<GgmlDType> {
        self.by_hf.get(hf_name).map(|e| self.file.tensors[e.index].dtype)
    }

    /// How many tensors of each GGML type the file has (for logs: "Q4_1 x 211, F32 x 61").
    pub fn type_counts(&self) -> Vec<(GgmlDType, usize)> {
        let mut counts: Vec<(GgmlDType, usize)> = Vec::new();
        for t in &self.file.tensors {
            match counts.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some((_, n)) => *n += 1,
                None => counts.push((t.dtype, 1)),
            }
        }
        counts
    }

    fn entry(&self, name: &str) -> CResult<Entry> {
        self.by_hf.get(name).copied().ok_or_else(|| {
            candle_core::Error::msg(format!("{}: no tensor maps to `{name}`", self.file.path().display()))
        })
    }

    /// `name` dequantized to f32 in HF shape and row order.
    fn dense(&self, name: &str) -> CResult<Tensor> {
        let e = self.entry(name)?;
        let info = &self.file.tensors[e.index];
        let t = dequantize(&self.file, info).map_err(candle_core::Error::wrap)?;
        match e.unpermute_heads {
            Some(heads) => unpermute(&t, heads),
            None => Ok(t),
        }
    }

    /// `name` as stored, when the file quantizes it; `None` for float types (served dense).
    fn quantized(&self, name: &str, shape: (usize, usize)) -> CResult<Option<QuantRows>> {
        let e = self.entry(name)?;
        let info = &self.file.tensors[e.index];
        if matches!(info.dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            return Ok(None);
        }
        let (rows, cols) = shape;
        if info.hf_shape() != [rows, cols] {
            return Err(candle_core::Error::wrap(bad(
                &self.file,
                &info.name,
                format!("shape {:?}, expected {:?}", info.hf_shape(), [rows, cols]),
            )));
        }
        let raw = self.file.tensor_data(info).map_err(candle_core::Error::wrap)?;
        let bytes = match e.unpermute_heads {
            Some(heads) => unpermute_rows(raw, rows, heads)?,
            None => raw.to_vec(),
        };
        QuantRows::new(info.dtype, rows, cols, bytes)
            .map_err(|err| candle_core::Error::msg(format!("{}: {}: {err}", self.file.path().display(), info.name)))
            .map(Some)
    }
}

/// Undoes llama.cpp's rotary row permutation on raw rows: GGUF row `(head, i, j)` (half index
/// `i`, pair member `j`) is HF row `(head, j, i)`.
fn unpermute_rows(raw: &[u8], rows: usize, heads: usize) -> CResult<Vec<u8>> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) || !raw.len().is_multiple_of(rows.max(1)) {
        candle_core::bail!("{rows} rows cannot be split into {heads} heads of even size");
    }
    let row = raw.len() / rows;
    let half = rows / heads / 2;
    let mut out = vec![0u8; raw.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * 2 * half + i * 2 + j;
                let dst = h * 2 * half + j * half + i;
                out[dst * row..(dst + 1) * row].copy_from_slice(&raw[src * row..(src + 1) * row]);
            }
        }
    }
    Ok(out)
}

impl QuantSource for GgufWeights {
    fn linear(&self, name: &str, shape: (usize, usize), _: &VarBuilder) -> CResult<Option<QuantRows>> {
        self.quantized(name, shape)
    }

    fn embedding(&self, name: &str, shape: (usize, usize), _: &VarBuilder) -> CResult<Option<QuantRows>> {
        self.quantized(name, shape)
    }

    fn describe(&self) -> String {
        let types: Vec<String> = self.type_counts().iter().map(|(d, n)| format!("{d:?} x{n}")).collect();
        format!("gguf {} ({})", self.file.path().display(), types.join(", "))
    }
}

/// The dense side of [`GgufWeights`] for candle's [`VarBuilder`].
struct Dense(Arc<GgufWeights>);

impl SimpleBackend for Dense {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> CResult<Tensor> {
        let t = self.0.dense(name)?;
        if t.shape() != &s {
            candle_core::bail!("{}: `{name}` has shape {:?}, expected {s:?}", self.0.file.path().display(), t.shape());
        }
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> CResult<Tensor> {
        self.0.dense(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.by_hf.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermuting_rows_matches_the_dense_unpermute() {
        // 2 heads of 4 rows, 3 "bytes" per row standing in for quantized blocks.
        let (rows, heads, width) = (8, 2, 3);
        let raw: Vec<u8> = (0..(rows * width) as u8).collect();
        let got = unpermute_rows(&raw, rows, heads).expect("unpermute");
        let t = Tensor::from_vec(raw.iter().map(|&b| b as f32).collect::<Vec<_>>(), (rows, width), &Device::Cpu)
            .expect("tensor");
        let want: Vec<f32> = unpermute(&t, heads).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).expect("want");
        assert_eq!(got.iter().map(|&b| b as f32).collect::<Vec<_>>(), want);
        assert!(unpermute_rows(&raw, rows, 3).is_err());
        assert!(unpermute_rows(&raw, rows, 0).is_err());
    }
}
