//! OpenAI routes: request fields → engine types, and engine output → OpenAI responses
//! (one JSON body, or SSE chunks ending in `data: [DONE]`).

pub mod chat;
pub mod completions;

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::response::{
    sse::{Event, KeepAlive, Sse},
    IntoResponse, Response,
};
use flint_engine::{EngineError, FinishReason, OutputStream, SamplingParams, StreamDelta, Tokenizer, Usage as EngineUsage};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, StreamExt};

use super::{
    error::ApiError,
    metrics::ModelMetrics,
    types::{CompletionLogprobs, PromptTokensDetails, SamplingFields, TopLogprob, Usage},
    AppState, Permit, Served,
};
use crate::api::types::ChatTokenLogprob;

/// Most alternatives per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: i64 = 20;

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `prefix-` + 24 random hex digits, like OpenAI's ids.
pub fn new_id(prefix: &str) -> String {
    let n: u128 = rand::rng().random();
    format!("{prefix}-{:024x}", n & ((1u128 << 96) - 1))
}

/// Resolves `model` (the base model: `None`; a loaded LoRA adapter: `Some(its name)`; 404
/// otherwise) and takes an admission permit.
pub fn admit(state: &Arc<AppState>, model: &str) -> Result<(Arc<Served>, Option<String>, Permit), ApiError> {
    let (served, adapter) = state.resolve(model)?;
    let permit = state.admit(&served)?;
    Ok((served, adapter, permit))
}

/// Queues one engine request on the base model or on `adapter`. An adapter unloaded since
/// [`admit`] is a 404 for `model`, like any unknown name.
pub fn generate(
    served: &Served,
    adapter: Option<&str>,
    prompt: Vec<u32>,
    params: SamplingParams,
) -> Result<OutputStream, ApiError> {
    served.engine.generate_with(prompt, params, adapter).map_err(|e| match (e, adapter) {
        (EngineError::UnknownAdapter(_), Some(name)) => served.not_found(name),
        (e, _) => e.into(),
    })
}

fn non_negative(field: &'static str, v: i64) -> Result<usize, ApiError> {
    usize::try_from(v).map_err(|_| ApiError::invalid(field, format!("`{field}` must be >= 0, got {v}")))
}

/// The request's sampling fields as checked engine parameters. `max_tokens` defaults to what
/// is left of the context after the prompt, as in vLLM.
pub fn sampling_params(
    f: &SamplingFields,
    max_tokens: Option<i64>,
    logprobs: Option<usize>,
    prompt_len: usize,
    max_model_len: usize,
) -> Result<SamplingParams, ApiError> {
    let max_tokens = match max_tokens {
        Some(m) if m < 1 => return Err(ApiError::invalid("max_tokens", format!("`max_tokens` must be >= 1, got {m}"))),
        Some(m) => m as usize,
        None => max_model_len.saturating_sub(prompt_len).max(1),
    };
    let mut p = SamplingParams::new(max_tokens)?.with_temperature(f.temperature.unwrap_or(1.0))?;
    if let Some(v) = f.top_p {
        p = p.with_top_p(v)?;
    }
    if let Some(n) = f.n {
        p = p.with_n(non_negative("n", n)?)?;
    }
    if let Some(k) = f.top_k {
        // vLLM: -1 (or 0) means no top-k.
        p = p.with_top_k(if k <= 0 { None } else { Some(k as usize) })?;
    }
    if let Some(v) = f.min_p {
        p = p.with_min_p(v)?;
    }
    if let Some(v) = f.repetition_penalty {
        p = p.with_repetition_penalty(v)?;
    }
    if let Some(v) = f.presence_penalty {
        p = p.with_presence_penalty(v)?;
    }
    if let Some(v) = f.frequency_penalty {
        p = p.with_frequency_penalty(v)?;
    }
    if let Some(bias) = &f.logit_bias {
        let mut list = Vec::with_capacity(bias.len());
        for (k, &v) in bias {
            let id: u32 = k
                .parse()
                .map_err(|_| ApiError::invalid("logit_bias", format!("`logit_bias` keys are token ids, got `{k}`")))?;
            list.push((id, v));
        }
        list.sort_by_key(|&(id, _)| id);
        p = p.with_logit_bias(list)?;
    }
    if let Some(m) = f.min_tokens {
        p = p.with_min_tokens(non_negative("min_tokens", m)?)?;
    }
    if let Some(ids) = &f.stop_token_ids {
        let ids = ids
            .iter()
            .map(|&i| u32::try_from(i).map_err(|_| ApiError::invalid("stop_token_ids", format!("bad token id {i}"))))
            .collect::<Result<_, _>>()?;
        p = p.with_stop_token_ids(ids);
    }
    if let Some(stop) = &f.stop {
        p = p.with_stop(stop.clone().into_vec())?;
    }
    if let Some(seed) = f.seed {
        p = p.with_seed(Some(seed as u64));
    }
    p = p.with_ignore_eos(f.ignore_eos.unwrap_or(false)).with_logprobs(logprobs)?;
    Ok(p)
}

/// OpenAI's usage block from the engine's counts.
pub fn usage(u: EngineUsage) -> Usage {
    Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.prompt_tokens + u.completion_tokens,
        prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: u.cached_tokens }),
    }
}

pub fn add_usage(a: &mut EngineUsage, b: EngineUsage) {
    a.prompt_tokens += b.prompt_tokens;
    a.cached_tokens += b.cached_tokens;
    a.completion_tokens += b.completion_tokens;
}

/// vLLM's `stop_reason`: the matched stop string or token id.
pub fn stop_reason(d: &StreamDelta) -> Option<serde_json::Value> {
    use flint_engine::StopReason;
    match d.finish.as_ref()?.stop.as_ref()? {
        StopReason::Text(s) => Some(serde_json::Value::String(s.clone())),
        StopReason::TokenId(t) => Some(serde_json::Value::from(*t)),
    }
}

