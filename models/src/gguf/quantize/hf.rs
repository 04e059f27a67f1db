//! Hugging Face llama directory → GGUF: the inverse of `flint convert` (config.json →
//! `llama.*`, tokenizer.json → `tokenizer.ggml.*`, HF names → GGUF names, q/k rows permuted
//! the way llama.cpp's `convert_hf_to_gguf.py` does).

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use super::super::params::ROPE_FREQS;
use super::super::value::Value;
use super::super::writer::TensorSpec;
use super::super::GgufError;
use super::{encode, set_file_type, Job, QuantizeOptions, QuantizeReport};

/// Per-layer tensors: GGUF suffix, HF suffix (both without `.weight`).
const LAYER_TENSORS: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];
/// GGUF token types (llama.cpp's `llama_token_type`).
pub(super) const TYPE_NORMAL: i32 = 1;
pub(super) const TYPE_CONTROL: i32 = 3;
pub(super) const TYPE_USER_DEFINED: i32 = 4;

/// Typed access to a JSON object, with errors naming the file and key.
struct Obj<'a> {
    path: &'a Path,
    v: &'a Json,
}

impl Obj<'_> {
    /// The value of `key`; JSON `null` counts as absent.
    fn get(&self, key: &str) -> Option<&Json> {
        self.v.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, expected: &'static str) -> GgufError {
        GgufError::WrongType {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            expected,
            found: self.get(key).map_or("null".into(), |v| json_type(v).into()),
        }
    }

    fn invalid(&self, key: &str, msg: impl Into<String>) -> GgufError {
        GgufError::InvalidValue {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    fn usize(&self, key: &str) -> Result<Option<usize>, GgufError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.wrong(key, "non-negative integer"))
            })
            .transpose()
    }

    fn req_usize(&self, key: &str) -> Result<usize, GgufError> {
        match self.usize(key)? {
            Some(0) => Err(self.invalid(key, "must be positive")),
            Some(n) => Ok(n),
            None => Err(GgufError::MissingKey {
                path: self.path.to_path_buf(),
                key: key.to_string(),
            }),
        }
    }

    fn f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.wrong(key, "number")))
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.wrong(key, "bool")))
            .transpose()
    }

    fn str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.wrong(key, "string")))
            .transpose()
    }

    /// A `u32` metadata value; llama.cpp reads these keys as exactly u32.
    fn u32_value(&self, key: &str, n: usize) -> Result<Value, GgufError> {
        u32::try_from(n)
            .map(Value::U32)
            .map_err(|_| self.invalid(key, format!("{n} does not fit a u32")))
    }
}

fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "bool",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

pub(super) fn read_json(path: &Path) -> Result<Json, GgufError> {
    let text = fs::read_to_string(path).map_err(|source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| GgufError::Malformed {
        path: path.to_path_buf(),
        offset: 0,
        msg: format!("invalid JSON: {e}"),
    })
}

/// The `config.json` hyper-parameters a llama GGUF needs.
struct HfParams {
    n_layer: usize,
    hidden: usize,
    ffn: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    vocab_size: usize,
    tied: bool,
    /// llama.cpp keys for linear / yarn rope scaling.
    rope_keys: Vec<(String, Value)>,
    /// Llama 3 rope scaling, which llama.cpp stores as per-dimension factors.
    rope_freqs: Option<Vec<f32>>,
}

