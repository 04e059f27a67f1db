//! What the scheduler knows about a sequence: its tokens, its progress and when it must stop.

use std::sync::Arc;

use crate::ids::{AdapterId, SeqId};

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token id or a stop string.
    Stop,
    /// `max_tokens`, the model's context length, or (alone) more KV than the whole cache.
    Length,
}

impl FinishReason {
    /// The OpenAI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What matched when a sequence stopped (`None` for the model's own end-of-sequence token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// One of the request's `stop_token_ids` (not part of the output).
    TokenId(u32),
    /// One of the request's stop strings (cut from the output text).
    Text(String),
}

/// How a sequence ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    pub stop: Option<StopReason>,
}

impl Finish {
    pub fn length() -> Self {
        Self { reason: FinishReason::Length, stop: None }
    }
}

/// A sequence to add to the scheduler.
#[derive(Clone, Debug)]
pub struct NewSeq {
    pub id: SeqId,
    /// Shared by the request's samples (each sequence copies it once into its tokens).
    pub prompt: Arc<[u32]>,
    pub max_tokens: usize,
    /// End-of-sequence tokens are ignored until this many tokens were generated.
    pub min_tokens: usize,
    /// The model's end-of-sequence ids; empty with `ignore_eos`.
    pub eos_ids: Arc<[u32]>,
    /// The request's, shared by its samples.
    pub stop_token_ids: Arc<[u32]>,
    pub adapter: Option<AdapterId>,
    /// Enters the prefix-cache hash of the first block: only sequences with the same salt
    /// share cached blocks.
    pub cache_salt: Option<Arc<str>>,
    /// Parallel samples: wait until this sequence has computed its prompt, so its full prompt
    /// blocks are in the prefix cache and shared instead of computed again.
    pub after: Option<SeqId>,
}

/// A sequence's state inside the scheduler.
#[derive(Debug)]
pub(crate) struct Seq {
    pub spec: NewSeq,
    /// Prompt followed by the tokens generated so far.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache; catches up with `tokens.len()`.
    pub num_computed: usize,
    /// Has been admitted at least once (prefix-cache stats count the first admission only).
    pub started: bool,
    /// Whether the sequence is in the running set (else the waiting queue).
    pub running: bool,
    /// Bumped each time the sequence takes a place in a lane; older entries are tombstones.
    pub epoch: u64,
}

impl Seq {
    pub fn new(spec: NewSeq) -> Self {
        let tokens = spec.prompt.to_vec();
        let prompt_len = tokens.len();
        Self { spec, tokens, prompt_len, num_computed: 0, started: false, running: false, epoch: 0 }
    }

    pub fn num_output(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Applies a sampled token: appended to the output unless it ends the sequence.
    /// Returns whether it was appended and whether the sequence is done.
    pub fn accept(&mut self, token: u32, max_model_len: usize) -> (bool, Option<Finish>) {
        let past_min = self.num_output() >= self.spec.min_tokens;
        if past_min && self.spec.stop_token_ids.contains(&token) {
            return (false, Some(Finish { reason: FinishReason::Stop, stop: Some(StopReason::TokenId(token)) }));
        }
        if past_min && self.spec.eos_ids.contains(&token) {
            return (false, Some(Finish { reason: FinishReason::Stop, stop: None }));
        }
        self.tokens.push(token);
        let done = self.num_output() >= self.spec.max_tokens || self.tokens.len() >= max_model_len;
        (true, done.then(Finish::length))
    }
}