/// How tokens are named in logprobs: their text, or `token_id:N` (vLLM's
/// `return_tokens_as_token_ids`, for clients that compare token ids exactly).
pub struct TokenNames<'a> {
    pub tok: &'a Tokenizer,
    pub as_ids: bool,
}

impl TokenNames<'_> {
    pub fn name(&self, id: u32) -> String {
        if self.as_ids {
            format!("token_id:{id}")
        } else {
            self.tok.token_text(id)
        }
    }
}

fn top_entries(names: &TokenNames, top: &[(u32, f32)]) -> Vec<TopLogprob> {
    top.iter()
        .map(|&(id, lp)| {
            TopLogprob { bytes: names.tok.token_bytes(id), token: names.name(id), logprob: lp }
        })
        .collect()
}

/// Chat-format logprobs of a delta's tokens.
pub fn chat_logprobs(names: &TokenNames, d: &StreamDelta) -> Vec<ChatTokenLogprob> {
    d.logprobs
        .iter()
        .map(|lp| {
            ChatTokenLogprob {
                bytes: names.tok.token_bytes(lp.token),
                token: names.name(lp.token),
                logprob: lp.logprob,
                top_logprobs: top_entries(names, &lp.top),
            }
        })
        .collect()
}

/// Completions-format logprobs of a delta's tokens. `offset` is the output text's length in
/// characters before this delta; it is advanced by the delta's text, so offsets stay in step
/// with the text even when a character spans tokens.
pub fn completion_logprobs(names: &TokenNames, d: &StreamDelta, offset: &mut usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let delta_chars = d.text.chars().count();
    let mut within = 0;
    for lp in &d.logprobs {
        let t = names.tok.token_text(lp.token);
        out.text_offset.push(*offset + within.min(delta_chars));
        within += t.chars().filter(|&c| c != '\u{FFFD}').count();
        out.tokens.push(if names.as_ids { names.name(lp.token) } else { t });
        out.token_logprobs.push(lp.logprob);
        out.top_logprobs.push(
            lp.top.iter().map(|&(id, v)| (names.name(id), serde_json::Value::from(v as f64))).collect(),
        );
    }
    *offset += delta_chars;
    out
}

/// What a forwarding task tells the response writer.
pub enum Fwd {
    Delta { prompt: usize, delta: StreamDelta },
    Done { usage: EngineUsage },
    Failed(EngineError),
}

/// Runs several engine requests (one per prompt) and merges their output into one channel.
/// When the receiver is dropped (client gone), the forwarders drop their streams, which aborts
/// the requests and frees their KV blocks.
///
/// Every request passes here, so this is where `/metrics` observes them (see [`RequestClock`]),
/// with `arrival` the time the HTTP request came in.
pub fn forward_all(streams: Vec<OutputStream>, metrics: Arc<ModelMetrics>, arrival: Instant) -> mpsc::Receiver<Fwd> {
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

    fn done(&self, usage: &EngineUsage) {
        // Every sample ends with a finish reason; `length` if none was seen (no output at all).
        let reason = self.finish.unwrap_or(FinishReason::Length);
        self.metrics.finished(usage.prompt_tokens, reason, self.arrival.elapsed());
    }
}

/// Drains a non-streamed response: every delta goes to `on_delta(prompt, delta)`; returns the
/// usage summed over the prompts, or the engine's error.
pub async fn collect_deltas(
    mut rx: mpsc::Receiver<Fwd>,
    mut on_delta: impl FnMut(usize, StreamDelta),
) -> Result<EngineUsage, ApiError> {
    let mut total = EngineUsage::default();
    while let Some(msg) = rx.recv().await {
        match msg {
            Fwd::Delta { prompt, delta } => on_delta(prompt, delta),
            Fwd::Done { usage } => add_usage(&mut total, usage),
            Fwd::Failed(e) => return Err(e.into()),
        }
    }
    Ok(total)
}

/// Writes a streamed response: one chunk per delta (`chunk_for(prompt, delta)`), then the usage
/// chunk when the client asked for one, then `[DONE]`. An engine error becomes an error chunk
/// before `[DONE]`. Returns at once when the client is gone (dropping `rx` aborts the requests).
pub async fn write_chunks<U: FnOnce(Usage) -> String>(
    mut rx: mpsc::Receiver<Fwd>,
    tx: &mpsc::Sender<String>,
    mut chunk_for: impl FnMut(usize, StreamDelta) -> String,
    usage_chunk: Option<U>,
) {
    let mut total = EngineUsage::default();
    while let Some(msg) = rx.recv().await {
        let data = match msg {
            Fwd::Delta { prompt, delta } => chunk_for(prompt, delta),
            Fwd::Done { usage } => {
                add_usage(&mut total, usage);
                continue;
            }
            Fwd::Failed(e) => {
                let _ = tx.send(error_chunk(e)).await;
                break;
            }
        };
        if tx.send(data).await.is_err() {
            return;
        }
    }
    if let Some(chunk) = usage_chunk {
        let _ = tx.send(chunk(usage(total))).await;
    }
    let _ = tx.send("[DONE]".to_string()).await;
}

/// An SSE response from a channel of JSON payloads; the writer task owns `permit`.
pub fn sse_response(rx: mpsc::Receiver<String>) -> Response {
    let stream = ReceiverStream::new(rx).map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response()
}

/// The error chunk of a stream that fails midway.
pub fn error_chunk(e: EngineError) -> String {
    serde_json::to_string(&ApiError::from(e).body()).unwrap_or_default()
}
