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
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
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
