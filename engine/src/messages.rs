//! Every message between the engine thread and the rest of the process, in one place:
//! [`EngineCommand`]s (handle → thread, one channel per engine), [`RequestEvent`]s (thread →
//! a request's [`crate::OutputStream`], one channel per request), and the [`Submission`] that
//! carries a new request. [`FaultKind`] is the test-only fault a command can inject.

use std::sync::Arc;

use flint_models::LoraAdapter;
use tokio::sync::{mpsc::UnboundedSender, oneshot};

use crate::{
    core::EngineStats,
    error::EngineError,
    ids::{AdapterId, RequestId},
    output::TokenLogprob,
    sampling::SamplingParams,
    scheduler::Finish,
};

/// A new request for the engine thread.
#[derive(Debug)]
pub(crate) struct Submission {
    pub id: RequestId,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub adapter: Option<AdapterId>,
    /// Prefix-cache namespace ([`crate::SubmitOptions::cache_salt`]).
    pub cache_salt: Option<Arc<str>>,
    pub events: UnboundedSender<RequestEvent>,
}

/// Everything the engine thread can be asked to do.
#[derive(Debug)]
pub(crate) enum EngineCommand {
    Submit(Submission),
    /// Ends a request (`index: None`) or one of its samples; blocks are freed at once.
    Abort { id: RequestId, index: Option<usize> },
    Stats(oneshot::Sender<EngineStats>),
    /// A checked adapter, registered by the handle under `id`.
    AddAdapter { id: AdapterId, adapter: Arc<LoraAdapter> },
    /// The adapter's name is gone; it is dropped once no request uses it.
    RemoveAdapter { id: AdapterId },
    /// Test-only: fail the engine at its next step ([`crate::EngineHandle::inject_fault`]).
    Fault(FaultKind),
    Shutdown,
}

/// What the engine thread tells a request's stream.
#[derive(Debug)]
pub(crate) enum RequestEvent {
    /// Sample `index` was admitted; `cached_tokens` of its prompt came from the prefix cache.
    Started { index: usize, cached_tokens: usize },
    /// Sample `index` produced an output token.
    Token { index: usize, token: u32, logprob: Option<TokenLogprob> },
    /// Sample `index` ended (token-level reasons: EOS, stop token ids, length).
    Finished { index: usize, finish: Finish },
    /// The whole request failed.
    Failed(EngineError),
}

/// A fault [`crate::EngineHandle::inject_fault`] makes the engine thread suffer, so the
/// supervision of an engine (failure reporting, restarts) can be tested without a broken GPU.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The engine thread panics.
    Panic,
    /// A step fails, as a forward pass returning an error would.
    StepError,
}
