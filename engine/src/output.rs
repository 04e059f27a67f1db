//! [`OutputStream`]: one request's results, as the client sees them.
//!
//! The engine thread sends raw token events; the stream turns them into text deltas on the
//! consumer's side: incremental detokenization (whole UTF-8 characters only), stop strings (the
//! text never contains one, and only what could still become one is held back), per-token
//! logprobs. Dropping the stream aborts the request, which frees its KV blocks at once.

use std::{collections::VecDeque, sync::Arc};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::{
    detokenizer::Detokenizer,
    error::Result,
    ids::RequestId,
    messages::{EngineCommand, RequestEvent},
    sampling::SamplingParams,
    scheduler::{Finish, FinishReason, StopReason},
    stop::StopMatcher,
    supervise::Supervision,
    tokenizer::Tokenizer,
};

/// Log-probability of a sampled token and, if asked for, the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// New output of one sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamDelta {
    /// Which of the request's `n` samples.
    pub index: usize,
    pub text: String,
    pub token_ids: Vec<u32>,
    /// One per token in `token_ids` when the request asked for logprobs.
    pub logprobs: Vec<TokenLogprob>,
    /// Set on the sample's last delta.
    pub finish: Option<Finish>,
}

/// A whole sample, as returned by [`OutputStream::collect`].
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Finish,
}

/// Token counts for the usage block of a response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache (first sample).
    pub cached_tokens: usize,
    /// Generated tokens over all samples.
    pub completion_tokens: usize,
}

#[derive(Debug, Default)]
struct SampleState {
    detok: Detokenizer,
    stop: StopMatcher,
    /// Tokens (and logprobs) whose text is still held back by the stop matcher.
    held_ids: Vec<u32>,
    held_logprobs: Vec<TokenLogprob>,
    done: bool,
}

/// One request's output, consumed with [`OutputStream::next`].
pub struct OutputStream {
    id: RequestId,
    rx: UnboundedReceiver<RequestEvent>,
    cmd: UnboundedSender<EngineCommand>,
    /// Why the engine is gone, when the event channel closes before the end.
    sup: Arc<Supervision>,
    tokenizer: Arc<Tokenizer>,
    samples: Vec<SampleState>,
    ready: VecDeque<StreamDelta>,
    usage: Usage,
    failed: bool,
}

impl OutputStream {
    pub(crate) fn new(
        id: RequestId,
        rx: UnboundedReceiver<RequestEvent>,
        cmd: UnboundedSender<EngineCommand>,
        sup: Arc<Supervision>,
        tokenizer: Arc<Tokenizer>,
        params: &SamplingParams,
        prompt_tokens: usize,
    ) -> Self {
        let stops = params.stop();
        let samples =
            (0..params.n()).map(|_| SampleState { stop: StopMatcher::new(stops.clone()), ..Default::default() }).collect();
        let usage = Usage { prompt_tokens, ..Default::default() };
        Self { id, rx, cmd, sup, tokenizer, samples, ready: VecDeque::new(), usage, failed: false }
    }

    pub fn request_id(&self) -> RequestId {
        self.id
    }

    /// Token counts so far (final once the stream has ended).
    pub fn usage(&self) -> Usage {
        self.usage
    }

    fn all_done(&self) -> bool {
        self.failed || self.samples.iter().all(|s| s.done)
    }

    /// The next delta of any sample; `None` once every sample has finished.
    pub async fn next(&mut self) -> Option<Result<StreamDelta>> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Some(Ok(d));
            }
            if self.all_done() {
                return None;
            }
            let Some(event) = self.rx.recv().await else {
                self.failed = true;
                return Some(Err(self.sup.gone()));
            };
            if let Err(e) = self.handle(event) {
                self.failed = true;
                return Some(Err(e));
            }
        }
    }

    /// Waits for the whole output of every sample (ordered by index).
    pub async fn collect(mut self) -> Result<Vec<SampleOutput>> {
        let mut outs: Vec<SampleOutput> = (0..self.samples.len())
            .map(|_| SampleOutput { text: String::new(), token_ids: vec![], logprobs: vec![], finish: Finish::length() })
            .collect();
        while let Some(d) = self.next().await {
            let d = d?;
            let o = &mut outs[d.index];
            o.text.push_str(&d.text);
            o.token_ids.extend(d.token_ids);
            o.logprobs.extend(d.logprobs);
            if let Some(f) = d.finish {
                o.finish = f;
            }
        }
        Ok(outs)
    }

    fn handle(&mut self, event: RequestEvent) -> Result<()> {
        match event {
            RequestEvent::Started { index, cached_tokens } => {
                if index == 0 {
                    self.usage.cached_tokens = cached_tokens;
                }
            }
            RequestEvent::Token { index, token, logprob } => {
                let Some(s) = self.samples.get_mut(index).filter(|s| !s.done) else { return Ok(()) };
                self.usage.completion_tokens += 1;
                s.held_ids.push(token);
                s.held_logprobs.extend(logprob);
                let text = s.detok.push(&self.tokenizer, token)?;
                let released = s.stop.push(&text);
                if let Some(stop) = released.stop {
                    let finish = Finish { reason: FinishReason::Stop, stop: Some(StopReason::Text(stop)) };
                    self.release(index, released.text, Some(finish));
                    // The engine may already be computing the next token: stop it now.
                    let _ = self.cmd.send(EngineCommand::Abort { id: self.id, index: Some(index) });
                } else if !released.text.is_empty() || self.samples[index].stop.held_len() == 0 {
                    self.release(index, released.text, None);
                }
            }
            RequestEvent::Finished { index, finish } => {
                let Some(s) = self.samples.get_mut(index).filter(|s| !s.done) else { return Ok(()) };
                let tail = s.detok.flush(&self.tokenizer)?;
                let released = s.stop.push(&tail);
                if let Some(stop) = released.stop {
                    let finish = Finish { reason: FinishReason::Stop, stop: Some(StopReason::Text(stop)) };
                    self.release(index, released.text, Some(finish));
                } else {
                    let mut text = released.text;
                    text.push_str(&self.samples[index].stop.finish());
                    self.release(index, text, Some(finish));
                }
            }
            RequestEvent::Failed(e) => return Err(e),
        }
        Ok(())
    }

    /// Queues a delta for sample `index` with the tokens held so far.
    fn release(&mut self, index: usize, text: String, finish: Option<Finish>) {
        let s = &mut self.samples[index];
        // Tokens wait while part of their text is held back, so text and tokens stay together.
        if s.stop.held_len() > 0 && finish.is_none() {
            if !text.is_empty() {
                self.ready.push_back(StreamDelta { index, text, ..Default::default() });
            }
            return;
        }
        s.done = finish.is_some();
        let delta = StreamDelta {
            index,
            text,
            token_ids: std::mem::take(&mut s.held_ids),
            logprobs: std::mem::take(&mut s.held_logprobs),
            finish,
        };
        if !delta.text.is_empty() || !delta.token_ids.is_empty() || delta.finish.is_some() {
            self.ready.push_back(delta);
        }
    }
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        if !self.all_done() {
            // The client is gone: free the request's KV blocks now, not when it would finish.
            let _ = self.cmd.send(EngineCommand::Abort { id: self.id, index: None });
        }
    }
}
