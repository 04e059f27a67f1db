//! `POST /v1/completions`: one engine request per prompt; choice `i * n + j` is sample `j` of
//! prompt `i`, as in OpenAI's API.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Json,
};
use flint_engine::Tokenizer;
use tokio::sync::mpsc;

use super::{
    admit, collect_deltas, completion_logprobs, forward_all, generate, new_id, now, sampling_params, sse_response,
    stop_reason, usage, write_chunks, TokenNames, MAX_TOP_LOGPROBS,
};
use crate::api::{
    error::ApiError,
    types::{Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, PromptField},
    AppState, JsonBody,
};

/// The prompts as token ids (text is encoded with the model's BOS rule).
fn prompts(tok: &Tokenizer, prompt: &PromptField) -> Result<Vec<Vec<u32>>, ApiError> {
    let ids = |v: &[i64], field: String| -> Result<Vec<u32>, ApiError> {
        v.iter()
            .map(|&t| u32::try_from(t).map_err(|_| ApiError::invalid(field.clone(), format!("bad token id {t}"))))
            .collect()
    };
    let out = match prompt {
        PromptField::Text(s) => vec![tok.encode_prompt(s)?],
        PromptField::Texts(v) => v.iter().map(|s| tok.encode_prompt(s)).collect::<Result<_, _>>()?,
        PromptField::Tokens(v) => vec![ids(v, "prompt".into())?],
        PromptField::TokenLists(v) => v.iter().enumerate().map(|(i, p)| ids(p, format!("prompt[{i}]"))).collect::<Result<_, _>>()?,
    };
    if out.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be an empty list"));
    }
    if let Some(i) = out.iter().position(Vec::is_empty) {
        return Err(ApiError::invalid("prompt", format!("prompt {i} is empty")));
    }
    Ok(out)
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let (served, adapter, permit) = admit(&state, &req.model)?;
    let tok = served.engine.tokenizer().clone();
    let as_ids = req.return_tokens_as_token_ids;
    let prompt_ids = prompts(&tok, &req.prompt)?;
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_TOP_LOGPROBS).contains(&k) => Some(k as usize),
        Some(k) => return Err(ApiError::invalid("logprobs", format!("`logprobs` must be in 0..=20, got {k}"))),
    };
    if req.echo && logprobs.is_some() {
        return Err(ApiError::invalid("echo", "`echo` together with `logprobs` (prompt logprobs) is not supported"));
    }
    let info = served.engine.info();
    let mut streams = Vec::with_capacity(prompt_ids.len());
    let mut echoes = Vec::with_capacity(prompt_ids.len());
    let mut n = 1;
    let sampling = req.sampling();
    for ids in prompt_ids {
        let params = sampling_params(&sampling, req.max_tokens, logprobs, ids.len(), info.max_model_len)?;
        n = params.n;
        echoes.push(if req.echo { tok.decode(&ids)? } else { String::new() });
        // Engine requests queued so far are aborted if a later prompt is refused (streams drop).
        // Every prompt (and so each of its `n` samples) runs on the requested adapter.
        streams.push(generate(&served, adapter.as_deref(), ids, params)?);
    }
    let num_choices = streams.len() * n;
    let id = new_id("cmpl");
    // An adapter answers under its own name, as in vLLM.
    let (created, model) = (now(), adapter.unwrap_or_else(|| served.name.clone()));
    let rx = forward_all(streams, state.metrics.model(&served.name), arrival);
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
