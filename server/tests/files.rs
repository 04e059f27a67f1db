//! OpenAI's Files API: multipart uploads (training files checked by line), list / retrieve /
//! content / delete, limits, and files surviving a restart on the same `--data-dir`.

mod common;

use std::{path::Path, sync::Arc};

use axum::{
    body::Body,
    extract::DefaultBodyLimit,
    http::{header, Request, StatusCode},
    Router,
};
use common::{get, send, Resp};
use flint_server::api::{self, files, AppState, ServerConfig};
use serde_json::Value;
use tempfile::TempDir;

const BOUNDARY: &str = "flint-test-boundary-7d1f";
/// The router-wide JSON body limit the tests run under: uploads must get past it.
const BODY_LIMIT: usize = 1024;
const UPLOAD_LIMIT: usize = 64 * 1024;

const TRAIN: &str = concat!(
    r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
    "\n",
    r#"{"messages": [{"role": "system", "content": "terse"}, {"role": "user", "content": "2+2"}, {"role": "assistant", "content": "4"}]}"#,
    "\n",
);

struct Files {
    app: Router,
    data: TempDir,
}

fn state(data: &Path) -> Arc<AppState> {
    AppState::new(ServerConfig { data_dir: Some(data.to_path_buf()), max_body_bytes: BODY_LIMIT, ..common::config() })
}

/// The Files routes under a small router-wide body limit, as `api::router` layers them.
fn app(state: Arc<AppState>) -> Router {
    Router::new().merge(files::routes(UPLOAD_LIMIT)).layer(DefaultBodyLimit::max(BODY_LIMIT)).with_state(state)
}

fn files_server() -> Files {
    let data = tempfile::tempdir().unwrap();
    Files { app: app(state(data.path())), data }
}

/// A multipart body by hand: `(name, filename, content)` parts.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Request<Body> {
    let mut body = Vec::new();
    for (name, filename, content) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(f) = filename {
            body.extend_from_slice(format!("; filename=\"{f}\"\r\nContent-Type: application/octet-stream").as_bytes());
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    Request::post("/v1/files")
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(Body::from(body))
        .unwrap()
}

async fn upload(app: &Router, filename: &str, purpose: &str, content: &[u8]) -> Resp {
    send(app, multipart(&[("purpose", None, purpose.as_bytes()), ("file", Some(filename), content)])).await
}

fn delete(uri: &str) -> Request<Body> {
    Request::delete(uri).body(Body::empty()).unwrap()
}

async fn list(app: &Router, query: &str) -> Value {
    send(app, get(&format!("/v1/files{query}"))).await.ok()
}

fn stored_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("files")).unwrap().count()
}

#[tokio::test]
async fn upload_list_retrieve_content_delete() {
    let s = files_server();
    let file = upload(&s.app, "train.jsonl", "fine-tune", TRAIN.as_bytes()).await.ok();
    let id = file["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("file-"), "{file}");
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], TRAIN.len());
    assert_eq!(file["filename"], "train.jsonl");
    assert_eq!(file["purpose"], "fine-tune");
    assert_eq!(file["status"], "processed");
    assert!(file["created_at"].as_i64().unwrap() > 0);

    let listed = list(&s.app, "").await;
    assert_eq!(listed["object"], "list");
    assert_eq!(listed["data"], Value::Array(vec![file.clone()]));
    assert_eq!((listed["has_more"].clone(), listed["first_id"].clone()), (false.into(), id.clone().into()));
    assert_eq!(listed["last_id"], id.as_str());

    assert_eq!(send(&s.app, get(&format!("/v1/files/{id}"))).await.ok(), file);
    let content = send(&s.app, get(&format!("/v1/files/{id}/content"))).await;
    assert_eq!(content.status, StatusCode::OK);
    assert_eq!(content.header("content-type"), Some("application/jsonl"));
    assert_eq!(content.body, TRAIN.as_bytes());

    let gone = send(&s.app, delete(&format!("/v1/files/{id}"))).await.ok();
    assert_eq!(gone, serde_json::json!({"id": id, "object": "file", "deleted": true}));
    for uri in [format!("/v1/files/{id}"), format!("/v1/files/{id}/content")] {
        send(&s.app, get(&uri)).await.error(StatusCode::NOT_FOUND, Some("file_id"));
    }
    send(&s.app, delete(&format!("/v1/files/{id}"))).await.error(StatusCode::NOT_FOUND, Some("file_id"));
    assert_eq!(list(&s.app, "").await["data"], Value::Array(vec![]));
    assert_eq!(stored_files(s.data.path()), 0);
}

#[tokio::test]
async fn other_purposes_are_stored_unchecked() {
    let s = files_server();
    let blob = upload(&s.app, "data.bin", "user_data", b"\x00\x01 not json").await.ok();
    let id = blob["id"].as_str().unwrap();
    let content = send(&s.app, get(&format!("/v1/files/{id}/content"))).await;
    assert_eq!(content.header("content-type"), Some("application/octet-stream"));
    assert_eq!(content.body, &b"\x00\x01 not json"[..]);
}

