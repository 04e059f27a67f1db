//! `flint quantize`: writes a llama GGUF file of one [`QuantType`] from a llama GGUF file
//! (requantization) or from a Hugging Face `LlamaForCausalLM` directory, through
//! [`super::writer::GgufWriter`]. [`quantize`] takes [`QuantizeOptions`] and returns a
//! [`QuantizeReport`].
//!
//! Like llama.cpp's `llama-quantize`: 1-D tensors (norms) and `rope_freqs` stay F32; a matrix
//! whose rows are not a whole number of the target's blocks falls back to a type whose blocks
//! fit. Tensors are produced one at a time, so memory is bounded by the largest tensor.
//! The Hugging Face side (config, tokenizer, tensor names, q/k permutation) is the `hf`
//! module at the end of this file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::convert::{dequantize, plan_tensors};
use super::params::{LlamaParams, ROPE_FREQS};
use super::reader::GgufFile;
use super::value::Value;
use super::writer::{ordered_metadata, GgufWriter, TensorSpec};
use super::GgufError;

/// The type of the quantized tensors of the written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

/// One row per type: `--type` name, aliases, candle type, llama.cpp's `llama_ftype` number.
/// The k-quants get the `_M` variants' numbers: every matrix gets the one type here, which
/// no llama.cpp mix is, but `_M` is what tools show for "mostly Qn_K".
const TABLE: [(QuantType, &str, &[&str], GgmlDType, u32); 13] = [
    (QuantType::F32, "f32", &["float32"], GgmlDType::F32, 0),
    (QuantType::F16, "f16", &["float16"], GgmlDType::F16, 1),
    (QuantType::BF16, "bf16", &["bfloat16"], GgmlDType::BF16, 32),
    (QuantType::Q4_0, "q4_0", &[], GgmlDType::Q4_0, 2),
    (QuantType::Q4_1, "q4_1", &[], GgmlDType::Q4_1, 3),
    (QuantType::Q5_0, "q5_0", &[], GgmlDType::Q5_0, 8),
    (QuantType::Q5_1, "q5_1", &[], GgmlDType::Q5_1, 9),
    (QuantType::Q8_0, "q8_0", &[], GgmlDType::Q8_0, 7),
    (QuantType::Q2K, "q2_k", &[], GgmlDType::Q2K, 10),
    (QuantType::Q3K, "q3_k", &[], GgmlDType::Q3K, 12),
    (
        QuantType::Q4K,
        "q4_k",
        &["q4_k_m", "q4_k_s"],
        GgmlDType::Q4K,
        15,
    ),
    (
        QuantType::Q5K,
        "q5_k",
        &["q5_k_m", "q5_k_s"],
        GgmlDType::Q5K,
        17,
    ),
    (QuantType::Q6K, "q6_k", &[], GgmlDType::Q6K, 18),
];

impl QuantType {
    /// Every type, in the order `--type` lists them.
    pub fn all() -> impl Iterator<Item = QuantType> {
        TABLE.iter().map(|row| row.0)
    }

