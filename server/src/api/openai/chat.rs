//! `POST /v1/chat/completions`.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Json,
};
use flint_engine::Tokenizer;
use tokio::sync::mpsc;

use super::{
    admit, chat_logprobs, collect_deltas, forward_all, generate, new_id, now, sampling_params, sse_response, stop_reason,
    usage, write_chunks, TokenNames, MAX_TOP_LOGPROBS,
};
use crate::{
    api::{
        error::ApiError,
        types::{
            ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatDelta,
            ChatLogprobs, MessageContent, ResponseMessage,
        },
        AppState, JsonBody,
    },
    chat_template::{ChatMessage, ChatTemplate},
};

/// The request's messages as the template sees them (text parts joined).
fn messages(req: &ChatCompletionRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must contain at least one message"));
    }
    let mut out = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
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
        out.push(ChatMessage { role: m.role.clone(), content });
    }
    Ok(out)
}

/// Renders the conversation, ready for the assistant's answer, and tokenizes it.
pub fn prompt_ids(tok: &Tokenizer, template: &ChatTemplate, msgs: &[ChatMessage]) -> Result<Vec<u32>, ApiError> {
    chat_ids(tok, template, msgs, true)
}

/// Renders the conversation (with the generation prompt or not) and tokenizes it. Text typed
/// by users that spells a special token stays text: the template is rendered with
/// placeholders, and user text is encoded literally.
pub fn chat_ids(
    tok: &Tokenizer,
    template: &ChatTemplate,
    msgs: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<Vec<u32>, ApiError> {
    let render = |m: &[ChatMessage]| {
        template.render(m, add_generation_prompt).map_err(|e| ApiError::invalid("messages", e.to_string()))
    };
    if !msgs.iter().any(|m| tok.contains_special_token(&m.content)) {
        return Ok(tok.encode_raw(&render(msgs)?)?);
    }
    let marker = |i: usize| format!("\u{E000}{i}\u{E001}");
    let marked: Vec<ChatMessage> =
        msgs.iter().enumerate().map(|(i, m)| ChatMessage { role: m.role.clone(), content: marker(i) }).collect();
    let rendered = render(&marked)?;
    let mut segments: Vec<(&str, bool)> = Vec::new();
    let mut rest = rendered.as_str();
    loop {
        let next = (0..msgs.len()).filter_map(|i| rest.find(&marker(i)).map(|at| (at, i))).min();
        let Some((at, i)) = next else { break };
        segments.push((&rest[..at], true));
        segments.push((&msgs[i].content, false));
        rest = &rest[at + marker(i).len()..];
    }
    segments.push((rest, true));
    Ok(tok.encode_segments(&segments)?)
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let (served, adapter, permit) = admit(&state, &req.model)?;
    let template = served
        .template
        .as_ref()
        .ok_or_else(|| ApiError::invalid("messages", "this model has no chat template; use /v1/completions"))?;
    let msgs = messages(&req)?;
    let tok = served.engine.tokenizer().clone();
    let as_ids = req.return_tokens_as_token_ids;
    let ids = prompt_ids(&tok, template, &msgs)?;
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (true, None) => Some(0),
        (true, Some(k)) if (0..=MAX_TOP_LOGPROBS).contains(&k) => Some(k as usize),
        (true, Some(k)) => {
            return Err(ApiError::invalid("top_logprobs", format!("`top_logprobs` must be in 0..=20, got {k}")))
        }
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`"))
        }
        (false, _) => None,
    };
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    let info = served.engine.info();
    let params = sampling_params(&req.sampling(), max_tokens, logprobs, ids.len(), info.max_model_len)?;
    let n = params.n;
    let stream = generate(&served, adapter.as_deref(), ids, params)?;
    let id = new_id("chatcmpl");
    // An adapter answers under its own name, as in vLLM.
    let (created, model) = (now(), adapter.unwrap_or_else(|| served.name.clone()));
    let rx = forward_all(vec![stream], state.metrics.model(&served.name), arrival);

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