/// Reads config.json, returning the parameters and the `general.*`/`llama.*` metadata.
fn read_config(dir: &Path, path: &Path) -> Result<(HfParams, Vec<(String, Value)>), GgufError> {
    let json = read_json(path)?;
    let c = Obj { path, v: &json };
    let model_type = c.str("model_type")?.unwrap_or("");
    if model_type != "llama" {
        return Err(GgufError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            architecture: model_type.to_string(),
        });
    }
    for key in ["attention_bias", "mlp_bias"] {
        if c.bool(key)? == Some(true) {
            return Err(c.invalid(key, "biases are not supported by the llama GGUF layout"));
        }
    }
    if let Some(act) = c.str("hidden_act")?.filter(|a| *a != "silu") {
        return Err(c.invalid("hidden_act", format!("`{act}` (llama uses silu)")));
    }
    let hidden = c.req_usize("hidden_size")?;
    let n_head = c.req_usize("num_attention_heads")?;
    let n_head_kv = c.usize("num_key_value_heads")?.unwrap_or(n_head);
    if n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(c.invalid(
            "num_key_value_heads",
            format!("{n_head_kv} does not divide {n_head}"),
        ));
    }
    let default_head_dim = hidden / n_head;
    let head_dim = match c.usize("head_dim")? {
        Some(d) => d,
        None if hidden.is_multiple_of(n_head) => default_head_dim,
        None => {
            return Err(c.invalid(
                "hidden_size",
                format!("{hidden} is not a multiple of num_attention_heads {n_head}"),
            ))
        }
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(c.invalid("head_dim", format!("{head_dim} must be even and positive")));
    }
    let ctx = c.req_usize("max_position_embeddings")?;
    let theta = c.f64("rope_theta")?.unwrap_or(10000.0);
    let p = HfParams {
        n_layer: c.req_usize("num_hidden_layers")?,
        hidden,
        ffn: c.req_usize("intermediate_size")?,
        n_head,
        n_head_kv,
        head_dim,
        vocab_size: c.req_usize("vocab_size")?,
        tied: c.bool("tie_word_embeddings")?.unwrap_or(true),
        rope_keys: Vec::new(),
        rope_freqs: None,
    };
    let p = rope_scaling(&c, p, theta)?;
    let name = dir
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let mut meta = vec![
        (
            "general.architecture".to_string(),
            Value::Str("llama".into()),
        ),
        ("general.name".to_string(), Value::Str(name)),
    ];
    let mut put = |key: &str, v: Value| meta.push((format!("llama.{key}"), v));
    put("vocab_size", c.u32_value("vocab_size", p.vocab_size)?);
    put(
        "context_length",
        c.u32_value("max_position_embeddings", ctx)?,
    );
    put("embedding_length", c.u32_value("hidden_size", hidden)?);
    put("block_count", c.u32_value("num_hidden_layers", p.n_layer)?);
    put(
        "feed_forward_length",
        c.u32_value("intermediate_size", p.ffn)?,
    );
    put("rope.dimension_count", c.u32_value("head_dim", head_dim)?);
    put(
        "attention.head_count",
        c.u32_value("num_attention_heads", n_head)?,
    );
    put(
        "attention.head_count_kv",
        c.u32_value("num_key_value_heads", n_head_kv)?,
    );
    let eps = c.f64("rms_norm_eps")?.unwrap_or(1e-5);
    put("attention.layer_norm_rms_epsilon", Value::F32(eps as f32));
    put("rope.freq_base", Value::F32(theta as f32));
    if head_dim != default_head_dim {
        // As convert_hf_to_gguf.py: only written when it differs from hidden / heads.
        put("attention.key_length", c.u32_value("head_dim", head_dim)?);
        put("attention.value_length", c.u32_value("head_dim", head_dim)?);
    }
    meta.extend(p.rope_keys.iter().cloned());
    Ok((p, meta))
}