    fn row(
        self,
    ) -> &'static (
        QuantType,
        &'static str,
        &'static [&'static str],
        GgmlDType,
        u32,
    ) {
        TABLE
            .iter()
            .find(|row| row.0 == self)
            .expect("TABLE has a row for every variant")
    }

    /// The name `--type` and [`FromStr`] accept.
    pub fn as_str(self) -> &'static str {
        self.row().1
    }

    /// The candle (ggml) tensor type.
    pub fn ggml_dtype(self) -> GgmlDType {
        self.row().3
    }

    /// llama.cpp's `llama_ftype` number, written as `general.file_type`.
    pub fn llama_ftype(self) -> u32 {
        self.row().4
    }

    /// What a matrix gets when its rows are not a whole number of this type's blocks, as in
    /// llama.cpp (which uses IQ4_NL for Q2_K/Q3_K; candle has no IQ4_NL, Q4_0 is the nearest).
    pub fn fallback(self) -> GgmlDType {
        match self {
            QuantType::Q2K | QuantType::Q3K => GgmlDType::Q4_0,
            QuantType::Q4K => GgmlDType::Q5_0,
            QuantType::Q5K => GgmlDType::Q5_1,
            QuantType::Q6K => GgmlDType::Q8_0,
            _ => GgmlDType::F16,
        }
    }

    /// The type the tensor `name` with GGUF dimensions `dims` (row length first) is stored as.
    pub fn tensor_dtype(self, name: &str, dims: &[usize]) -> GgmlDType {
        if dims.len() < 2 || name == ROPE_FREQS {
            return GgmlDType::F32;
        }
        let fits = |d: GgmlDType| dims[0].is_multiple_of(d.block_size());
        [self.ggml_dtype(), self.fallback()]
            .into_iter()
            .find(|&d| fits(d))
            .unwrap_or(GgmlDType::F16)
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`QuantType`]; its message lists the accepted names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantization type {0:?}: expected one of {list}", list = accepted_names())]
pub struct ParseQuantTypeError(pub String);

fn accepted_names() -> String {
    let mut names = Vec::new();
    for (_, name, aliases, _, _) in TABLE {
        names.push(name);
        names.extend(aliases.iter().copied());
    }
    names.join(", ")
}

impl FromStr for QuantType {
    type Err = ParseQuantTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let want = s.trim().to_ascii_lowercase();
        TABLE
            .iter()
            .find(|(_, name, aliases, _, _)| *name == want || aliases.contains(&want.as_str()))
            .map(|row| row.0)
            .ok_or_else(|| ParseQuantTypeError(s.to_string()))
    }
}

/// Options of [`quantize`].
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// Type of the written matrices.
    pub qtype: QuantType,
    /// Show a per-tensor progress bar on stderr.
    pub progress: bool,
}

/// What [`quantize`] wrote.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    /// Number of tensors in the written file.
    pub tensors: usize,
    /// How many tensors were written as each type, in order of first appearance.
    pub per_type: Vec<(GgmlDType, usize)>,
    /// Size of the written file.
    pub bytes_written: u64,
    /// The written file.
    pub out: PathBuf,
}

