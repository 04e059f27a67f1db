//! The engine layer's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] flint_models::ModelError),
    #[error("{path}: cannot load tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("invalid sampling parameter `{field}`: {reason}")]
    InvalidParameter { field: &'static str, reason: String },
    #[error("token id {id} is outside the vocabulary ({vocab_size} tokens)")]
    TokenOutOfVocab { id: u32, vocab_size: usize },
    #[error("invalid engine setting `{field}`: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// The request could never run (empty, too long for the context or the whole cache).
    #[error(transparent)]
    Admit(#[from] crate::scheduler::AdmitError),
    #[error("LoRA adapter `{0}` does not exist")]
    UnknownAdapter(String),
    #[error("a LoRA adapter named `{0}` is already loaded")]
    AdapterExists(String),
    #[error("invalid LoRA adapter: {0}")]
    InvalidAdapter(flint_models::ModelError),
    #[error("LoRA is not enabled on this server (start it with --enable-lora, --lora or --lora-dir)")]
    LoraDisabled,
    #[error("the engine is shutting down")]
    Shutdown,
    #[error("engine step failed: {0}")]
    StepFailed(String),
    /// The engine thread panicked or a step failed; it is gone and must be restarted.
    #[error("the engine failed: {0}")]
    EngineFailed(String),
    #[error("model forward failed: {0}")]
    Forward(#[from] candle_core::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
