//! The models layer's one error type.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model. Messages name the file, field or
/// tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: file not found (a model directory needs config.json and safetensors weights)")]
    MissingFile { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// `field` is the JSON path of the offending value (`target_modules[2]`), empty at the top.
    #[error("{path}: invalid JSON{}: {source}", at_field(.field))]
    Json { path: PathBuf, field: String, source: serde_json::Error },
    #[error("{path}: unsupported architecture {name:?} (supported: {supported})")]
    UnsupportedArchitecture { path: PathBuf, name: String, supported: &'static str },
    #[error("{path}: invalid value for `{field}`: {reason}")]
    InvalidConfig { path: PathBuf, field: &'static str, reason: String },
    #[error("{path}: corrupt safetensors file: {reason}")]
    CorruptWeights { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    InvalidAdapter { path: PathBuf, reason: String },
    #[error("loading weights from {dir}: {source}")]
    Weights { dir: PathBuf, source: candle_core::Error },
    #[error("invalid LoRA training setting `{field}`: {reason}")]
    InvalidLoraSpec { field: &'static str, reason: String },
    #[error("unsupported dtype {0:?} (use f32, bf16 or f16)")]
    UnsupportedDType(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

fn at_field(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!(" at `{field}`")
    }
}

impl ModelError {
    /// Parses JSON `text` read from `path` into `T`; an error names the field at fault
    /// (serde alone says only "invalid type ... at line 1 column 9").
    pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(text: &str, path: &std::path::Path) -> Result<T> {
        // serde reads a struct from an array too (`[8, 16, ...]`); these files are objects.
        if text.trim_start().as_bytes().first().is_some_and(|&b| b != b'{') {
            let source = <serde_json::Error as serde::de::Error>::custom("expected a JSON object");
            return Err(ModelError::Json { path: path.to_owned(), field: String::new(), source });
        }
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            // `.` is the root, `?` a place serde could not name.
            let field = if field == "." || field == "?" { String::new() } else { field };
            ModelError::Json { path: path.to_owned(), field, source: e.into_inner() }
        })
    }
}
