//! `POST /api/generate`: a prompt, wrapped in the model's chat template unless `raw`.

use std::{sync::Arc, time::Instant};

use axum::{extract::State, http::HeaderMap, response::Response};
use serde_json::Value;

use super::{
    admit, invalid, keep_alive, load_or_unload,
    respond::{respond, Job, Shape},
    types::{unsupported, GenerateRequest},
    OllamaError, OllamaJson,
};
use crate::{
    api::{AppState, Served},
    chat_template::ChatMessage,
    generation::{
        prompt::{blocking, chat_prompt, message},
        sampling_params, submit, PromptLimits, Role,
    },
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
/// wants one. Token ids from `context` come first (without a second BOS). The work runs on
/// a blocking thread, within the server's prompt limits.
async fn prompt_tokens(
    served: Arc<Served>,
    raw: bool,
    system: Option<String>,
    prompt: String,
    context: Vec<u32>,
    limits: PromptLimits,
) -> Result<Vec<u32>, OllamaError> {
    let system = system.filter(|s| !s.is_empty());
    let body = if served.template.is_some() && !raw {
        let mut msgs: Vec<ChatMessage> = system.map(|s| message(Role::System, s)).into_iter().collect();
        msgs.push(message(Role::User, prompt));
        chat_prompt(served, msgs, true, limits).await?
    } else {
        // No template to place a system prompt in: it goes before the prompt (not in raw
        // mode, where Ollama ignores it too).
        let text = match system.filter(|_| !raw) {
            Some(s) => format!("{s}\n\n{prompt}"),
            None => prompt,
        };
        if text.len() > limits.max_prompt_bytes {
            return Err(invalid(
                "prompt",
                format!("the prompt has {} bytes; at most {} are allowed", text.len(), limits.max_prompt_bytes),
            ));
        }
        let with_bos = context.is_empty();
        blocking(move |_| {
            let tok = served.engine.tokenizer();
            Ok(if with_bos { tok.encode_prompt(&text)? } else { tok.encode_raw(&text)? })
        })
        .await?
    };
    let mut ids = context;
    ids.extend(body);
    Ok(ids)
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    OllamaJson(mut req): OllamaJson<GenerateRequest>,
) -> Result<Response, OllamaError> {
    let arrival = Instant::now();
    let common = req.common();
    let checked = common.check()?;
    let keep = keep_alive(common.keep_alive.as_ref())?;
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
    let limits = state.config.prompt_limits;
    let ids = prompt_tokens(a.served.clone(), raw, req.system, prompt, context, limits).await?;
    let opts = &checked.options;
    let max_tokens = opts.max_tokens(ids.len(), info.max_model_len);
    let params = sampling_params(&opts.sampling, Some(max_tokens), checked.logprobs, ids.len(), info.max_model_len)?;
    let metrics = state.metrics.model(&a.served.name);
    let salt = state.cache_salt(&headers, None);
    let rx = submit(&a.served, a.adapter.as_deref(), salt, vec![(ids.clone(), params)], metrics, arrival)?;
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