/// `rope_scaling` → llama.cpp's keys (linear, yarn) or per-dimension factors (llama3).
fn rope_scaling(c: &Obj<'_>, mut p: HfParams, theta: f64) -> Result<HfParams, GgufError> {
    let Some(rs) = c.get("rope_scaling") else {
        return Ok(p);
    };
    let r = Obj {
        path: c.path,
        v: rs,
    };
    let kind = match r.str("rope_type")? {
        Some(k) => k,
        None => r.str("type")?.unwrap_or("default"),
    };
    let factor = || {
        r.f64("factor")?
            .ok_or_else(|| c.invalid("rope_scaling", "no factor"))
    };
    let key = |k: &str| format!("llama.rope.scaling.{k}");
    match kind {
        "default" | "none" => {}
        "linear" | "yarn" => {
            let f = factor()?;
            p.rope_keys.push((key("type"), Value::Str(kind.into())));
            p.rope_keys.push((key("factor"), Value::F32(f as f32)));
            if kind == "yarn" {
                let orig = r.req_usize("original_max_position_embeddings")?;
                let v = r.u32_value("original_max_position_embeddings", orig)?;
                p.rope_keys.push((key("original_context_length"), v));
            }
        }
        "llama3" => {
            let factor = factor()?;
            let low = r.f64("low_freq_factor")?.unwrap_or(1.0);
            let high = r.f64("high_freq_factor")?.unwrap_or(4.0);
            let orig = r.req_usize("original_max_position_embeddings")? as f64;
            // As convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors.
            let freqs = (0..p.head_dim / 2).map(|i| {
                let freq = 1.0 / theta.powf((2 * i) as f64 / p.head_dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                if wavelen < orig / high {
                    1.0
                } else if wavelen > orig / low {
                    factor as f32
                } else {
                    let smooth = (orig / wavelen - low) / (high - low);
                    (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                }
            });
            p.rope_freqs = Some(freqs.collect());
        }
        k => return Err(c.invalid("rope_scaling", format!("unsupported rope type `{k}`"))),
    }
    Ok(p)
}

/// One tensor to write: HF name, GGUF name, HF shape, q/k head count to permute with.
struct Planned {
    hf: String,
    gguf: String,
    shape: Vec<usize>,
    permute_heads: Option<usize>,
}

/// The tensors a llama with these parameters has, in llama.cpp's order, each checked to
/// be in the checkpoint with the right shape; anything else in it is an error.
fn plan(st: &MmapedSafetensors, path: &Path, p: &HfParams) -> Result<Vec<Planned>, GgufError> {
    // Saturating: a hostile config.json then fails the shape check instead of wrapping.
    let (h, q_rows, kv_rows) = (
        p.hidden,
        p.n_head.saturating_mul(p.head_dim),
        p.n_head_kv.saturating_mul(p.head_dim),
    );
    let mut present: std::collections::HashMap<String, Vec<usize>> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    let mut plan = Vec::new();
    // Checked as they are planned: a hostile layer count stops at the first missing one.
    let mut add = |gguf: String, hf: String, shape: Vec<usize>, permute_heads| {
        let found = present
            .remove(&hf)
            .ok_or_else(|| GgufError::MissingTensor {
                path: path.to_path_buf(),
                tensor: hf.clone(),
            })?;
        if found != shape {
            return Err(GgufError::BadTensor {
                path: path.to_path_buf(),
                tensor: hf,
                msg: format!("shape {found:?}, expected {shape:?} from config.json"),
            });
        }
        plan.push(Planned {
            hf,
            gguf,
            shape,
            permute_heads,
        });
        Ok(())
    };
    add(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        vec![p.vocab_size, h],
        None,
    )?;
    for l in 0..p.n_layer {
        for (g, hf) in LAYER_TENSORS {
            let (shape, perm) = match g {
                "attn_norm" | "ffn_norm" => (vec![h], None),
                "attn_q" => (vec![q_rows, h], Some(p.n_head)),
                "attn_k" => (vec![kv_rows, h], Some(p.n_head_kv)),
                "attn_v" => (vec![kv_rows, h], None),
                "attn_output" => (vec![h, q_rows], None),
                "ffn_down" => (vec![h, p.ffn], None),
                _ => (vec![p.ffn, h], None),
            };
            add(
                format!("blk.{l}.{g}.weight"),
                format!("model.layers.{l}.{hf}.weight"),
                shape,
                perm,
            )?;
        }
    }
    add(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        vec![h],
        None,
    )?;
    if !p.tied {
        add(
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![p.vocab_size, h],
            None,
        )?;
    }
    // Recomputed from rope_theta (inv_freq) or the same as the embeddings (tied lm_head).
    let skippable =
        |n: &str| n.ends_with("rotary_emb.inv_freq") || (p.tied && n == "lm_head.weight");
    if let Some(extra) = present.keys().filter(|n| !skippable(n)).min() {
        return Err(GgufError::UnknownTensor {
            path: path.to_path_buf(),
            tensor: extra.clone(),
            msg: "no llama GGUF equivalent".into(),
        });
    }
    Ok(plan)
}

/// Memory-maps `model.safetensors` or the shards named by `model.safetensors.index.json`.
/// Returns the maps and the path that names the checkpoint in errors.
fn open_safetensors(dir: &Path) -> Result<(MmapedSafetensors, PathBuf), GgufError> {
    let index = dir.join("model.safetensors.index.json");
    let (files, path) = if index.is_file() {
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| {
                Obj {
                    path: &index,
                    v: &json,
                }
                .wrong("weight_map", "object")
            })?;
        let mut files: Vec<PathBuf> = Vec::new();
        for v in map.values() {
            let f = v.as_str().ok_or_else(|| {
                Obj {
                    path: &index,
                    v: &json,
                }
                .wrong("weight_map", "object of strings")
            })?;
            if Path::new(f).components().count() != 1 {
                return Err(Obj {
                    path: &index,
                    v: &json,
                }
                .invalid("weight_map", format!("`{f}` is not a file name")));
            }
            let f = dir.join(f);
            if !files.contains(&f) {
                files.push(f);
            }
        }
        (files, index)
    } else {
        let single = dir.join("model.safetensors");
        (vec![single.clone()], single)
    };
    // SAFETY: the maps are only read; as with every mmap-based loader, the files must not
    // be truncated by another process meanwhile.
    let st =
        unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| GgufError::Safetensors {
            path: path.clone(),
            msg: e.to_string(),
        })?;
    Ok((st, path))
}

