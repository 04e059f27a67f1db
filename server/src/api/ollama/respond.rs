//! Engine output → Ollama responses: one JSON object (`stream: false`) or NDJSON lines, the
//! last with `done: true`, `done_reason` and the counts and durations (nanoseconds).

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    http::header,
    response::{IntoResponse, Response},
    Json,
};
use flint_engine::{FinishReason, StreamDelta, Tokenizer, Usage};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, StreamExt};

use super::{now_rfc3339, OllamaError};
use crate::generation::{next_or_gone, Fwd, Permit, Submitted};

/// Which route answers: `/api/generate` puts text in `response` and returns the token ids
/// in `context`; `/api/chat` puts it in `message`.
pub enum Shape {
    Generate { prompt_ids: Vec<u32> },
    Chat,
}

/// One answer to write.
pub struct Job {
    /// The model name as the client sent it (echoed back).
    pub model: String,
    pub shape: Shape,
    pub stream: bool,
    /// When the HTTP request came in.
    pub arrival: Instant,
    /// Time spent waiting for the model to load.
    pub load: Duration,
    /// Set when the request asked for logprobs.
    pub tok: Option<Arc<Tokenizer>>,
}

#[derive(Serialize)]
pub struct OutMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Serialize)]
struct TopLogprob {
    token: String,
    logprob: f32,
    bytes: Vec<u8>,
}

#[derive(Serialize)]
struct Logprob {
    token: String,
    logprob: f32,
    bytes: Vec<u8>,
    top_logprobs: Vec<TopLogprob>,
}

/// One line of a stream, or the whole answer. Optional fields are left out when unset, as
/// Ollama leaves them out (`omitempty`).
#[derive(Serialize)]
struct Line<'a> {
    model: &'a str,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<OutMessage>,
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    done_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_eval_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_eval_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Vec<Logprob>>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Job {
    fn line(&self, text: String, done: bool) -> Line<'_> {
        let (response, message) = match self.shape {
            Shape::Generate { .. } => (Some(text), None),
            Shape::Chat => (None, Some(OutMessage { role: "assistant", content: text })),
        };
        Line {
            model: &self.model,
            created_at: now_rfc3339(),
            response,
            message,
            done,
            done_reason: None,
            context: None,
            total_duration: None,
            load_duration: None,
            prompt_eval_count: None,
            prompt_eval_duration: None,
            eval_count: None,
            eval_duration: None,
            logprobs: None,
        }
    }

    fn logprobs(&self, d: &StreamDelta) -> Option<Vec<Logprob>> {
        let tok = self.tok.as_ref()?;
        let entry = |id: u32| (tok.token_text(id), tok.token_bytes(id));
        let list = d
            .logprobs
            .iter()
            .map(|lp| {
                let (token, bytes) = entry(lp.token);
                let top = lp
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let (token, bytes) = entry(id);
                        TopLogprob { token, logprob, bytes }
                    })
                    .collect();
                Logprob { token, logprob: lp.logprob, bytes, top_logprobs: top }
            })
            .collect();
        Some(list)
    }

    /// The closing fields, from what [`Tally`] saw.
    fn finish<'a>(&'a self, line: &mut Line<'a>, t: &Tally, usage: &Usage) {
        let end = Instant::now();
        // Prompt processing ends with the first token; decoding runs from there to the end.
        let start = self.arrival + self.load;
        let first = t.first_token.unwrap_or(end).max(start);
        line.done_reason = Some(match t.reason {
            Some(FinishReason::Stop) => "stop",
            Some(FinishReason::Length) | None => "length",
        });
        if let Shape::Generate { prompt_ids } = &self.shape {
            let mut ctx = prompt_ids.clone();
            ctx.extend_from_slice(&t.output_ids);
            line.context = Some(ctx);
        }
        line.total_duration = Some(nanos(end.duration_since(self.arrival)));
        line.load_duration = Some(nanos(self.load));
        line.prompt_eval_count = Some(usage.prompt_tokens);
        line.prompt_eval_duration = Some(nanos(first.duration_since(start)));
        line.eval_count = Some(usage.completion_tokens);
        line.eval_duration = Some(nanos(end.duration_since(first)));
    }
}

/// What the deltas told so far.
#[derive(Default)]
struct Tally {
    first_token: Option<Instant>,
    output_ids: Vec<u32>,
    reason: Option<FinishReason>,
}

impl Tally {
    fn see(&mut self, d: &StreamDelta) {
        if self.first_token.is_none() && !d.token_ids.is_empty() {
            self.first_token = Some(Instant::now());
        }
        self.output_ids.extend_from_slice(&d.token_ids);
        if let Some(f) = &d.finish {
            self.reason = Some(f.reason);
        }
    }
}

fn to_line(line: &Line) -> String {
    let mut s = serde_json::to_string(line).unwrap_or_default();
    s.push('\n');
    s
}

/// Writes the answer from `rx`, keeping `permit` until it is fully written (or the client is
/// gone: dropping `rx` then aborts the engine request).
pub async fn respond(job: Job, permit: Permit, mut rx: Submitted) -> Result<Response, OllamaError> {
    if !job.stream {
        let (mut text, mut tally, mut lps) = (String::new(), Tally::default(), Vec::new());
        let mut usage = Usage::default();
        while let Some(msg) = rx.recv().await {
            match msg {
                Fwd::Delta { delta, .. } => {
                    tally.see(&delta);
                    text.push_str(&delta.text);
                    lps.extend(job.logprobs(&delta).unwrap_or_default());
                }
                Fwd::Done { usage: u } => usage = u,
                Fwd::Failed(e) => return Err(e.into()),
            }
        }
        drop(permit);
        let mut line = job.line(text, true);
        job.finish(&mut line, &tally, &usage);
        line.logprobs = job.tok.is_some().then_some(lps);
        return Ok(Json(line).into_response());
    }

    let (tx, out) = mpsc::channel::<String>(64);
    tokio::spawn(async move {
        let _permit = permit;
        let mut tally = Tally::default();
        while let Some(msg) = next_or_gone(&mut rx, &tx).await {
            let data = match msg {
                Fwd::Delta { delta, .. } => {
                    tally.see(&delta);
                    // Tokens whose text is held back (a possible stop string) wait for it,
                    // unless their logprobs were asked for.
                    if delta.text.is_empty() && (job.tok.is_none() || delta.logprobs.is_empty()) {
                        continue;
                    }
                    let logprobs = job.logprobs(&delta);
                    let mut line = job.line(delta.text, false);
                    line.logprobs = logprobs;
                    to_line(&line)
                }
                Fwd::Done { usage } => {
                    let mut line = job.line(String::new(), true);
                    job.finish(&mut line, &tally, &usage);
                    let _ = tx.send(to_line(&line)).await;
                    return;
                }
                Fwd::Failed(e) => {
                    let mut err = serde_json::to_string(&OllamaError::from(e).body()).unwrap_or_default();
                    err.push('\n');
                    let _ = tx.send(err).await;
                    return;
                }
            };
            if tx.send(data).await.is_err() {
                return;
            }
        }
    });
    Ok(ndjson(out))
}

/// An NDJSON response from a channel of lines, each already ending in `\n`.
fn ndjson(rx: mpsc::Receiver<String>) -> Response {
    let body = Body::from_stream(ReceiverStream::new(rx).map(|line| Ok::<_, Infallible>(Bytes::from(line))));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}