#[tokio::test]
async fn list_pages_filters_and_orders() {
    let s = files_server();
    let mut ids = Vec::new();
    for purpose in ["fine-tune", "batch", "fine-tune"] {
        ids.push(upload(&s.app, "f.jsonl", purpose, TRAIN.as_bytes()).await.ok()["id"].as_str().unwrap().to_string());
    }
    let page_ids = |v: &Value| v["data"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let newest = list(&s.app, "?limit=2").await;
    assert_eq!(page_ids(&newest), [ids[2].clone(), ids[1].clone()]);
    assert_eq!(newest["has_more"], true);
    let rest = list(&s.app, &format!("?limit=2&after={}", ids[1])).await;
    assert_eq!((page_ids(&rest), rest["has_more"].clone()), (vec![ids[0].clone()], false.into()));
    assert_eq!(page_ids(&list(&s.app, "?order=asc").await), ids);
    assert_eq!(page_ids(&list(&s.app, "?purpose=batch").await), [ids[1].clone()]);
    let empty = list(&s.app, "?purpose=evals").await;
    assert_eq!((empty["first_id"].clone(), empty["last_id"].clone()), (Value::Null, Value::Null));
    for (query, param) in [("?limit=0", "limit"), ("?limit=10001", "limit"), ("?order=up", "order"), ("?after=file-0", "after")] {
        send(&s.app, get(&format!("/v1/files{query}"))).await.error(StatusCode::BAD_REQUEST, Some(param));
    }
}

#[tokio::test]
async fn a_malformed_training_file_is_refused_by_line_and_not_stored() {
    let s = files_server();
    let bad = format!("{TRAIN}{{\"messages\": [{{\"role\": \"user\", \"content\": \"no answer\"}}]}}\n");
    let resp = upload(&s.app, "train.jsonl", "fine-tune", bad.as_bytes()).await;
    let e = resp.error(StatusCode::BAD_REQUEST, Some("file"));
    assert!(e["message"].as_str().unwrap().contains("line 3"), "{e}");
    let resp = upload(&s.app, "train.jsonl", "fine-tune", b"{\"messages\": [\n").await;
    let e = resp.error(StatusCode::BAD_REQUEST, Some("file"));
    assert!(e["message"].as_str().unwrap().starts_with("line 1: invalid JSON"), "{e}");
    assert_eq!(list(&s.app, "").await["data"], Value::Array(vec![]));
    assert_eq!(stored_files(s.data.path()), 0);
}

#[tokio::test]
async fn bad_or_missing_parts_are_named() {
    let s = files_server();
    let e = upload(&s.app, "train.jsonl", "training", TRAIN.as_bytes()).await.error(StatusCode::BAD_REQUEST, Some("purpose"));
    assert!(e["message"].as_str().unwrap().contains("`training` is not a purpose"), "{e}");
    let no_file = send(&s.app, multipart(&[("purpose", None, b"fine-tune")])).await;
    assert!(no_file.error(StatusCode::BAD_REQUEST, Some("file"))["message"].as_str().unwrap().contains("`file`"));
    let no_purpose = send(&s.app, multipart(&[("file", Some("t.jsonl"), TRAIN.as_bytes())])).await;
    no_purpose.error(StatusCode::BAD_REQUEST, Some("purpose"));
    let no_name = send(&s.app, multipart(&[("purpose", None, b"fine-tune"), ("file", None, TRAIN.as_bytes())])).await;
    no_name.error(StatusCode::BAD_REQUEST, Some("file"));
    upload(&s.app, "t.jsonl", "batch", b"").await.error(StatusCode::BAD_REQUEST, Some("file"));
    let json = Request::post("/v1/files").header(header::CONTENT_TYPE, "application/json").body(Body::from("{}")).unwrap();
    send(&s.app, json).await.error(StatusCode::BAD_REQUEST, None);
    assert_eq!(stored_files(s.data.path()), 0);
}

#[tokio::test]
async fn uploads_have_their_own_size_limit() {
    let s = files_server();
    // Well past the router-wide limit, within the upload limit.
    let line = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;
    let big = format!("{line}\n").repeat(BODY_LIMIT / line.len() * 8);
    assert!(big.len() > 4 * BODY_LIMIT && big.len() < UPLOAD_LIMIT);
    upload(&s.app, "big.jsonl", "fine-tune", big.as_bytes()).await.ok();
    let huge = vec![b'x'; UPLOAD_LIMIT + 1];
    upload(&s.app, "huge.bin", "user_data", &huge).await.error(StatusCode::PAYLOAD_TOO_LARGE, None);
    assert_eq!(list(&s.app, "").await["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn files_survive_a_restart() {
    let s = files_server();
    let id = upload(&s.app, "train.jsonl", "fine-tune", TRAIN.as_bytes()).await.ok()["id"].as_str().unwrap().to_string();
    drop(s.app);
    let again = app(state(s.data.path()));
    assert_eq!(list(&again, "").await["data"][0]["id"], id.as_str());
    assert_eq!(send(&again, get(&format!("/v1/files/{id}/content"))).await.body, TRAIN.as_bytes());
}

#[tokio::test]
async fn without_a_data_dir_the_routes_say_how_to_turn_storage_on() {
    let app = app(AppState::new(common::config()));
    let e = send(&app, get("/v1/files")).await.error(StatusCode::BAD_REQUEST, None);
    assert!(e["message"].as_str().unwrap().contains("--data-dir"), "{e}");
}

/// The real router, once it serves the Files routes, must let uploads past its JSON limit.
#[tokio::test]
async fn the_full_router_serves_files() {
    let data = tempfile::tempdir().unwrap();
    let app = api::router(state(data.path()));
    let big = TRAIN.repeat(BODY_LIMIT / TRAIN.len() * 4);
    let file = upload(&app, "train.jsonl", "fine-tune", big.as_bytes()).await.ok();
    assert_eq!(file["bytes"], big.len());
}
