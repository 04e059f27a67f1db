//! llama GGUF tensors → Hugging Face `LlamaForCausalLM` tensors: name mapping, dequantization
//! (candle), undoing llama.cpp's q/k row permutation, and writing `model.safetensors` one tensor
//! at a time.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::params::{bad, missing, LlamaParams, ROPE_FREQS};
use super::reader::{GgufFile, TensorInfo};
use super::{ConvertOptions, GgufError, OutDType};

/// One tensor to write: where it comes from, its HF name and shape.
pub(crate) struct Planned<'f> {
    pub hf_name: String,
    pub info: &'f TensorInfo,
    pub shape: Vec<usize>,
    /// Undo llama.cpp's rotary row permutation with this many heads (q: n_head, k: n_head_kv).
    pub unpermute_heads: Option<usize>,
}

/// Maps every tensor of the file to its HF name, checking shapes and that nothing is missing.
pub(crate) fn plan_tensors<'f>(
    g: &'f GgufFile,
    p: &LlamaParams,
) -> Result<Vec<Planned<'f>>, GgufError> {
    let (h, q_rows, kv_rows) = (p.hidden, p.n_head * p.head_dim, p.n_head_kv * p.head_dim);
    let mut planned = Vec::with_capacity(g.tensors.len());
    let mut by_name: HashMap<&str, ()> = HashMap::new();
    for t in &g.tensors {
        by_name.insert(t.name.as_str(), ());
        if t.name == ROPE_FREQS {
            continue; // folded into config.json's rope_scaling
        }
        let unknown = |msg: &str| GgufError::UnknownTensor {
            path: g.path().to_path_buf(),
            tensor: t.name.clone(),
            msg: msg.to_string(),
        };
        let (hf_name, shape, unpermute_heads): (String, Vec<usize>, Option<usize>) = match t
            .name
            .as_str()
        {
            "token_embd.weight" => (
                "model.embed_tokens.weight".into(),
                vec![p.vocab_size, h],
                None,
            ),
            "output_norm.weight" => ("model.norm.weight".into(), vec![h], None),
            "output.weight" => ("lm_head.weight".into(), vec![p.vocab_size, h], None),
            name => {
                let rest = name
                    .strip_prefix("blk.")
                    .ok_or_else(|| unknown("no Hugging Face equivalent"))?;
                let (layer, suffix) = rest
                    .split_once('.')
                    .ok_or_else(|| unknown("no Hugging Face equivalent"))?;
                let layer: usize = layer.parse().map_err(|_| unknown("invalid layer number"))?;
                if layer >= p.n_layer {
                    return Err(unknown(&format!(
                        "layer {layer} is beyond llama.block_count = {}",
                        p.n_layer
                    )));
                }
                let (hf, shape, perm) = match suffix {
                    "attn_norm.weight" => ("input_layernorm.weight", vec![h], None),
                    "attn_q.weight" => ("self_attn.q_proj.weight", vec![q_rows, h], Some(p.n_head)),
                    "attn_k.weight" => (
                        "self_attn.k_proj.weight",
                        vec![kv_rows, h],
                        Some(p.n_head_kv),
                    ),
                    "attn_v.weight" => ("self_attn.v_proj.weight", vec![kv_rows, h], None),
                    "attn_output.weight" => ("self_attn.o_proj.weight", vec![h, q_rows], None),
                    "ffn_norm.weight" => ("post_attention_layernorm.weight", vec![h], None),
                    "ffn_gate.weight" => ("mlp.gate_proj.weight", vec![p.ffn, h], None),
                    "ffn_up.weight" => ("mlp.up_proj.weight", vec![p.ffn, h], None),
                    "ffn_down.weight" => ("mlp.down_proj.weight", vec![h, p.ffn], None),
                    s if s.contains("_exps") || s.contains("ffn_gate_inp") => {
                        return Err(unknown("mixture-of-experts llama models are not supported"))
                    }
                    _ => return Err(unknown("no Hugging Face equivalent")),
                };
                (format!("model.layers.{layer}.{hf}"), shape, perm)
            }
        };
        if t.hf_shape() != shape {
            return Err(bad(
                g,
                &t.name,
                format!("shape {:?} (HF order), expected {shape:?}", t.hf_shape()),
            ));
        }
        planned.push(Planned {
            hf_name,
            info: t,
            shape,
            unpermute_heads,
        });
    }
    for r in ["token_embd.weight", "output_norm.weight"] {
        if !by_name.contains_key(r) {
            return Err(missing(g, r));
        }
    }
    // `n_layer` comes from the file: stop at the first missing tensor, so a hostile block
    // count costs at most one pass over the tensors the file really has.
    for l in 0..p.n_layer {
        for s in [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            let r = format!("blk.{l}.{s}.weight");
            if !by_name.contains_key(r.as_str()) {
                return Err(missing(g, &r));
            }
        }
    }
    Ok(planned)
}

/// Dequantizes one GGUF tensor to an f32 tensor in HF shape.
pub(crate) fn dequantize(g: &GgufFile, t: &TensorInfo) -> Result<Tensor, GgufError> {
    let err = |source: candle_core::Error| GgufError::Dequantize {
        path: g.path().to_path_buf(),
        tensor: t.name.clone(),
        source: Box::new(source),
    };
    let raw = g.tensor_data(t)?;
    // candle reinterprets the bytes as blocks: they must be aligned for the block type
    // (at most 4 bytes); copy them when the file's alignment does not guarantee that.
    let copy;
    let bytes = if (raw.as_ptr() as usize).is_multiple_of(8) {
        raw
    } else {
        copy = AlignedBytes::new(raw);
        copy.as_slice()
    };
    let dims = t.hf_shape();
    let q = match t.dtype {
        // qtensor_from_ggml does not accept these two; QStorage::from_data does.
        GgmlDType::Q8_1 | GgmlDType::Q8K => {
            QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, t.dtype)
                .and_then(|s| QTensor::new(s, dims))
        }
        dtype => qtensor_from_ggml(dtype, bytes, dims, &Device::Cpu),
    }
    .map_err(err)?;
    q.dequantize(&Device::Cpu).map_err(err)
}

