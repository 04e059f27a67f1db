//! `POST /api/generate`: a prompt, wrapped in the model's chat template unless `raw`.

use std::{sync::Arc, time::Instant};

use axum::{extract::State, response::Response};
use flint_engine::Tokenizer;
use serde_json::Value;

use super::{
    admit, invalid, keep_alive, load_or_unload,
    respond::{respond, Job, Shape},
    types::{unsupported, GenerateRequest},
    OllamaError, OllamaJson,
};
use crate::{
    api::{
        openai::{chat::prompt_ids, forward_all, generate, sampling_params},
        AppState,
    },
    chat_template::{ChatMessage, ChatTemplate},
};

/// 400 for a string field flint does not support, when given non-empty.
fn no_text(field: &str, v: &Option<String>) -> Result<(), OllamaError> {
    match v {
        Some(s) if !s.is_empty() => Err(invalid(field, format!("`{field}` is not supported by flint"))),
        _ => Ok(()),
    }
}

/// `context` as token ids of this model.
fn context_ids(ctx: &[i64], vocab_size: usize) -> Result<Vec<u32>, OllamaError> {
    ctx.iter()
        .enumerate()
        .map(|(i, &t)| {
            u32::try_from(t).ok().filter(|&id| (id as usize) < vocab_size).ok_or_else(|| {
                invalid(format!("context[{i}]"), format!("context[{i}]: {t} is not a token id of this model"))
            })
        })
        .collect()
}

/// The prompt's token ids. As Ollama applies the model's template to `system` + `prompt`,
/// flint renders them as a chat through the model's chat template; `raw` (or a model with
/// no template) tokenizes the prompt as `/v1/completions` does, BOS included when the model
/// wants one. Token ids from `context` come first (without a second BOS).
fn prompt_tokens(
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    raw: bool,
    system: Option<&str>,
    prompt: &str,
    context: Vec<u32>,
) -> Result<Vec<u32>, OllamaError> {
    let system = system.filter(|s| !s.is_empty());
    let body = match (template, raw) {
        (Some(t), false) => {
            let mut msgs: Vec<ChatMessage> = system.map(|s| ChatMessage::new("system", s)).into_iter().collect();
            msgs.push(ChatMessage::new("user", prompt));
            prompt_ids(tok, t, &msgs)?
        }
        _ => {
            // No template to place a system prompt in: it goes before the prompt (not in raw
            // mode, where Ollama ignores it too).
            let text = match system.filter(|_| !raw) {
                Some(s) => format!("{s}\n\n{prompt}"),
                None => prompt.to_owned(),
            };
            if context.is_empty() {
                tok.encode_prompt(&text)?
            } else {
                tok.encode_raw(&text)?
            }
        }
    };
    let mut ids = context;
    ids.extend(body);
    Ok(ids)
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    OllamaJson(req): OllamaJson<GenerateRequest>,
) -> Result<Response, OllamaError> {
    let arrival = Instant::now();
    let checked = req.common.check()?;
    let keep = keep_alive(req.common.keep_alive.as_ref())?;
    unsupported("images", &req.images)?;
    no_text("suffix", &req.suffix)?;
    no_text("template", &req.template)?;
    let prompt = req.prompt.unwrap_or_default();
    if prompt.is_empty() {
        return load_or_unload(&state, &req.model, keep, |b| {
            b.insert("response".into(), Value::from(""));
        })
        .await;
    }

    let a = admit(&state, &req.model).await?;
    if let Some(k) = keep {
        a.served.set_keep_alive(k);
    }
    let tok = a.served.engine.tokenizer().clone();
    let info = a.served.engine.info();
    let context = context_ids(req.context.as_deref().unwrap_or_default(), info.model.vocab_size)?;
    let raw = req.raw.unwrap_or(false);
    let ids = prompt_tokens(&tok, a.served.template.as_ref(), raw, req.system.as_deref(), &prompt, context)?;
    let opts = &checked.options;
    let max_tokens = opts.max_tokens(ids.len(), info.max_model_len);
    let params = sampling_params(&opts.sampling, Some(max_tokens), checked.logprobs, ids.len(), info.max_model_len)?;
    let stream = generate(&a.served, a.adapter.as_deref(), ids.clone(), params)?;
    let rx = forward_all(vec![stream], state.metrics.model(&a.served.name), arrival);
    let job = Job {
        model: req.model,
        shape: Shape::Generate { prompt_ids: ids },
        stream: req.stream.unwrap_or(true),
        arrival,
        load: a.load,
        tok: checked.logprobs.map(|_| tok),
    };
    respond(job, a.permit, rx).await
}
