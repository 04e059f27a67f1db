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

mod hf;
mod hf_tokenizer;
