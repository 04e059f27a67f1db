//! The one admission check: whether a sequence could ever run, from its prompt length,
//! `max_tokens` and the engine's fixed limits ([`AdmitLimits`]). The handle runs it before a
//! request is queued (so the caller gets the error at once) and the scheduler again when it
//! takes a sequence, with the same function and the same [`AdmitError`]s.

/// Limits that never change while an engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmitLimits {
    /// Prompt + output tokens of one sequence.
    pub max_model_len: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks a single sequence could hold: the whole cache, the null block excluded.
    pub usable_blocks: usize,
}

/// Why a sequence can never run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds the model's context length ({context})")]
    ContextTooLong { prompt: usize, max_tokens: usize, context: usize },
    #[error("the prompt ({prompt} tokens) needs {needed} KV blocks but the whole cache has {available}")]
    PromptExceedsCache { prompt: usize, needed: usize, available: usize },
}

/// Checks that a sequence of `prompt_len` prompt tokens generating up to `max_tokens` could
/// ever run under `limits`. Pure and O(1).
pub fn check_admission(limits: AdmitLimits, prompt_len: usize, max_tokens: usize) -> Result<(), AdmitError> {
    if prompt_len == 0 {
        return Err(AdmitError::EmptyPrompt);
    }
    if prompt_len.saturating_add(max_tokens) > limits.max_model_len {
        return Err(AdmitError::ContextTooLong { prompt: prompt_len, max_tokens, context: limits.max_model_len });
    }
    let needed = prompt_len.div_ceil(limits.block_size.max(1));
    if needed > limits.usable_blocks {
        return Err(AdmitError::PromptExceedsCache { prompt: prompt_len, needed, available: limits.usable_blocks });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_has_one_error() {
        let l = AdmitLimits { max_model_len: 100, block_size: 4, usable_blocks: 5 };
        assert_eq!(check_admission(l, 0, 1), Err(AdmitError::EmptyPrompt));
        assert_eq!(check_admission(l, 20, 80), Ok(()));
        assert_eq!(check_admission(l, 20, 81), Err(AdmitError::ContextTooLong { prompt: 20, max_tokens: 81, context: 100 }));
        assert!(matches!(check_admission(l, 1, usize::MAX), Err(AdmitError::ContextTooLong { .. })), "no overflow");
        assert_eq!(check_admission(l, 21, 1), Err(AdmitError::PromptExceedsCache { prompt: 21, needed: 6, available: 5 }));
    }
}
