//! GGUF reading and conversion of a llama.cpp GGUF checkpoint into a Hugging Face directory
//! (`model.safetensors`, `config.json`, `generation_config.json`, `tokenizer.json`,
//! `tokenizer_config.json`) that the rest of flint loads like any other HF checkpoint.
//!
//! - [`reader`]: our own bounds-checked GGUF v2/v3 parser over a memory map.
//! - [`convert`]: tensor name mapping, dequantization (candle), q/k un-permutation, config.
//! - [`tokenizer`]: rebuilding `tokenizer.json` / `tokenizer_config.json` from GGUF metadata.
//! - [`GgufWeights`]: the file's tensors served as they are stored (quantized projections and
//!   embedding), for a directory that [`convert`] wrote with `keep_quantized` (config and
//!   tokenizer files plus a `model.gguf` link to the source, no dequantized copy).
//!
//! Only the `llama` architecture is supported. Everything is written into a temporary
//! directory next to `out_dir` and renamed into place only when every file is complete.

mod convert;
mod params;
mod quantize;
mod reader;
mod tokenizer;
mod value;
mod weights;
mod writer;

pub use quantize::{
    ggml_type_name, quantize, ParseQuantTypeError, QuantType, QuantizeOptions, QuantizeReport,
};
pub use weights::GgufWeights;

/// The link to the source file in a directory converted with `keep_quantized`.
pub const GGUF_LINK: &str = "model.gguf";

