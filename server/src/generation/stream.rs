//! Submitting engine requests and following them: [`submit`] queues one engine request per
//! prompt and merges their output into one channel of [`Fwd`] messages, observing latencies
//! for `/metrics` on the way; [`collect_deltas`] drains it for a non-streamed answer, and
//! [`next_or_gone`] feeds a streamed one until the client leaves.
//!
//! Dropping the receiver (the client is gone) ends the forwarding tasks at once, even while
//! the requests still wait in the engine's queue, and their streams' drop aborts them there.

use std::{sync::Arc, time::Instant};

use flint_engine::{EngineError, FinishReason, OutputStream, SamplingParams, StreamDelta, SubmitOptions, Usage};
use tokio::sync::mpsc;

use super::{GenError, Result};
use crate::{api::metrics::ModelMetrics, registry::Served};

/// What the forwarding tasks tell the response writer.
#[derive(Debug)]
pub enum Fwd {
    /// New output of sample `delta.index` of prompt `prompt`.
    Delta { prompt: usize, delta: StreamDelta },
    /// One prompt's engine request ran to its end.
    Done { usage: Usage },
    Failed(EngineError),
}

/// The merged output of a request's prompts.
pub type Submitted = mpsc::Receiver<Fwd>;

/// Queues one engine request per `(prompt, params)` on the base model or on `adapter`, and
/// merges their output. Every prompt is checked before any is queued; if queueing one still
/// fails, those queued before it are aborted (their streams drop). `arrival` is when the
/// request came in (time to first token counts from there). `cache_salt` keeps the
/// requests' prefix-cache blocks apart from those of requests with another salt.
pub fn submit(
    served: &Served,
    adapter: Option<&str>,
    cache_salt: Option<String>,
    jobs: Vec<(Vec<u32>, SamplingParams)>,
    metrics: Arc<ModelMetrics>,
    arrival: Instant,
) -> Result<Submitted> {
    for (prompt, params) in &jobs {
        served.engine.check(prompt.len(), params)?;
    }
    let opts = SubmitOptions { adapter: adapter.map(str::to_owned), cache_salt };
    let mut streams = Vec::with_capacity(jobs.len());
    for (prompt, params) in jobs {
        let stream = served.engine.submit(prompt, params, opts.clone()).map_err(|e| match (e, adapter) {
            (EngineError::UnknownAdapter(_), Some(name)) => GenError::AdapterGone(name.to_owned()),
            (e, _) => e.into(),
        })?;
        streams.push(stream);
    }
    Ok(forward_all(streams, metrics, arrival))
}

/// Merges several engine requests' output into one channel (see the module docs).
pub fn forward_all(streams: Vec<OutputStream>, metrics: Arc<ModelMetrics>, arrival: Instant) -> Submitted {
    let (tx, rx) = mpsc::channel(64);
    for (prompt, mut s) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        let mut clock = RequestClock::new(metrics.clone(), arrival);
        tokio::spawn(async move {
            loop {
                // A closed channel (client gone) ends the task at once, even while the request
                // is still queued and produces nothing: dropping `s` aborts it in the engine.
                let item = tokio::select! {
                    item = s.next() => item,
                    _ = tx.closed() => return,
                };
                let Some(item) = item else { break };
                let msg = match item {
                    Ok(delta) => {
                        clock.delta(&delta);
                        Fwd::Delta { prompt, delta }
                    }
                    Err(e) => Fwd::Failed(e),
                };
                let failed = matches!(msg, Fwd::Failed(_));
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
            // Only a request that ran to its end counts (not one whose client left or failed).
            let usage = s.usage();
            clock.done(&usage);
            let _ = tx.send(Fwd::Done { usage }).await;
        });
    }
    rx
}

/// The next message for a streamed answer, or `None` when the output is over or the client
/// is gone (`out`'s receiver dropped) — whichever comes first, so a client that leaves while
/// its request is still queued frees it at once.
pub async fn next_or_gone<T>(rx: &mut Submitted, out: &mpsc::Sender<T>) -> Option<Fwd> {
    tokio::select! {
        msg = rx.recv() => msg,
        _ = out.closed() => None,
    }
}

pub fn add_usage(a: &mut Usage, b: Usage) {
    a.prompt_tokens += b.prompt_tokens;
    a.cached_tokens += b.cached_tokens;
    a.completion_tokens += b.completion_tokens;
}

/// Drains a non-streamed answer: every delta goes to `on_delta(prompt, delta)`; returns the
/// usage summed over the prompts, or the engine's error.
pub async fn collect_deltas(mut rx: Submitted, mut on_delta: impl FnMut(usize, StreamDelta)) -> Result<Usage> {
    let mut total = Usage::default();
    while let Some(msg) = rx.recv().await {
        match msg {
            Fwd::Delta { prompt, delta } => on_delta(prompt, delta),
            Fwd::Done { usage } => add_usage(&mut total, usage),
            Fwd::Failed(e) => return Err(e.into()),
        }
    }
    Ok(total)
}

/// The latencies of one engine request, observed as its deltas pass:
/// - time to first token: arrival → the first delta carrying text or tokens;
/// - inter-token latency, per token: a delta of `k` tokens arriving `g` after the previous delta
///   of the same sample observes `g / k`, `k` times (so the sum is the decode time and the
///   count the tokens after each sample's first delta);
/// - end to end: arrival → the end of the stream, with the prompt tokens and the last finish
///   reason counted as one successful request.
struct RequestClock {
    metrics: Arc<ModelMetrics>,
    arrival: Instant,
    first_seen: bool,
    /// Per sample: when its last delta with tokens arrived.
    last: Vec<Option<Instant>>,
    finish: Option<FinishReason>,
}

impl RequestClock {
    fn new(metrics: Arc<ModelMetrics>, arrival: Instant) -> Self {
        Self { metrics, arrival, first_seen: false, last: Vec::new(), finish: None }
    }

    fn delta(&mut self, d: &StreamDelta) {
        if let Some(f) = &d.finish {
            self.finish = Some(f.reason);
        }
        let k = d.token_ids.len();
        if k == 0 && d.text.is_empty() {
            return;
        }
        let now = Instant::now();
        if !std::mem::replace(&mut self.first_seen, true) {
            self.metrics.ttft.observe(now.duration_since(self.arrival).as_secs_f64());
        }
        if k == 0 {
            return;
        }
        if self.last.len() <= d.index {
            self.last.resize(d.index + 1, None);
        }
        if let Some(prev) = self.last[d.index].replace(now) {
            self.metrics.itl.observe_n(now.duration_since(prev).as_secs_f64() / k as f64, k as u64);
        }
    }

    fn done(&self, usage: &Usage) {
        // Every sample ends with a finish reason; `length` if none was seen (no output at all).
        let reason = self.finish.unwrap_or(FinishReason::Length);
        self.metrics.finished(usage.prompt_tokens, reason, self.arrival.elapsed());
    }
}
