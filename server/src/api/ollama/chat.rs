//! `POST /api/chat`: messages through the model's chat template.

use std::{sync::Arc, time::Instant};

use axum::{extract::State, http::HeaderMap, response::Response};
use serde_json::json;

use super::{
    admit, invalid, keep_alive, load_or_unload,
    respond::{respond, Job, Shape},
    types::{unsupported, ChatRequest},
    OllamaError, OllamaJson,
};
use crate::{
    api::AppState,
    generation::{
        prompt::{chat_prompt, message},
        sampling_params, submit, Role,
    },
};

pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    OllamaJson(mut req): OllamaJson<ChatRequest>,
) -> Result<Response, OllamaError> {
    let arrival = Instant::now();
    let common = req.common();
    let checked = common.check()?;
    let keep = keep_alive(common.keep_alive.as_ref())?;
    unsupported("tools", &req.tools)?;
    let messages = req.messages.unwrap_or_default();
    let mut msgs = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        unsupported(&format!("messages[{i}].images"), &m.images)?;
        unsupported(&format!("messages[{i}].tool_calls"), &m.tool_calls)?;
        let role = Role::parse(&m.role, || format!("messages[{i}].role"))?;
        msgs.push(message(role, m.content.unwrap_or_default()));
    }
    if msgs.is_empty() {
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
    if a.served.template.is_none() {
        return Err(invalid(
            "messages",
            format!("model '{}' has no chat template; use /api/generate with raw: true", req.model),
        ));
    }
    let tok = a.served.engine.tokenizer().clone();
    let ids = chat_prompt(a.served.clone(), msgs, true, state.config.prompt_limits).await?;
    let info = a.served.engine.info();
    let opts = &checked.options;
    let max_tokens = opts.max_tokens(ids.len(), info.max_model_len);
    let params = sampling_params(&opts.sampling, Some(max_tokens), checked.logprobs, ids.len(), info.max_model_len)?;
    let metrics = state.metrics.model(&a.served.name);
    let salt = state.cache_salt(&headers, None);
    let rx = submit(&a.served, a.adapter.as_deref(), salt, vec![(ids, params)], metrics, arrival)?;
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