/// An 8-byte aligned copy of some bytes.
struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    fn new(raw: &[u8]) -> Self {
        let words = raw
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_ne_bytes(w)
            })
            .collect();
        Self {
            words,
            len: raw.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes (len.div_ceil(8) words), u8 has
        // no alignment requirement, and the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// Inverse of llama.cpp's `permute`: GGUF rows are (head, half_dim, 2); HF rows (head, 2, half_dim).
pub(crate) fn unpermute(t: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    if n_heads == 0 || rows % (2 * n_heads) != 0 {
        candle_core::bail!("{rows} rows cannot be split into {n_heads} heads of even size");
    }
    let half = rows / n_heads / 2;
    t.reshape((n_heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

fn encode(t: &Tensor, dtype: OutDType) -> candle_core::Result<Vec<u8>> {
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(v.len() * bytes_per_elem(dtype));
    match dtype {
        OutDType::F32 => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        OutDType::BF16 => v
            .iter()
            .for_each(|x| out.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())),
        OutDType::F16 => v
            .iter()
            .for_each(|x| out.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes())),
    }
    Ok(out)
}

fn bytes_per_elem(dtype: OutDType) -> usize {
    match dtype {
        OutDType::F32 => 4,
        OutDType::BF16 | OutDType::F16 => 2,
    }
}

/// State shared by the lazily produced tensors while safetensors writes them one by one.
struct WriteCtx<'f> {
    file: &'f GgufFile,
    dtype: OutDType,
    error: RefCell<Option<GgufError>>,
    progress: Option<ProgressBar>,
}

/// A tensor whose bytes are only produced (dequantized, un-permuted, converted) when
/// safetensors asks for them, so at most one tensor is held in memory at a time.
struct LazyTensor<'c, 'f> {
    ctx: &'c WriteCtx<'f>,
    plan: &'c Planned<'f>,
    len: usize,
}

impl LazyTensor<'_, '_> {
    fn produce(&self) -> Result<Vec<u8>, GgufError> {
        let file = self.ctx.file;
        let info = self.plan.info;
        let err = |source: candle_core::Error| GgufError::Dequantize {
            path: file.path().to_path_buf(),
            tensor: info.name.clone(),
            source: Box::new(source),
        };
        let mut t = dequantize(file, info)?;
        if let Some(heads) = self.plan.unpermute_heads {
            t = unpermute(&t, heads).map_err(err)?;
        }
        let bytes = encode(&t, self.ctx.dtype).map_err(err)?;
        if bytes.len() != self.len {
            return Err(bad(
                file,
                &info.name,
                format!("produced {} bytes, expected {}", bytes.len(), self.len),
            ));
        }
        Ok(bytes)
    }
}

impl safetensors::View for LazyTensor<'_, '_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.ctx.dtype {
            OutDType::F32 => safetensors::Dtype::F32,
            OutDType::BF16 => safetensors::Dtype::BF16,
            OutDType::F16 => safetensors::Dtype::F16,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.plan.shape
    }

    fn data_len(&self) -> usize {
        self.len
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // After a failure the file is discarded, so the remaining tensors are skipped.
        if self.ctx.error.borrow().is_some() {
            return Cow::Borrowed(&[]);
        }
        if let Some(pb) = &self.ctx.progress {
            pb.set_message(self.plan.hf_name.clone());
        }
        let out = match self.produce() {
            Ok(bytes) => Cow::Owned(bytes),
            Err(e) => {
                *self.ctx.error.borrow_mut() = Some(e);
                Cow::Borrowed(&[][..])
            }
        };
        if let Some(pb) = &self.ctx.progress {
            pb.inc(1);
        }
        out
    }
}

/// Writes `model.safetensors`, producing each tensor only when it is written.
pub(crate) fn write_safetensors(
    g: &GgufFile,
    plan: &[Planned<'_>],
    opts: &ConvertOptions,
    path: &Path,
) -> Result<(), GgufError> {
    let progress = opts.progress.then(|| {
        let pb =
            ProgressBar::with_draw_target(Some(plan.len() as u64), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("converting [{bar:30}] {pos}/{len} {elapsed} {wide_msg}")
        {
            pb.set_style(style.progress_chars("=> "));
        }
        pb
    });
    let ctx = WriteCtx {
        file: g,
        dtype: opts.dtype,
        error: RefCell::new(None),
        progress,
    };
    let mut views = Vec::with_capacity(plan.len());
    for p in plan {
        let len = p
            .shape
            .iter()
            .try_fold(bytes_per_elem(opts.dtype), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(g, &p.info.name, "output size overflows".into()))?;
        views.push((
            p.hf_name.clone(),
            LazyTensor {
                ctx: &ctx,
                plan: p,
                len,
            },
        ));
    }
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let result = safetensors::serialize_to_file(views, Some(metadata), path);
    if let Some(pb) = &ctx.progress {
        pb.finish_and_clear();
    }
    if let Some(e) = ctx.error.into_inner() {
        return Err(e);
    }
    result.map_err(|e| GgufError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}
