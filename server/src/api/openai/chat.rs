//! `POST /v1/chat/completions`.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
    Json,
};
use tokio::sync::mpsc;

use super::{chat_logprobs, sse_response, stop_reason, usage, write_chunks, TokenNames};
use crate::{
    api::{
        error::ApiError,
        types::{
            ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatDelta,
            ChatLogprobs, MessageContent, ResponseMessage,
        },
        AppState, JsonBody,
    },
    chat_template::ChatMessage,
    generation::{
        admission::Cost,
        check_cache_salt, collect_deltas, logprobs_count, new_id, now,
        params::requested_n,
        prompt::{chat_prompt, message},
        sampling_params, submit, Role,
    },
};

/// The request's messages as the template sees them: roles checked against the allow-list,
/// text parts joined.
fn messages(req: &ChatCompletionRequest) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = Role::parse(&m.role, || format!("messages[{i}].role"))?;
        let content = match &m.content {
            None => String::new(),
            Some(MessageContent::Text(s)) => s.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        ("text", None) => {
                            return Err(ApiError::invalid(format!("messages[{i}].content[{j}].text"), "a text part needs `text`"))
                        }
                        (other, _) => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content[{j}].type"),
                                format!("content part type `{other}` is not supported by this model (text only)"),
                            ))
                        }
                    }
                }
                text
            }
        };
        out.push(message(role, content));
    }
    Ok(out)
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    // Everything that can be checked without the model first, so a bad request costs nothing.
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (true, None) => Some(0),
        (true, Some(k)) => Some(logprobs_count("top_logprobs", k)?),
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`"))
        }
        (false, _) => None,
    };
    let sampling = req.sampling();
    let n = requested_n(&sampling)?;
    check_cache_salt(req.cache_salt.as_deref())?;
    let salt = state.cache_salt(&headers, req.cache_salt.as_deref());
    let msgs = messages(&req)?;
    let (served, adapter) = state.resolve(&req.model)?;
    let permit = state.admit(&served, Cost::one(n))?;
    let tok = served.engine.tokenizer().clone();
    let as_ids = req.return_tokens_as_token_ids;
    let ids = chat_prompt(served.clone(), msgs, true, state.config.prompt_limits).await?;
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    let info = served.engine.info();
    let params = sampling_params(&sampling, max_tokens, logprobs, ids.len(), info.max_model_len)?;
    let rx = submit(&served, adapter.as_deref(), salt, vec![(ids, params)], state.metrics.model(&served.name), arrival)?;
    let id = new_id("chatcmpl");
    // An adapter answers under its own name, as in vLLM.
    let (created, model) = (now(), adapter.unwrap_or_else(|| served.name.clone()));

    if !req.stream {
        let names = TokenNames { tok: &tok, as_ids };
        let mut choices: Vec<ChatChoice> = (0..n)
            .map(|index| ChatChoice {
                index,
                message: ResponseMessage { role: "assistant", content: String::new() },
                logprobs: logprobs.map(|_| ChatLogprobs::default()),
                finish_reason: None,
                stop_reason: None,
            })
            .collect();
        let total = collect_deltas(rx, |_, delta| {
            let c = &mut choices[delta.index];
            c.message.content.push_str(&delta.text);
            if let Some(lp) = c.logprobs.as_mut() {
                lp.content.extend(chat_logprobs(&names, &delta));
            }
            if let Some(f) = &delta.finish {
                c.finish_reason = Some(f.reason.as_str());
                c.stop_reason = stop_reason(&delta);
            }
        })
        .await?;
        drop(permit);
        let body = ChatCompletion {
            id,
            object: "chat.completion",
            created,
            model,
            choices,
            usage: usage(total),
            system_fingerprint: None,
        };
        return Ok(Json(body).into_response());
    }

    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let (tx, out) = mpsc::channel::<String>(64);
    tokio::spawn(async move {
        let _permit = permit;
        let names = TokenNames { tok: &tok, as_ids };
        let chunk = |choices: Vec<ChatChunkChoice>, usage| {
            let c = ChatCompletionChunk {
                id: id.clone(),
                object: "chat.completion.chunk",
                created,
                model: model.clone(),
                choices,
                usage,
                system_fingerprint: None,
            };
            serde_json::to_string(&c).unwrap_or_default()
        };
        // Every choice opens with the assistant role, as OpenAI streams do.
        for index in 0..n {
            let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()) };
            let first = ChatChunkChoice { index, delta, logprobs: None, finish_reason: None, stop_reason: None };
            if tx.send(chunk(vec![first], None)).await.is_err() {
                return;
            }
        }
        let to_chunk = |_, delta: flint_engine::StreamDelta| {
            let choice = ChatChunkChoice {
                index: delta.index,
                logprobs: logprobs.map(|_| ChatLogprobs { content: chat_logprobs(&names, &delta) }),
                finish_reason: delta.finish.as_ref().map(|f| f.reason.as_str()),
                stop_reason: stop_reason(&delta),
                delta: ChatDelta { role: None, content: (!delta.text.is_empty()).then_some(delta.text) },
            };
            chunk(vec![choice], None)
        };
        let usage_chunk = include_usage.then_some(|u| chunk(Vec::new(), Some(u)));
        write_chunks(rx, &tx, to_chunk, usage_chunk).await;
    });
    Ok(sse_response(out))
}
