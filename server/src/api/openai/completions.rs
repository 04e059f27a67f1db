//! `POST /v1/completions`: one engine request per prompt; choice `i * n + j` is sample `j` of
//! prompt `i`, as in OpenAI's API.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
    Json,
};
use flint_engine::Tokenizer;
use tokio::sync::mpsc;

use super::{completion_logprobs, sse_response, stop_reason, usage, write_chunks, TokenNames};
use crate::{
    api::{
        error::ApiError,
        types::{Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, PromptField},
        AppState, JsonBody,
    },
    generation::{
        admission::Cost,
        check_cache_salt, collect_deltas, logprobs_count, new_id, now,
        params::requested_n,
        prompt::{check_count, text_prompts},
        sampling_params, submit, PromptLimits,
    },
};

/// How many prompts the field holds (before any tokenizing, for admission and the cap).
fn prompt_count(prompt: &PromptField) -> usize {
    match prompt {
        PromptField::Text(_) | PromptField::Tokens(_) => 1,
        PromptField::Texts(v) => v.len(),
        PromptField::TokenLists(v) => v.len(),
    }
}

/// The prompts as token ids: text is encoded with the model's BOS rule on a blocking thread,
/// token ids are checked.
async fn prompts(tok: &Arc<Tokenizer>, prompt: PromptField, limits: PromptLimits) -> Result<Vec<Vec<u32>>, ApiError> {
    let ids = |v: Vec<i64>, field: &dyn Fn() -> String| -> Result<Vec<u32>, ApiError> {
        if v.is_empty() {
            return Err(ApiError::invalid(field(), format!("`{}` is empty", field())));
        }
        v.into_iter().map(|t| u32::try_from(t).map_err(|_| ApiError::invalid(field(), format!("bad token id {t}")))).collect()
    };
    check_count(prompt_count(&prompt), &limits)?;
    let out = match prompt {
        PromptField::Text(s) => text_prompts(tok.clone(), vec![s], limits).await?,
        PromptField::Texts(v) => text_prompts(tok.clone(), v, limits).await?,
        PromptField::Tokens(v) => vec![ids(v, &|| "prompt".to_string())?],
        PromptField::TokenLists(v) => {
            v.into_iter().enumerate().map(|(i, p)| ids(p, &|| format!("prompt[{i}]"))).collect::<Result<_, _>>()?
        }
    };
    if let Some(i) = out.iter().position(Vec::is_empty) {
        return Err(ApiError::invalid("prompt", format!("prompt {i} is empty")));
    }
    Ok(out)
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    // Everything that can be checked without the model first, so a bad request costs nothing.
    let logprobs = req.logprobs.map(|k| logprobs_count("logprobs", k)).transpose()?;
    if req.echo && logprobs.is_some() {
        return Err(ApiError::invalid("echo", "`echo` together with `logprobs` (prompt logprobs) is not supported"));
    }
    let limits = state.config.prompt_limits;
    let sampling = req.sampling();
    let n = requested_n(&sampling)?;
    check_cache_salt(req.cache_salt.as_deref())?;
    let salt = state.cache_salt(&headers, req.cache_salt.as_deref());
    let count = prompt_count(&req.prompt);
    check_count(count, &limits)?;
    let (served, adapter) = state.resolve(&req.model)?;
    // Every prompt x `n` is a sequence: all of them count, before anything is tokenized.
    let permit = state.admit(&served, Cost { prompts: count, n })?;
    let tok = served.engine.tokenizer().clone();
    let as_ids = req.return_tokens_as_token_ids;
    let prompt_ids = prompts(&tok, req.prompt, limits).await?;
    let info = served.engine.info();
    let mut jobs = Vec::with_capacity(prompt_ids.len());
    let mut echoes = Vec::with_capacity(prompt_ids.len());
    for ids in prompt_ids {
        let params = sampling_params(&sampling, req.max_tokens, logprobs, ids.len(), info.max_model_len)?;
        echoes.push(if req.echo { tok.decode(&ids)? } else { String::new() });
        jobs.push((ids, params));
    }
    let num_choices = jobs.len() * n;
    // Every prompt (and so each of its `n` samples) runs on the requested adapter.
    let rx = submit(&served, adapter.as_deref(), salt, jobs, state.metrics.model(&served.name), arrival)?;
    let id = new_id("cmpl");
    // An adapter answers under its own name, as in vLLM.
    let (created, model) = (now(), adapter.unwrap_or_else(|| served.name.clone()));
    let mut offsets = vec![0usize; num_choices];
    let mut echoed = vec![false; num_choices];
    let mut take_echo = move |choice: usize, prompt: usize| {
        if std::mem::replace(&mut echoed[choice], true) {
            String::new()
        } else {
            echoes[prompt].clone()
        }
    };

    if !req.stream {
        let names = TokenNames { tok: &tok, as_ids };
        let mut choices: Vec<CompletionChoice> = (0..num_choices)
            .map(|index| CompletionChoice {
                index,
                text: String::new(),
                logprobs: logprobs.map(|_| CompletionLogprobs::default()),
                finish_reason: None,
                stop_reason: None,
            })
            .collect();
        let total = collect_deltas(rx, |prompt, delta| {
            let i = prompt * n + delta.index;
            let c = &mut choices[i];
            c.text.push_str(&take_echo(i, prompt));
            c.text.push_str(&delta.text);
            if let Some(lp) = c.logprobs.as_mut() {
                let more = completion_logprobs(&names, &delta, &mut offsets[i]);
                lp.tokens.extend(more.tokens);
                lp.token_logprobs.extend(more.token_logprobs);
                lp.top_logprobs.extend(more.top_logprobs);
                lp.text_offset.extend(more.text_offset);
            }
            if let Some(f) = &delta.finish {
                c.finish_reason = Some(f.reason.as_str());
                c.stop_reason = stop_reason(&delta);
            }
        })
        .await?;
        drop(permit);
        let body = Completion {
            id,
            object: "text_completion",
            created,
            model,
            choices,
            usage: Some(usage(total)),
            system_fingerprint: None,
        };
        return Ok(Json(body).into_response());
    }

    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let (tx, out) = mpsc::channel::<String>(64);
    tokio::spawn(async move {
        let _permit = permit;
        let names = TokenNames { tok: &tok, as_ids };
        let chunk = |choices: Vec<CompletionChoice>, usage| {
            let c = Completion {
                id: id.clone(),
                object: "text_completion",
                created,
                model: model.clone(),
                choices,
                usage,
                system_fingerprint: None,
            };
            serde_json::to_string(&c).unwrap_or_default()
        };
        let to_chunk = |prompt: usize, delta: flint_engine::StreamDelta| {
            let i = prompt * n + delta.index;
            let mut text = take_echo(i, prompt);
            text.push_str(&delta.text);
            let choice = CompletionChoice {
                index: i,
                text,
                logprobs: logprobs.map(|_| completion_logprobs(&names, &delta, &mut offsets[i])),
                finish_reason: delta.finish.as_ref().map(|f| f.reason.as_str()),
                stop_reason: stop_reason(&delta),
            };
            chunk(vec![choice], None)
        };
        let usage_chunk = include_usage.then_some(|u| chunk(Vec::new(), Some(u)));
        write_chunks(rx, &tx, to_chunk, usage_chunk).await;
    });
    Ok(sse_response(out))
}
