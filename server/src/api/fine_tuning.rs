//! OpenAI's fine-tuning routes: `POST /v1/fine_tuning/jobs`, `GET /v1/fine_tuning/jobs`,
//! `GET …/{id}`, `POST …/{id}/cancel`, `GET …/{id}/events`, `GET …/{id}/checkpoints`.
//! The work is [`crate::finetune::FineTuning`]'s; these handlers parse and shape.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    Json,
};
use serde_json::{json, Value};

use super::{error::ApiError, types::ErrorBody, AppState, JsonBody};
use crate::finetune::{
    job::{CreateJob, Job},
    FineTuning,
};

fn service(state: &AppState) -> Result<&Arc<FineTuning>, ApiError> {
    state.finetune.as_ref().ok_or_else(|| ApiError::bad_body("fine-tuning is off on this server (it needs --data-dir)"))
}

/// The job as OpenAI shows it (flint's internal plan left out; `hyperparameters` shows it).
fn job_json(job: &Job) -> Value {
    let mut v = serde_json::to_value(job).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("plan");
    }
    v
}

/// The most jobs, events or checkpoints one list page holds (OpenAI's cap).
pub const MAX_PAGE: usize = 100;

/// `after` and `limit` (default `default`, 1..=[`MAX_PAGE`]) of a list route.
fn page(q: &HashMap<String, String>, default: usize) -> Result<(Option<String>, usize), ApiError> {
    let limit = match q.get("limit") {
        None => default,
        Some(s) => s.parse::<usize>().ok().filter(|l| (1..=MAX_PAGE).contains(l)).ok_or_else(|| {
            ApiError::invalid("limit", format!("`limit` must be a number in 1..={MAX_PAGE}, got {s:?}"))
        })?,
    };
    Ok((q.get("after").cloned(), limit))
}

fn list(data: Vec<Value>, has_more: bool) -> Json<Value> {
    Json(json!({"object": "list", "data": data, "has_more": has_more}))
}

/// Create a fine-tuning job (LoRA, supervised) on a served base model.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs", request_body = CreateJob,
    responses((status = 200, description = "the job"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create(State(state): State<Arc<AppState>>, JsonBody(req): JsonBody<CreateJob>) -> Result<Json<Value>, ApiError> {
    let job = service(&state)?.create(req)?;
    Ok(Json(job_json(&job)))
}

/// The jobs, newest first (`after`: a job id; `limit`: 1..=100, default 20).
#[utoipa::path(get, path = "/v1/fine_tuning/jobs", responses((status = 200)))]
pub async fn list_jobs(State(state): State<Arc<AppState>>, Query(q): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let (after, limit) = page(&q, 20)?;
    let (jobs, more) = service(&state)?.list(after.as_deref(), limit)?;
    Ok(list(jobs.iter().map(job_json).collect(), more))
}

/// One job.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{id}", responses((status = 200), (status = 404, body = ErrorBody)))]
pub async fn get_job(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(job_json(&service(&state)?.get(&id)?)))
}

/// Cancel a job (a running one stops within one training step).
#[utoipa::path(post, path = "/v1/fine_tuning/jobs/{id}/cancel", responses((status = 200), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn cancel(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(job_json(&service(&state)?.cancel(&id)?)))
}

/// A job's events, newest first: status messages and per-step metrics (`data`: step,
/// train_loss, learning_rate, tokens_per_second; valid_loss).
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{id}/events", responses((status = 200), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (after, limit) = page(&q, 20)?;
    let (data, more) = service(&state)?.events(&id, after.as_deref(), limit)?;
    Ok(list(data, more))
}

/// A job's checkpoints, newest first; each is servable as its `fine_tuned_model_checkpoint`.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{id}/checkpoints", responses((status = 200), (status = 404, body = ErrorBody)))]
pub async fn checkpoints(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (after, limit) = page(&q, 10)?;
    let (data, more) = service(&state)?.checkpoints(&id, after.as_deref(), limit)?;
    Ok(list(data, more))
}
