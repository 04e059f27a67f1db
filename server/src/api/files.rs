//! OpenAI's Files API over [`Store`]: upload (multipart), list, retrieve, content, delete.
//!
//! Training files (`purpose: fine-tune`) are checked whole at upload with
//! [`parse_jsonl`], so a bad line is reported then, by number, and nothing is stored; a job
//! created later can trust every stored training file. Other purposes are stored as given.
//! Uploads get their own body limit ([`routes`]), larger than the one for JSON requests.

use std::sync::Arc;

use axum::{
    extract::{
        multipart::{MultipartError, MultipartRejection},
        DefaultBodyLimit, Multipart, Path, Query, State,
    },
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::{Deserialize, Serialize};

use super::{types::ErrorBody, ApiError, AppState};
use crate::finetune::{
    dataset::parse_jsonl,
    store::{FileObject, Store, StoreError},
};

/// The purposes OpenAI accepts; only `fine-tune` files are read by flint.
const PURPOSES: [&str; 6] = ["fine-tune", "user_data", "assistants", "batch", "vision", "evals"];

/// Most files one list page holds (OpenAI's limit).
const MAX_LIST: usize = 10_000;

/// The Files routes; uploads may be up to `max_upload_bytes` (413 beyond). The limit is a
/// route layer, so it replaces the router-wide JSON body limit for these routes only.
pub fn routes(max_upload_bytes: usize) -> Router<Arc<AppState>> {
    let upload = move |state: State<Arc<AppState>>, form: Result<Multipart, MultipartRejection>| {
        upload_file(state, form, max_upload_bytes)
    };
    Router::new()
        .route("/v1/files", get(list_files).post(upload).layer(DefaultBodyLimit::max(max_upload_bytes)))
        .route("/v1/files/{id}", get(retrieve_file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
}

/// The store, or why there is none.
fn store(state: &AppState) -> Result<Arc<Store>, ApiError> {
    state.store.clone().ok_or_else(|| ApiError::bad_body("fine-tuning storage is off (start with --data-dir)"))
}

fn internal(e: StoreError) -> ApiError {
    ApiError::internal(format!("file storage: {e}"))
}

/// Runs blocking storage work (SQLite, fsync, reading files) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("storage task failed: {e}")))?
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no file with id `{id}`")).with_param("file_id")
}

/// A multipart read error: 413 past the upload limit, 400 otherwise.
fn read_error(e: MultipartError, part: &str, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::invalid(part, format!("cannot read the multipart body: {}", e.body_text()))
    }
}

/// Upload a file (`multipart/form-data` with parts `file` and `purpose`).
#[utoipa::path(post, path = "/v1/files", request_body(content_type = "multipart/form-data", content = String),
    responses((status = 200, body = FileObject), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn upload_file(
    State(state): State<Arc<AppState>>,
    form: Result<Multipart, MultipartRejection>,
    limit: usize,
) -> Result<Json<FileObject>, ApiError> {
    let store = store(&state)?;
    let mut form = form.map_err(|e| ApiError::bad_body(format!("expected a multipart/form-data body: {}", e.body_text())))?;
    let (mut file, mut purpose) = (None, None);
    while let Some(field) = form.next_field().await.map_err(|e| read_error(e, "file", limit))? {
        match field.name() {
            Some("file") => {
                let name = match field.file_name() {
                    Some(n) if !n.trim().is_empty() => n.to_string(),
                    _ => return Err(ApiError::invalid("file", "the `file` part needs a filename")),
                };
                let data = field.bytes().await.map_err(|e| read_error(e, "file", limit))?;
                file = Some((name, data));
            }
            Some("purpose") => purpose = Some(field.text().await.map_err(|e| read_error(e, "purpose", limit))?),
            // Other parts (newer clients' `expires_after`) are not needed to store the file.
            _ => {}
        }
    }
    let purpose = purpose.ok_or_else(|| ApiError::invalid("purpose", "the `purpose` part is required"))?;
    let purpose = purpose.trim().to_string();
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid(
            "purpose",
            format!("`{purpose}` is not a purpose (one of {})", PURPOSES.join(", ")),
        ));
    }
    let (filename, data) = file.ok_or_else(|| ApiError::invalid("file", "the `file` part is required"))?;
    if data.is_empty() {
        return Err(ApiError::invalid("file", "the file is empty"));
    }
    let stored = blocking(move || {
        if purpose == "fine-tune" {
            parse_jsonl(&data).map_err(|e| ApiError::invalid("file", e.to_string()))?;
        }
        store.insert_file(&filename, &purpose, &data).map_err(internal)
    })
    .await?;
    tracing::info!(id = %stored.id, purpose = %stored.purpose, bytes = stored.bytes, "file uploaded");
    Ok(Json(stored))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only files with this purpose.
    purpose: Option<String>,
    /// A file id: the page starts after it.
    after: Option<String>,
    /// 1 to 10000 (default 10000).
    limit: Option<i64>,
    /// `desc` (newest first, default) or `asc`.
    order: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FileList {
    /// Always `list`.
    object: &'static str,
    data: Vec<FileObject>,
    has_more: bool,
    first_id: Option<String>,
    last_id: Option<String>,
}

/// List uploaded files.
#[utoipa::path(get, path = "/v1/files", params(ListQuery),
    responses((status = 200, body = FileList), (status = 400, body = ErrorBody)))]
