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
    /// Boxed: the engine's errors are large, and this layer's results are everywhere.
    #[error(transparent)]
    Engine(Box<EngineError>),
    /// A bug or a dead worker thread, not the request's fault.
    #[error("{0}")]
    Internal(String),
}

impl From<EngineError> for GenError {
    fn from(e: EngineError) -> Self {
        Self::Engine(Box::new(e))
    }
}

impl GenError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { param: param.into(), message: message.into() }
    }
}

pub type Result<T, E = GenError> = std::result::Result<T, E>;


/// Longest `cache_salt` a request may give, in bytes.
pub const MAX_CACHE_SALT_BYTES: usize = 256;

/// The prefix-cache salt of a request from the API key it presents (when the server isolates
/// tenants) and its own `cache_salt`. Two requests share cached blocks only when both agree.
/// The key enters as a digest: it is never stored, and its length does not matter.
pub fn cache_salt(key: Option<&[u8]>, requested: Option<&str>) -> Option<String> {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    if key.is_none() && requested.is_none() {
        return None;
    }
    let mut out = String::with_capacity(34 + requested.map_or(0, str::len));
    if let Some(k) = key {
        out.push('k');
        for b in &Sha256::digest(k)[..16] {
            let _ = write!(out, "{b:02x}");
        }
    }
    out.push(':');
    out.push_str(requested.unwrap_or_default());
    Some(out)
}

/// Checks a request's `cache_salt`: non-empty when given, at most [`MAX_CACHE_SALT_BYTES`].
pub fn check_cache_salt(salt: Option<&str>) -> Result<()> {
    match salt {
        Some("") => Err(GenError::invalid("cache_salt", "`cache_salt` must not be empty")),
        Some(s) if s.len() > MAX_CACHE_SALT_BYTES => Err(GenError::invalid(
            "cache_salt",
            format!("`cache_salt` has {} bytes; at most {MAX_CACHE_SALT_BYTES} are allowed", s.len()),
        )),
        _ => Ok(()),
    }
}

/// Unix time in seconds (`created`).
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `prefix-` + 24 random hex digits, like OpenAI's ids.
pub fn new_id(prefix: &str) -> String {
    let n: u128 = rand::rng().random();
    format!("{prefix}-{:024x}", n & ((1u128 << 96) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salts_keep_tenants_and_requests_apart() {
        assert_eq!(cache_salt(None, None), None);
        let a = cache_salt(Some(b"key-a"), None);
        assert_ne!(a, cache_salt(Some(b"key-b"), None));
        assert_eq!(a, cache_salt(Some(b"key-a"), None));
        assert_ne!(a, cache_salt(Some(b"key-a"), Some("s")));
        assert_ne!(cache_salt(None, Some("s")), cache_salt(Some(b""), Some("s")));
        assert!(!a.unwrap().contains("key-a"), "the key itself is never part of the salt");
        assert!(check_cache_salt(Some("")).is_err() && check_cache_salt(Some(&"x".repeat(257))).is_err());
    }
}