pub(super) fn quantize_dir(
    dir: &Path,
    out: &Path,
    opts: &QuantizeOptions,
) -> Result<QuantizeReport, GgufError> {
    let (p, mut meta) = read_config(dir, &dir.join("config.json"))?;
    set_file_type(&mut meta, opts.qtype);
    let (st, st_path) = open_safetensors(dir)?;
    // Before the tokenizer, which allocates vocab_size tokens: this checks it against the
    // embedding's shape.
    let plan = plan(&st, &st_path, &p)?;
    meta.extend(super::hf_tokenizer::tokenizer_metadata(dir, p.vocab_size)?);

    let mut specs = Vec::with_capacity(plan.len() + 1);
    if let Some(f) = &p.rope_freqs {
        specs.push(TensorSpec {
            name: ROPE_FREQS.into(),
            dims: vec![f.len()],
            dtype: opts.qtype.tensor_dtype(ROPE_FREQS, &[f.len()]),
        });
    }
    for t in &plan {
        let dims: Vec<usize> = t.shape.iter().rev().copied().collect();
        let dtype = opts.qtype.tensor_dtype(&t.gguf, &dims);
        specs.push(TensorSpec {
            name: t.gguf.clone(),
            dims,
            dtype,
        });
    }
    let mut job = Job::new(out, &meta, specs, opts)?;
    let fail = |tensor: &str, e: candle_core::Error| GgufError::BadTensor {
        path: st_path.clone(),
        tensor: tensor.to_string(),
        msg: e.to_string(),
    };
    if let Some(f) = &p.rope_freqs {
        let t = Tensor::new(f.as_slice(), &Device::Cpu).map_err(|e| fail(ROPE_FREQS, e))?;
        let bytes = encode(out, ROPE_FREQS, &t, job.next_dtype())?;
        job.write(ROPE_FREQS, &bytes)?;
    }
    for t in &plan {
        let mut x = st
            .load(&t.hf, &Device::Cpu)
            .and_then(|x| x.to_dtype(DType::F32))
            .map_err(|e| fail(&t.hf, e))?;
        if let Some(heads) = t.permute_heads {
            x = permute(&x, heads).map_err(|e| fail(&t.hf, e))?;
        }
        let bytes = encode(out, &t.gguf, &x, job.next_dtype())?;
        job.write(&t.gguf, &bytes)?;
    }
    job.finish()
}

/// llama.cpp's q/k row permutation (HF rows (head, 2, half) → GGUF rows (head, half, 2)),
/// the inverse of `convert::unpermute`.
pub(crate) fn permute(t: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    if n_heads == 0 || rows % (2 * n_heads) != 0 {
        candle_core::bail!("{rows} rows cannot be split into {n_heads} heads of even size");
    }
    t.reshape((n_heads, 2, rows / n_heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}