impl QuantizeReport {
    /// `per_type` as text, e.g. `q8_0: 14, f32: 5`.
    pub fn type_counts(&self) -> String {
        self.per_type
            .iter()
            .map(|(d, n)| format!("{}: {n}", ggml_type_name(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The lower-case ggml name of a type (`q4_k`, `bf16`, ...).
pub fn ggml_type_name(d: GgmlDType) -> &'static str {
    match d {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// Writes `out` (a GGUF file) from `input`: a llama GGUF file, or a Hugging Face llama
/// directory (`config.json`, `model.safetensors[.index.json]`, `tokenizer.json`,
/// `tokenizer_config.json`). `out` is replaced atomically; on error nothing is written.
pub fn quantize(
    input: &Path,
    out: &Path,
    opts: &QuantizeOptions,
) -> Result<QuantizeReport, GgufError> {
    match std::fs::metadata(input) {
        Ok(m) if m.is_dir() => hf::quantize_dir(input, out, opts),
        Ok(_) => requantize(input, out, opts),
        Err(source) => Err(GgufError::Io {
            path: input.to_path_buf(),
            source,
        }),
    }
}

/// GGUF → GGUF: the metadata is copied in order, the file type updated, every tensor
/// re-encoded (or copied as it is when it already has its target type).
fn requantize(
    input: &Path,
    out: &Path,
    opts: &QuantizeOptions,
) -> Result<QuantizeReport, GgufError> {
    let file = GgufFile::open(input)?;
    let architecture = file.get_str("general.architecture")?;
    if architecture != "llama" {
        return Err(GgufError::UnsupportedArchitecture {
            path: input.to_path_buf(),
            architecture: architecture.to_string(),
        });
    }
    // What `flint convert` would refuse is refused before anything is written.
    let params = LlamaParams::from_gguf(&file)?;
    plan_tensors(&file, &params)?;

    let mut metadata = ordered_metadata(input)?;
    set_file_type(&mut metadata, opts.qtype);
    let specs: Vec<TensorSpec> = file
        .tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dims: t.dims.clone(),
            dtype: opts.qtype.tensor_dtype(&t.name, &t.dims),
        })
        .collect();
    let mut job = Job::new(out, &metadata, specs, opts)?;
    for t in &file.tensors {
        let dtype = job.next_dtype();
        if t.dtype == dtype {
            // Already the target type: copied, so no rounding is added.
            job.write(&t.name, file.tensor_data(t)?)?;
        } else {
            let x = dequantize(&file, t)?;
            let bytes = encode(out, &t.name, &x, dtype)?;
            job.write(&t.name, &bytes)?;
        }
    }
    job.finish()
}

/// Sets `general.file_type` and `general.quantization_version`, where they are or after
/// the other `general.*` keys.
pub(crate) fn set_file_type(metadata: &mut Vec<(String, Value)>, qtype: QuantType) {
    for (key, value) in [
        ("general.quantization_version", Value::U32(2)),
        ("general.file_type", Value::U32(qtype.llama_ftype())),
    ] {
        if let Some(slot) = metadata.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
            continue;
        }
        let at = metadata
            .iter()
            .rposition(|(k, _)| k.starts_with("general."))
            .map_or(metadata.len(), |i| i + 1);
        metadata.insert(at, (key.to_string(), value));
    }
}

/// Encodes an f32 tensor in HF shape (rows last) as `dtype`, in GGUF byte layout.
pub(crate) fn encode(
    out: &Path,
    name: &str,
    t: &Tensor,
    dtype: GgmlDType,
) -> Result<Vec<u8>, GgufError> {
    let fail = |e: candle_core::Error| GgufError::BadTensor {
        path: out.to_path_buf(),
        tensor: name.to_string(),
        msg: format!("cannot quantize to {}: {e}", ggml_type_name(dtype)),
    };
    let q = QTensor::quantize(t, dtype).map_err(fail)?;
    let data = q.data().map_err(fail)?;
    Ok(data.into_owned())
}

/// One output file being written: the writer, the per-type counts and the progress bar.
pub(crate) struct Job {
    writer: GgufWriter,
    out: PathBuf,
    counts: Vec<(GgmlDType, usize)>,
    tensors: usize,
    progress: Option<ProgressBar>,
}

impl Job {
    pub fn new(
        out: &Path,
        metadata: &[(String, Value)],
        specs: Vec<TensorSpec>,
        opts: &QuantizeOptions,
    ) -> Result<Self, GgufError> {
        let mut counts: Vec<(GgmlDType, usize)> = Vec::new();
        for s in &specs {
            match counts.iter_mut().find(|(d, _)| *d == s.dtype) {
                Some(c) => c.1 += 1,
                None => counts.push((s.dtype, 1)),
            }
        }
        let tensors = specs.len();
        // The file first: no progress bar is drawn for a job that cannot start.
        let writer = GgufWriter::create(out, metadata, specs)?;
        let progress = opts.progress.then(|| {
            let pb =
                ProgressBar::with_draw_target(Some(tensors as u64), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "quantizing [{bar:30}] {pos}/{len} {elapsed} {wide_msg}",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb
        });
        Ok(Self {
            writer,
            out: out.to_path_buf(),
            counts,
            tensors,
            progress,
        })
    }

    /// The type of the tensor to write next (F32 once all are written).
    pub fn next_dtype(&self) -> GgmlDType {
        self.writer
            .next_tensor()
            .map_or(GgmlDType::F32, |t| t.dtype)
    }

    pub fn write(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        if let Some(pb) = &self.progress {
            pb.set_message(name.to_string());
        }
        self.writer.write_tensor(name, data)?;
        if let Some(pb) = &self.progress {
            pb.inc(1);
        }
        Ok(())
    }

    pub fn finish(self) -> Result<QuantizeReport, GgufError> {
        if let Some(pb) = &self.progress {
            pb.finish_and_clear();
        }
        let bytes_written = self.writer.finish()?;
        Ok(QuantizeReport {
            tensors: self.tensors,
            per_type: self.counts,
            bytes_written,
            out: self.out,
        })
    }
}

/// Hugging Face llama directory → GGUF: the inverse of `flint convert` (config.json →
/// `llama.*`, tokenizer.json → `tokenizer.ggml.*`, HF names → GGUF names, q/k rows permuted
/// the way llama.cpp's `convert_hf_to_gguf.py` does).
mod hf {
    use std::fs;
    use std::path::{Path, PathBuf};

    use candle_core::safetensors::MmapedSafetensors;
    use candle_core::{DType, Device, Tensor};
    use serde_json::Value as Json;

    use super::super::params::ROPE_FREQS;
    use super::super::value::{Array, Value};
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
    const TYPE_NORMAL: i32 = 1;
    const TYPE_CONTROL: i32 = 3;
    const TYPE_USER_DEFINED: i32 = 4;

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

    fn read_json(path: &Path) -> Result<Json, GgufError> {
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
        meta.extend(tokenizer_metadata(dir, p.vocab_size)?);

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

    /// `tokenizer.ggml.*` from tokenizer.json (byte-level BPE only), tokenizer_config.json and
    /// config.json; `n_vocab` (the embedding rows) tokens, unused ids filled with `[PAD{id}]`
    /// as convert_hf_to_gguf.py does, since llama.cpp wants one token per embedding row.
    fn tokenizer_metadata(dir: &Path, n_vocab: usize) -> Result<Vec<(String, Value)>, GgufError> {
        let path = dir.join("tokenizer.json");
        let json = read_json(&path)?;
        let fail = |msg: String| GgufError::Tokenizer {
            path: path.clone(),
            msg,
        };
        let model = json.get("model").cloned().unwrap_or(Json::Null);
        let kind = model.get("type").and_then(Json::as_str).unwrap_or("?");
        if kind != "BPE" || model.get("byte_fallback").and_then(Json::as_bool) == Some(true) {
            return Err(fail(format!(
                "only byte-level BPE tokenizers can be written to GGUF (model type `{kind}`{})",
                if kind == "BPE" {
                    ", byte_fallback: SentencePiece-style"
                } else {
                    ""
                }
            )));
        }
        let pre = pre_tokenizer_name(json.get("pre_tokenizer")).ok_or_else(|| {
            fail("unsupported pre_tokenizer (supported: GPT-2 ByteLevel, SmolLM digits + ByteLevel, Llama 3 and Qwen2 regex splits)".into())
        })?;

        let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
        let mut types = vec![TYPE_USER_DEFINED; n_vocab];
        let mut set = |id: Option<u64>, tok: &str, ty: i32| -> Result<(), GgufError> {
            let slot = id
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < n_vocab)
                .ok_or_else(|| {
                    fail(format!(
                        "token {tok:?} has id {id:?}, outside the {n_vocab} embedding rows"
                    ))
                })?;
            tokens[slot] = Some(tok.to_string());
            types[slot] = ty;
            Ok(())
        };
        let vocab = model
            .get("vocab")
            .and_then(Json::as_object)
            .ok_or_else(|| fail("model.vocab is not an object".into()))?;
        for (tok, id) in vocab {
            set(id.as_u64(), tok, TYPE_NORMAL)?;
        }
        for a in json
            .get("added_tokens")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let tok = a.get("content").and_then(Json::as_str).unwrap_or("");
            let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
            set(
                a.get("id").and_then(Json::as_u64),
                tok,
                if special {
                    TYPE_CONTROL
                } else {
                    TYPE_USER_DEFINED
                },
            )?;
        }
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
            .collect();
        let mut merges = Vec::new();
        for m in model
            .get("merges")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let pair = match (m.as_str(), m.as_array().map(Vec::as_slice)) {
                (Some(s), _) => Some(s.to_string()),
                (_, Some([a, b])) => a.as_str().zip(b.as_str()).map(|(a, b)| format!("{a} {b}")),
                _ => None,
            };
            merges.push(pair.ok_or_else(|| fail(format!("invalid merge {m}")))?);
        }

        let mut ids = std::collections::HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            ids.entry(t.as_str()).or_insert(i as u32);
        }
        let tc_path = dir.join("tokenizer_config.json");
        let tc = if tc_path.is_file() {
            read_json(&tc_path)?
        } else {
            Json::Null
        };
        let config = read_json(&dir.join("config.json"))?;
        let mut meta = vec![
            (
                "tokenizer.ggml.model".to_string(),
                Value::Str("gpt2".into()),
            ),
            ("tokenizer.ggml.pre".to_string(), Value::Str(pre.into())),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(Array::Str(tokens.clone())),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array(Array::I32(types)),
            ),
            (
                "tokenizer.ggml.merges".to_string(),
                Value::Array(Array::Str(merges)),
            ),
        ];
        // As gguf-py's SpecialVocab: tokenizer_config.json's token strings first, then
        // config.json's ids.
        for (typ, key) in [
            ("bos", "bos"),
            ("eos", "eos"),
            ("unk", "unknown"),
            ("pad", "padding"),
        ] {
            let by_name = tc.get(format!("{typ}_token")).and_then(|t| match t {
                Json::Object(o) => o.get("content").and_then(Json::as_str),
                t => t.as_str(),
            });
            let by_id = config.get(format!("{typ}_token_id")).and_then(|v| match v {
                Json::Array(a) => a.first().and_then(Json::as_u64),
                v => v.as_u64(),
            });
            let id = by_name
                .and_then(|n| ids.get(n).copied())
                .or_else(|| by_id.and_then(|i| u32::try_from(i).ok()));
            if let Some(id) = id.filter(|&i| (i as usize) < n_vocab) {
                meta.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(id)));
            }
        }
        for key in ["add_bos_token", "add_eos_token"] {
            if let Some(b) = tc.get(key).and_then(Json::as_bool) {
                meta.push((format!("tokenizer.ggml.{key}"), Value::Bool(b)));
            }
        }
        let template = match tc.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            // A list of named templates: the default one.
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template")?.as_str().map(String::from)),
            _ => None,
        };
        if let Some(t) = template {
            meta.push(("tokenizer.chat_template".to_string(), Value::Str(t)));
        }
        Ok(meta)
    }

    /// llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer (the structures
    /// `flint convert` writes for them, and the original checkpoints use).
    fn pre_tokenizer_name(pre: Option<&Json>) -> Option<&'static str> {
        fn ty(v: &Json) -> &str {
            v.get("type").and_then(Json::as_str).unwrap_or("")
        }
        let regex = |v: &Json| v.get("use_regex").and_then(Json::as_bool).unwrap_or(true);
        let pre = pre?;
        let items: Vec<&Json> = match ty(pre) {
            "Sequence" => pre.get("pretokenizers")?.as_array()?.iter().collect(),
            _ => vec![pre],
        };
        match items[..] {
            [b] if ty(b) == "ByteLevel" && regex(b) => Some("gpt-2"),
            [d, b] if ty(d) == "Digits" && ty(b) == "ByteLevel" && regex(b) => {
                (d.get("individual_digits").and_then(Json::as_bool) == Some(true))
                    .then_some("smollm")
            }
            [s, b] if ty(s) == "Split" && ty(b) == "ByteLevel" && !regex(b) => {
                let re = s.get("pattern")?.get("Regex")?.as_str()?;
                if re.contains(r"\p{N}{1,3}") {
                    Some("llama-bpe")
                } else if re.contains(r"\p{N}|") {
                    Some("qwen2")
                } else {
                    None
                }
            }
            _ => None,
        }
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
}
