//! OpenAI's Files API over [`Store`]: upload (multipart), list, retrieve, content, delete.
//!
//! Uploads stream to disk ([`UploadWriter`]): training files (`purpose: fine-tune`) are
//! checked line by line as they arrive, so a bad line is reported by number and nothing is
//! stored, and a job created later can trust every stored training file; other purposes are
//! stored as given. Nothing is stored until the whole body has been read and checked.
//! Uploads get their own body limit ([`routes`]), larger than the one for JSON requests.
//! Downloads stream from disk, a chunk at a time.

use std::{io::Read, sync::Arc};

use axum::{
    body::{Body, Bytes},
    extract::{
        multipart::{Field, MultipartError, MultipartRejection},
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
    store::{FileObject, Store},
    upload::{Upload, UploadWriter},
};

/// The purposes OpenAI accepts; only `fine-tune` files are read by flint.
const PURPOSES: [&str; 6] = ["fine-tune", "user_data", "assistants", "batch", "vision", "evals"];

/// Most files one list page holds (OpenAI's limit).
const MAX_LIST: usize = 10_000;

/// The most bytes of a `purpose` part read (the longest purpose has 10).
const MAX_PURPOSE_BYTES: usize = 64;

/// How much of a file one read of a download takes.
const DOWNLOAD_CHUNK: usize = 64 << 10;

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

/// Why a part was not taken: the body could not be read (nothing more can be), or the part
/// was refused (the rest of the body is still read, so the client hears why).
enum PartError {
    Read(ApiError),
    Refused(ApiError),
}

/// Reads the rest of a part, dropping it.
async fn drain(field: &mut Field<'_>, part: &str, limit: usize) -> Result<(), ApiError> {
    while field.chunk().await.map_err(|e| read_error(e, part, limit))?.is_some() {}
    Ok(())
}

/// The `file` part, written to disk as it arrives (checked if `purpose` is known to be, or
/// may turn out to be, `fine-tune`).
async fn write_file(store: &Arc<Store>, field: &mut Field<'_>, purpose: Option<&str>, limit: usize) -> Result<Upload, PartError> {
    let refused = |e: crate::finetune::FineTuneError| PartError::Refused(e.into());
    let mut writer = UploadWriter::begin(store.clone(), purpose).await.map_err(refused)?;
    loop {
        let chunk: Bytes = match field.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            // Dropping the writer removes what was written.
            Err(e) => return Err(PartError::Read(read_error(e, "file", limit))),
        };
        writer.write(&chunk).await.map_err(refused)?;
    }
    writer.end().await.map_err(refused)
}

/// The `purpose` part, at most [`MAX_PURPOSE_BYTES`] of it.
async fn read_purpose(field: &mut Field<'_>, limit: usize) -> Result<String, PartError> {
    let mut bytes = Vec::new();
    while let Some(c) = field.chunk().await.map_err(|e| PartError::Read(read_error(e, "purpose", limit)))? {
        if bytes.len() + c.len() > MAX_PURPOSE_BYTES {
            return Err(PartError::Refused(ApiError::invalid("purpose", format!("`purpose` is longer than {MAX_PURPOSE_BYTES} bytes"))));
        }
        bytes.extend_from_slice(&c);
    }
    let purpose = String::from_utf8(bytes).map_err(|_| PartError::Refused(ApiError::invalid("purpose", "`purpose` is not UTF-8")))?;
    let purpose = purpose.trim().to_string();
    if !PURPOSES.contains(&purpose.as_str()) {
        let msg = format!("`{purpose}` is not a purpose (one of {})", PURPOSES.join(", "));
        return Err(PartError::Refused(ApiError::invalid("purpose", msg)));
    }
    Ok(purpose)
}

/// The parts of an upload, as the OpenAPI document describes them.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file's bytes (JSONL for `fine-tune`).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// `fine-tune`, `batch`, `assistants`, `user_data`, …
    purpose: String,
}

