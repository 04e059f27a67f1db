//! The generation layer every protocol shares (OpenAI, Ollama, and the APIs to come): what
//! happens between "a request was parsed" and "its answer is shaped".
//!
//! - [`admission`]: [`Admission`] counts *sequences* (prompts × `n`) against
//!   `--max-num-seqs` + `--max-waiting-requests`; a [`Permit`] holds them until dropped;
//! - [`prompt`]: [`Role`] (an allow-list), chat rendering and tokenization on blocking threads
//!   under [`PromptLimits`], with user text never matched as special tokens;
//! - [`params`]: [`SamplingFields`] (the protocol-neutral sampling request) → checked
//!   [`flint_engine::SamplingParams`];
//! - [`stream`]: submitting engine requests, merging their output ([`Fwd`]), observing their
//!   latencies for `/metrics`, collecting or forwarding it until the client leaves;
//! - [`GenError`]: this layer's errors, mapped to HTTP once in `api::error`.
//!
//! Nothing here knows a protocol's JSON: `api/<protocol>/` parses requests into these types and
//! shapes the results.

pub mod admission;
pub mod params;
pub mod prompt;
pub mod stream;

pub use admission::{Admission, Permit};
pub use params::{logprobs_count, sampling_params, SamplingFields};
pub use prompt::{CancelOnDrop, PromptLimits, Role};
pub use stream::{collect_deltas, forward_all, next_or_gone, submit, Fwd, Submitted};

use flint_engine::EngineError;
use rand::Rng;

/// Why a generation request cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// A request field is wrong (`param` names it, as `messages[3].role`).
    #[error("{message}")]
    Invalid { param: String, message: String },
    /// Admitting the request would pass the sequences the server holds at once; retry later.
    #[error("too many sequences in flight (limit {limit}); retry shortly")]
    Busy { limit: usize },
    /// The LoRA adapter the request names was unloaded after it was resolved.
    #[error("the model `{0}` does not exist (its adapter was unloaded)")]
    AdapterGone(String),
    /// The client left before the work was done.
    #[error("the request was cancelled")]
    Cancelled,
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A bug or a dead worker thread, not the request's fault.
    #[error("{0}")]
    Internal(String),
}

impl GenError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { param: param.into(), message: message.into() }
    }
}

pub type Result<T, E = GenError> = std::result::Result<T, E>;

/// Unix time in seconds (`created`).
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `prefix-` + 24 random hex digits, like OpenAI's ids.
pub fn new_id(prefix: &str) -> String {
    let n: u128 = rand::rng().random();
    format!("{prefix}-{:024x}", n & ((1u128 << 96) - 1))
}
