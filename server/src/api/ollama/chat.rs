//! `POST /api/chat`: messages through the model's chat template.

use std::{sync::Arc, time::Instant};

use axum::{extract::State, response::Response};
use serde_json::json;

use super::{
    admit, invalid, keep_alive, load_or_unload,
    respond::{respond, Job, Shape},
    types::{unsupported, ChatRequest},
    OllamaError, OllamaJson,
};
use crate::{
    api::{
        openai::{chat::prompt_ids, forward_all, generate, sampling_params},
        AppState,
    },
    chat_template::ChatMessage,
};

pub async fn handler(
    State(state): State<Arc<AppState>>,
    OllamaJson(req): OllamaJson<ChatRequest>,
) -> Result<Response, OllamaError> {
    let arrival = Instant::now();
    let checked = req.common.check()?;
    let keep = keep_alive(req.common.keep_alive.as_ref())?;
    unsupported("tools", &req.tools)?;
    let messages = req.messages.unwrap_or_default();
    for (i, m) in messages.iter().enumerate() {
        unsupported(&format!("messages[{i}].images"), &m.images)?;
        unsupported(&format!("messages[{i}].tool_calls"), &m.tool_calls)?;
    }
    if messages.is_empty() {
        // As in Ollama: no messages loads the model (or unloads it with keep_alive 0).
        return load_or_unload(&state, &req.model, keep, |b| {
            b.insert("message".into(), json!({"role": "assistant", "content": ""}));
        })
        .await;
    }

    let a = admit(&state, &req.model).await?;
    if let Some(k) = keep {
        a.served.set_keep_alive(k);
    }
    let template = a.served.template.as_ref().ok_or_else(|| {
        invalid("messages", format!("model '{}' has no chat template; use /api/generate with raw: true", req.model))
    })?;
    let msgs: Vec<ChatMessage> =
        messages.into_iter().map(|m| ChatMessage { role: m.role, content: m.content.unwrap_or_default() }).collect();
    let tok = a.served.engine.tokenizer().clone();
    let ids = prompt_ids(&tok, template, &msgs)?;
    let info = a.served.engine.info();
    let opts = &checked.options;
    let max_tokens = opts.max_tokens(ids.len(), info.max_model_len);
    let params = sampling_params(&opts.sampling, Some(max_tokens), checked.logprobs, ids.len(), info.max_model_len)?;
    let stream = generate(&a.served, a.adapter.as_deref(), ids, params)?;
    let rx = forward_all(vec![stream], state.metrics.model(&a.served.name), arrival);
    let job = Job {
        model: req.model,
        shape: Shape::Chat,
        stream: req.stream.unwrap_or(true),
        arrival,
        load: a.load,
        tok: checked.logprobs.map(|_| tok),
    };
    respond(job, a.permit, rx).await
}