pub async fn list_files(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FileList>, ApiError> {
    let store = store(&state)?;
    let Query(q) = query.map_err(|e| ApiError::bad_body(format!("invalid query string: {}", e.body_text())))?;
    let limit = match q.limit {
        None => MAX_LIST,
        Some(n) if (1..=MAX_LIST as i64).contains(&n) => n as usize,
        Some(n) => return Err(ApiError::invalid("limit", format!("`limit` must be 1 to {MAX_LIST}, found {n}"))),
    };
    let newest_first = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(o) => return Err(ApiError::invalid("order", format!("`order` must be `asc` or `desc`, found `{o}`"))),
    };
    let (data, has_more) = blocking(move || {
        // An unknown cursor would silently give an empty page; say so instead.
        if let Some(after) = &q.after {
            if store.get_file(after).map_err(internal)?.is_none() {
                return Err(ApiError::invalid("after", format!("no file with id `{after}`")));
            }
        }
        store.list_files(q.purpose.as_deref(), q.after.as_deref(), limit, newest_first).map_err(internal)
    })
    .await?;
    let first_id = data.first().map(|f| f.id.clone());
    let last_id = data.last().map(|f| f.id.clone());
    Ok(Json(FileList { object: "list", data, has_more, first_id, last_id }))
}

/// A file's description.
#[utoipa::path(get, path = "/v1/files/{id}",
    responses((status = 200, body = FileObject), (status = 404, body = ErrorBody)))]
pub async fn retrieve_file(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<FileObject>, ApiError> {
    let store = store(&state)?;
    let found = blocking({
        let id = id.clone();
        move || store.get_file(&id).map_err(internal)
    })
    .await?;
    found.map(Json).ok_or_else(|| not_found(&id))
}

/// A file's contents, as uploaded.
#[utoipa::path(get, path = "/v1/files/{id}/content",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = ErrorBody)))]
pub async fn file_content(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let store = store(&state)?;
    let found = blocking({
        let id = id.clone();
        move || {
            let Some(file) = store.get_file(&id).map_err(internal)? else { return Ok(None) };
            Ok(store.read_file(&id).map_err(internal)?.map(|data| (file, data)))
        }
    })
    .await?;
    let (file, data) = found.ok_or_else(|| not_found(&id))?;
    let kind = if file.filename.ends_with(".jsonl") { "application/jsonl" } else { "application/octet-stream" };
    Ok(([(header::CONTENT_TYPE, kind)], data).into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FileDeleted {
    id: String,
    /// Always `file`.
    object: &'static str,
    deleted: bool,
}

/// Delete a file (its description and contents).
#[utoipa::path(delete, path = "/v1/files/{id}",
    responses((status = 200, body = FileDeleted), (status = 404, body = ErrorBody)))]
pub async fn delete_file(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<FileDeleted>, ApiError> {
    let store = store(&state)?;
    let deleted = blocking({
        let id = id.clone();
        move || store.delete_file(&id).map_err(internal)
    })
    .await?;
    if !deleted {
        return Err(not_found(&id));
    }
    Ok(Json(FileDeleted { id, object: "file", deleted: true }))
}