/// Upload a file (`multipart/form-data` with parts `file` and `purpose`).
#[utoipa::path(post, path = "/v1/files", request_body(content_type = "multipart/form-data", content = UploadForm),
    responses((status = 200, body = FileObject), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn upload_file(
    State(state): State<Arc<AppState>>,
    form: Result<Multipart, MultipartRejection>,
    limit: usize,
) -> Result<Json<FileObject>, ApiError> {
    let store = store(&state)?;
    let mut form = form.map_err(|e| ApiError::bad_body(format!("expected a multipart/form-data body: {}", e.body_text())))?;
    let (mut file, mut purpose): (Option<(String, Upload)>, Option<String>) = (None, None);
    // The first refusal. The rest of the body is still read (and dropped): a client still
    // sending would otherwise see its connection reset instead of the answer.
    let mut refused: Option<ApiError> = None;
    while let Some(mut field) = form.next_field().await.map_err(|e| refused.clone().unwrap_or_else(|| read_error(e, "file", limit)))? {
        let name = field.name().unwrap_or_default().to_owned();
        let refuse = |param: &str, msg: &str| Err(PartError::Refused(ApiError::invalid(param, msg)));
        // Ok(true): the part was read; Ok(false): it is to be dropped.
        let taken = match name.as_str() {
            _ if refused.is_some() => Ok(false),
            "file" if file.is_some() => refuse("file", "only one `file` part is allowed"),
            "file" => match field.file_name() {
                Some(n) if !n.trim().is_empty() => {
                    let filename = n.to_string();
                    let written = write_file(&store, &mut field, purpose.as_deref(), limit).await;
                    written.map(|upload| file = Some((filename, upload))).map(|()| true)
                }
                _ => refuse("file", "the `file` part needs a filename"),
            },
            "purpose" if purpose.is_some() => refuse("purpose", "only one `purpose` part is allowed"),
            "purpose" => read_purpose(&mut field, limit).await.map(|p| purpose = Some(p)).map(|()| true),
            // Other parts (newer clients' `expires_after`) are not needed to store the file.
            _ => Ok(false),
        };
        match taken {
            Ok(true) => {}
            Err(PartError::Read(e)) => return Err(refused.unwrap_or(e)),
            Ok(false) | Err(PartError::Refused(_)) => {
                if let Err(PartError::Refused(e)) = taken {
                    refused = Some(e);
                }
                drain(&mut field, &name, limit).await.map_err(|e| refused.clone().unwrap_or(e))?;
            }
        }
    }
    if let Some(e) = refused {
        return Err(e);
    }
    let purpose = purpose.ok_or_else(|| ApiError::invalid("purpose", "the `purpose` part is required"))?;
    let (filename, upload) = file.ok_or_else(|| ApiError::invalid("file", "the `file` part is required"))?;
    let stored = blocking(move || Ok(upload.finish(&filename, &purpose)?)).await?;
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
            if store.get_file(after)?.is_none() {
                return Err(ApiError::invalid("after", format!("no file with id `{after}`")));
            }
        }
        store.list_files(q.purpose.as_deref(), q.after.as_deref(), limit, newest_first).map_err(ApiError::from)
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
        move || store.get_file(&id).map_err(ApiError::from)
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
            let Some((file, handle)) = store.open_file(&id)? else { return Ok(None) };
            let len = handle.metadata().map_err(|e| ApiError::internal(format!("file storage: {e}")))?.len();
            Ok(Some((file, handle, len)))
        }
    })
    .await?;
    let (file, handle, len) = found.ok_or_else(|| not_found(&id))?;
    let kind = if file.filename.ends_with(".jsonl") { "application/jsonl" } else { "application/octet-stream" };
    let headers = [(header::CONTENT_TYPE, kind.to_string()), (header::CONTENT_LENGTH, len.to_string())];
    Ok((headers, Body::from_stream(chunks(handle))).into_response())
}

/// `file`'s bytes, [`DOWNLOAD_CHUNK`] at a time, each read on the blocking pool: a download
/// holds one chunk of memory, and no thread while the client is slow to take it. The reads
/// stop when the client goes away (the stream is dropped).
fn chunks(file: std::fs::File) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::try_unfold(file, |mut file| async move {
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; DOWNLOAD_CHUNK];
            loop {
                match file.read(&mut buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        return Ok((file, buf));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        });
        let (file, buf) = read.await.map_err(std::io::Error::other)??;
        Ok((!buf.is_empty()).then(|| (Bytes::from(buf), file)))
    })
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
        move || store.delete_file(&id).map_err(ApiError::from)
    })
    .await?;
    if !deleted {
        return Err(not_found(&id));
    }
    Ok(Json(FileDeleted { id, object: "file", deleted: true }))
}
