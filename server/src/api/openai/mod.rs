//! OpenAI routes: request JSON → the generation layer's types, and engine output → OpenAI
//! responses (one JSON body, or SSE chunks ending in `data: [DONE]`). Admission, prompt
//! building and submitting live in [`crate::generation`], shared with the other protocols.

pub mod chat;
pub mod completions;

use std::{convert::Infallible, time::Duration};

use axum::response::{
    sse::{Event, KeepAlive, Sse},
    IntoResponse, Response,
};
use flint_engine::{EngineError, StreamDelta, Tokenizer, Usage as EngineUsage};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, StreamExt};

use super::{
    error::ApiError,
    types::{ChatTokenLogprob, CompletionLogprobs, PromptTokensDetails, TopLogprob, Usage},
};
use crate::generation::{next_or_gone, stream::add_usage, Fwd, Submitted};

pub use crate::generation::{new_id, now};

/// OpenAI's usage block from the engine's counts.
pub fn usage(u: EngineUsage) -> Usage {
    Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.prompt_tokens + u.completion_tokens,
        prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: u.cached_tokens }),
    }
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

/// Writes a streamed response: one chunk per delta (`chunk_for(prompt, delta)`), then the usage
/// chunk when the client asked for one, then `[DONE]`. An engine error becomes an error chunk
/// before `[DONE]`. Returns at once when the client is gone (dropping `rx` aborts the requests).
pub async fn write_chunks<U: FnOnce(Usage) -> String>(
    mut rx: Submitted,
    tx: &mpsc::Sender<String>,
    mut chunk_for: impl FnMut(usize, StreamDelta) -> String,
    usage_chunk: Option<U>,
) {
    let mut total = EngineUsage::default();
    while let Some(msg) = next_or_gone(&mut rx, tx).await {
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