mod test_writer;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_reader;
#[cfg(test)]
mod tests_writer;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Element type of the tensors written to `model.safetensors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutDType {
    #[default]
    F32,
    BF16,
    F16,
}

impl OutDType {
    /// The name used by `--dtype` and by this type's `FromStr`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutDType::F32 => "f32",
            OutDType::BF16 => "bf16",
            OutDType::F16 => "f16",
        }
    }

    /// The `torch_dtype` value written to `config.json`.
    pub fn torch_dtype(self) -> &'static str {
        match self {
            OutDType::F32 => "float32",
            OutDType::BF16 => "bfloat16",
            OutDType::F16 => "float16",
        }
    }
}

impl fmt::Display for OutDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an [`OutDType`] from a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid output dtype {0:?}: expected one of \"f32\", \"bf16\", \"f16\"")]
pub struct ParseOutDTypeError(pub String);

impl FromStr for OutDType {
    type Err = ParseOutDTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(OutDType::F32),
            "bf16" | "bfloat16" => Ok(OutDType::BF16),
            "f16" | "float16" => Ok(OutDType::F16),
            _ => Err(ParseOutDTypeError(s.to_string())),
        }
    }
}

/// Options of [`convert`].
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Element type of the written tensors.
    pub dtype: OutDType,
    /// Show a per-tensor progress bar on stderr.
    pub progress: bool,
    /// Write no weights: link the source file as [`GGUF_LINK`] and serve its tensors as they
    /// are stored ([`GgufWeights`]).
    pub keep_quantized: bool,
}

/// What [`convert`] produced.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// Number of tensors written to `model.safetensors`.
    pub tensors: usize,
    /// `general.architecture` of the source file.
    pub architecture: String,
    /// The directory that now holds the converted model.
    pub out_dir: PathBuf,
    /// Total size of all files written.
    pub bytes_written: u64,
}

/// Everything that can go wrong reading or converting a GGUF file. Every message names the
/// file and what in it is wrong.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: malformed GGUF at byte offset {offset}: {msg}", path.display())]
    Malformed {
        path: PathBuf,
        offset: u64,
        msg: String,
    },
    #[error("{}: not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")", path.display())]
    BadMagic { path: PathBuf, magic: [u8; 4] },
    #[error("{}: unsupported GGUF version {version} (supported: 2 and 3, little-endian)", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{}: missing metadata key `{key}`", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata key `{key}` has type {found}, expected {expected}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{}: metadata key `{key}` has an invalid value: {msg}", path.display())]
    InvalidValue {
        path: PathBuf,
        key: String,
        msg: String,
    },
    #[error("{}: unsupported architecture `{architecture}` (only `llama` can be converted)", path.display())]
    UnsupportedArchitecture { path: PathBuf, architecture: String },
    #[error("{}: tensor `{tensor}` has unsupported GGML type {type_name} (id {type_id})", path.display())]
    UnsupportedTensorType {
        path: PathBuf,
        tensor: String,
        type_id: u32,
        type_name: String,
    },
    #[error("{}: unexpected tensor `{tensor}` for a llama model: {msg}", path.display())]
    UnknownTensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
    #[error("{}: required tensor `{tensor}` is missing", path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{}: tensor `{tensor}`: {msg}", path.display())]
    BadTensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
    #[error("{}: tensor `{tensor}`: cannot dequantize: {source}", path.display())]
    Dequantize {
        path: PathBuf,
        tensor: String,
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error("{}: cannot build the tokenizer: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{}: output directory exists and is not empty; refusing to overwrite it", path.display())]
    OutDirNotEmpty { path: PathBuf },
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot write safetensors: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },
}

/// Converts the llama GGUF file `gguf` into a Hugging Face checkpoint directory `out_dir`.
///
/// `out_dir` must not exist or be an empty directory. Files are written into a temporary
/// directory created inside `out_dir`'s parent and renamed to `out_dir` only when complete,
/// so a failed conversion leaves nothing behind.
pub fn convert(
    gguf: &Path,
    out_dir: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport, GgufError> {
    check_out_dir(out_dir)?;
    let file = reader::GgufFile::open(gguf)?;
    let architecture = file.get_str("general.architecture")?.to_string();
    if architecture != "llama" {
        return Err(GgufError::UnsupportedArchitecture {
            path: gguf.to_path_buf(),
            architecture,
        });
    }
    // Everything that can be checked from the metadata is checked before anything is written.
    let params = params::LlamaParams::from_gguf(&file)?;
    let plan = convert::plan_tensors(&file, &params)?;
    let tok = tokenizer::build(&file, params.context_length)?;

    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|source| GgufError::Write {
        path: parent.clone(),
        source,
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(".flint-convert-")
        .tempdir_in(&parent)
        .map_err(|source| GgufError::Write {
            path: parent.clone(),
            source,
        })?;

    if opts.keep_quantized {
        link_source(gguf, &tmp.path().join(GGUF_LINK))?;
    } else {
        convert::write_safetensors(&file, &plan, opts, &tmp.path().join("model.safetensors"))?;
    }
    let config = params::config_json(&params, &tok, opts.dtype);
    write_json(&tmp.path().join("config.json"), &config)?;
    let gen = params::generation_config_json(&tok);
    write_json(&tmp.path().join("generation_config.json"), &gen)?;
    write_json(&tmp.path().join("tokenizer.json"), &tok.tokenizer_json)?;
    write_json(
        &tmp.path().join("tokenizer_config.json"),
        &tok.tokenizer_config,
    )?;

    let bytes_written = dir_size(tmp.path())?;
    // safetensors writes through a 0600 temporary file: give the weights the same (umask
    // based) permissions as the JSON files.
    if let Ok(meta) = fs::metadata(tmp.path().join("config.json")) {
        let _ = fs::set_permissions(tmp.path().join("model.safetensors"), meta.permissions());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // tempdir is created 0700; a model directory should be readable like any other.
        let _ = fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755));
    }
    // An empty `out_dir` was accepted above; it has to go for the rename to succeed.
    if out_dir.is_dir() {
        fs::remove_dir(out_dir).map_err(|source| GgufError::Write {
            path: out_dir.to_path_buf(),
            source,
        })?;
    }
    let tmp_path = tmp.keep();
    if let Err(source) = fs::rename(&tmp_path, out_dir) {
        let _ = fs::remove_dir_all(&tmp_path);
        return Err(GgufError::Write {
            path: out_dir.to_path_buf(),
            source,
        });
    }
    Ok(ConvertReport {
        tensors: plan.len(),
        architecture,
        out_dir: out_dir.to_path_buf(),
        bytes_written,
    })
}

/// Links `link` to the canonical path of `gguf` (a copy where links are not supported).
fn link_source(gguf: &Path, link: &Path) -> Result<(), GgufError> {
    let real = fs::canonicalize(gguf).map_err(|source| GgufError::Io { path: gguf.to_path_buf(), source })?;
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(&real, link);
    #[cfg(not(unix))]
    let made = fs::copy(&real, link).map(|_| ());
    made.map_err(|source| GgufError::Write { path: link.to_path_buf(), source })
}

fn check_out_dir(out_dir: &Path) -> Result<(), GgufError> {
    match fs::symlink_metadata(out_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(GgufError::Write {
            path: out_dir.to_path_buf(),
            source,
        }),
        Ok(meta) if meta.is_dir() => {
            let mut entries = fs::read_dir(out_dir).map_err(|source| GgufError::Write {
                path: out_dir.to_path_buf(),
                source,
            })?;
            if entries.next().is_some() {
                Err(GgufError::OutDirNotEmpty {
                    path: out_dir.to_path_buf(),
                })
            } else {
                Ok(())
            }
        }
        Ok(_) => Err(GgufError::OutDirNotEmpty {
            path: out_dir.to_path_buf(),
        }),
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), GgufError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| GgufError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    text.push('\n');
    fs::write(path, text).map_err(|source| GgufError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn dir_size(dir: &Path) -> Result<u64, GgufError> {
    let io = |source| GgufError::Write {
        path: dir.to_path_buf(),
        source,
    };
    let mut total = 0u64;
    for entry in fs::read_dir(dir).map_err(io)? {
        let meta = entry.map_err(io)?.metadata().map_err(io)?;
        if meta.is_file() {
            total = total.saturating_add(meta.len());
        }
    }
    Ok(total)
}

/// Synthetic GGUF files for tests in other crates (a catalog entry that converts one).
#[doc(hidden)]
pub mod testing {
    /// A 2-layer llama GGUF (F32 and Q8_0 tensors, tied embeddings, a tiny BPE vocab).
    pub fn tiny_llama_gguf() -> Vec<u8> {
        super::test_writer::tiny_llama().0.build()
    }
}
