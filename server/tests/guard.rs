//! The browser-facing guards and the JSON edge (`api::guard`, `JsonBody`): JSON routes take
//! only JSON content types (415), a foreign `Origin` is refused (403), a loopback-bound server
//! refuses foreign `Host` names (403, DNS rebinding), an empty API key stops `flint serve`, and
//! deeply nested or huge bodies are refused with a 400, fast, while `/health` keeps answering.

mod common;

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    http::{Request, StatusCode},
    Router,
};
use common::*;
use flint_server::api::{guard::MAX_JSON_DEPTH, ServerConfig};
use serde_json::{json, Value};

/// A POST with these headers (`content-type` included only when given).
fn post_with(uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Request<Body> {
    let mut r = Request::post(uri);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(body.into()).unwrap()
}

const JSON: (&str, &str) = ("content-type", "application/json");

fn ollama_chat() -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "stream": false,
        "options": {"num_predict": 3, "temperature": 0}})
}

/// An Ollama error body (`{"error": "..."}` only) with this status; returns the message.
fn ollama_error(r: &Resp, status: StatusCode) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn json_routes_need_a_json_content_type() {
    let s = server();
    let chat_body = chat(json!({})).to_string();
    for ct in
        [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data; boundary=x"), None]
    {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let r = send(&s.app, post_with("/v1/chat/completions", &headers, chat_body.clone())).await;
        let e = r.error(StatusCode::UNSUPPORTED_MEDIA_TYPE, None);
        assert!(e["message"].as_str().unwrap().contains("Content-Type"), "{e}");
        let r = send(&s.app, post_with("/v1/completions", &headers, completion(json!({})).to_string())).await;
        r.error(StatusCode::UNSUPPORTED_MEDIA_TYPE, None);
    }
    // The cross-site unload of issue 16: `text/plain` with `keep_alive: 0` is refused in
    // Ollama's shape, and the model stays.
    let unload = json!({"model": MODEL, "keep_alive": 0}).to_string();
    let r = send(&s.app, post_with("/api/generate", &[("content-type", "text/plain")], unload)).await;
    assert!(ollama_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE).contains("Content-Type"));
    let r = send(&s.app, post_with("/api/chat", &[], ollama_chat().to_string())).await;
    ollama_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let ps = send(&s.app, get("/api/ps")).await.ok();
    assert_eq!(ps["models"].as_array().unwrap().len(), 1, "{ps}");
    // Parameters and `+json` types are JSON.
    for ct in ["application/json; charset=utf-8", "Application/JSON", "application/vnd.flint+json"] {
        let r = send(&s.app, post_with("/v1/chat/completions", &[("content-type", ct)], chat_body.clone())).await;
        r.ok();
        let r = send(&s.app, post_with("/api/chat", &[("content-type", ct)], ollama_chat().to_string())).await;
        r.ok();
    }
}

#[tokio::test]
async fn bodyless_and_multipart_posts_need_no_json_type() {
    let data = tempfile::tempdir().unwrap();
    let s = server_with(ServerConfig { data_dir: Some(data.path().to_path_buf()), ..config() });
    // Cancelling takes no body, so no content type.
    let r = send(&s.app, post_with("/v1/fine_tuning/jobs/ftjob-nope/cancel", &[], Body::empty())).await;
    r.error(StatusCode::NOT_FOUND, Some("fine_tuning_job_id"));
    // Uploads are multipart.
    let boundary = "XyZ";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n\
         {{\"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}, {{\"role\": \"assistant\", \"content\": \"yo\"}}]}}\n\r\n--{boundary}--\r\n"
    );
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = send(&s.app, post_with("/v1/files", &[("content-type", ct.as_str())], form)).await;
    assert_eq!(r.ok()["object"], "file");
}

#[tokio::test]
async fn foreign_origins_are_refused() {
    let s = server();
    let evil = [JSON, ("origin", "http://evil.example")];
    let r = send(&s.app, post_with("/v1/chat/completions", &evil, chat(json!({})).to_string())).await;
    let e = r.error(StatusCode::FORBIDDEN, None);
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("Origin") && msg.contains("evil.example") && msg.contains("--cors-origin"), "{msg}");
    assert_eq!(e["code"], "origin_not_allowed");
    // Ollama's routes answer in Ollama's shape; the probes are refused too.
    let r = send(&s.app, post_with("/api/generate", &evil, json!({"model": MODEL, "keep_alive": 0}).to_string())).await;
    assert!(ollama_error(&r, StatusCode::FORBIDDEN).contains("Origin"));
    let r = send(&s.app, Request::get("/health").header("origin", "null").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Clients that send no Origin (curl, SDKs) are untouched; the server's own pages (same
    // origin under a loopback name) pass; another local port is another origin.
    send(&s.app, post_with("/v1/chat/completions", &[JSON], chat(json!({})).to_string())).await.ok();
    let own = [JSON, ("host", "localhost:8000"), ("origin", "http://localhost:8000")];
    send(&s.app, post_with("/v1/chat/completions", &own, chat(json!({})).to_string())).await.ok();
    let own = [JSON, ("host", "127.0.0.1:8000"), ("origin", "http://127.0.0.1:8000")];
    send(&s.app, post_with("/api/chat", &own, ollama_chat().to_string())).await.ok();
    let other_port = [JSON, ("host", "localhost:8000"), ("origin", "http://localhost:3000")];
    let r = send(&s.app, post_with("/v1/chat/completions", &other_port, chat(json!({})).to_string())).await;
    r.error(StatusCode::FORBIDDEN, None);
}

#[tokio::test]
async fn cors_origins_are_allowed_and_preflights_work() {
    let cfg = ServerConfig { cors_origins: vec!["http://app.example".into()], api_key: Some("k".into()), ..config() };
    let s = server_with(cfg);
    let preflight = Request::options("/v1/chat/completions")
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, authorization")
        .body(Body::empty())
        .unwrap();
    let r = send(&s.app, preflight).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://app.example"));
    let app = [JSON, ("origin", "http://app.example"), ("authorization", "Bearer k")];
    let r = send(&s.app, post_with("/v1/chat/completions", &app, chat(json!({})).to_string())).await;
    assert_eq!(r.header("access-control-allow-origin"), Some("http://app.example"));
    r.ok();
    // A listed origin is still no key.
    let r = send(&s.app, post_with("/v1/chat/completions", &app[..2], chat(json!({})).to_string())).await;
    r.error(StatusCode::UNAUTHORIZED, None);
    // Others are refused before auth, without CORS headers.
    let evil = [JSON, ("origin", "http://evil.example"), ("authorization", "Bearer k")];
    let r = send(&s.app, post_with("/v1/chat/completions", &evil, chat(json!({})).to_string())).await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    r.error(StatusCode::FORBIDDEN, None);
    // `*` allows any origin.
    let any = server_with(ServerConfig { cors_origins: vec!["*".into()], ..config() });
    let r =
        send(&any.app, post_with("/api/chat", &[JSON, ("origin", "http://evil.example")], ollama_chat().to_string()))
            .await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    r.ok();
}

#[tokio::test]
async fn loopback_bind_refuses_foreign_host_names() {
    let s = server(); // `check_host` is on, as for the default --host 127.0.0.1.
    let rebound = [JSON, ("host", "evil.example:8000")];
    let r = send(&s.app, post_with("/v1/chat/completions", &rebound, chat(json!({})).to_string())).await;
    let e = r.error(StatusCode::FORBIDDEN, None);
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("Host") && msg.contains("evil.example") && msg.contains("--allowed-host"), "{msg}");
    // Even with a matching Origin: that is exactly what a rebinding page sends.
    let rebound_page = [JSON, ("host", "evil.example:8000"), ("origin", "http://evil.example:8000")];
    let r =
        send(&s.app, post_with("/api/generate", &rebound_page, json!({"model": MODEL, "keep_alive": 0}).to_string()))
            .await;
    assert!(ollama_error(&r, StatusCode::FORBIDDEN).contains("Host"));
    let r = send(&s.app, Request::get("/v1/models").header("host", "evil.example").body(Body::empty()).unwrap()).await;
    r.error(StatusCode::FORBIDDEN, None);
    for host in ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "api.localhost"] {
        let r =
            send(&s.app, post_with("/v1/chat/completions", &[JSON, ("host", host)], chat(json!({})).to_string())).await;
        assert_eq!(r.status, StatusCode::OK, "{host}: {}", r.text());
    }
    // --allowed-host names pass, pages under them count as the server's own.
    let s = server_with(ServerConfig { allowed_hosts: vec!["flint.example".into()], ..config() });
    let proxied = [JSON, ("host", "flint.example"), ("origin", "https://flint.example")];
    send(&s.app, post_with("/v1/chat/completions", &proxied, chat(json!({})).to_string())).await.ok();
    let r = send(&s.app, post_with("/v1/chat/completions", &rebound, chat(json!({})).to_string())).await;
    r.error(StatusCode::FORBIDDEN, None);
    // Bound elsewhere, Host is not checked.
    let s = server_with(ServerConfig { check_host: false, ..config() });
    send(&s.app, post_with("/v1/chat/completions", &rebound, chat(json!({})).to_string())).await.ok();
}

/// `flint serve` with an empty key stops before loading anything, naming the flag.
#[test]
fn empty_api_key_stops_flint_serve() {
    for (args, env) in [(&["serve", "--api-key", ""][..], None), (&["serve"][..], Some(""))] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flint"));
        cmd.args(args).env_remove("FLINT_API_KEY").args(["--port", "0", "--model", "/nonexistent"]);
        if let Some(v) = env {
            cmd.env("FLINT_API_KEY", v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--api-key") && err.contains("empty"), "{err}");
    }
}

fn nested_arrays(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

fn nested_objects(n: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n))
}

/// `{"x": 0, …}` body text with `field` set to raw JSON `value`, merged into `base`.
fn with_raw(base: &Value, field: &str, value: &str) -> String {
    let mut obj = base.clone();
    obj.as_object_mut().unwrap().remove(field);
    let text = obj.to_string();
    format!(r#"{{"{field}":{value},{}"#, &text[1..])
}

/// Sends `body` and checks the answer is a 400 within the bound, while `/health` answers in
/// under a second.
async fn refused_fast(app: &Router, uri: &str, body: String) -> Resp {
    let len = body.len();
    let t = Instant::now();
    let req = tokio::spawn({
        let app = app.clone();
        let uri = uri.to_owned();
        async move { send(&app, post_raw(&uri, body)).await }
    });
    let health = Instant::now();
    assert_eq!(send(app, get("/health")).await.status, StatusCode::OK);
    assert!(health.elapsed() < Duration::from_secs(1), "/health took {:?}", health.elapsed());
    let r = req.await.unwrap();
    let took = t.elapsed();
    eprintln!("{uri}: {len} bytes refused in {took:?}");
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "{uri}: {}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
    );
    // Generous: a regression to the super-linear parse takes minutes.
    assert!(took < Duration::from_secs(5), "{uri}: {len} bytes took {took:?}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_and_huge_bodies_are_refused_fast() {
    let s = server_with(ServerConfig { max_body_bytes: 32 << 20, ..config() });
    let chat_req = chat(json!({}));
    let ollama_req = ollama_chat();
    for deep in [nested_arrays(100_000), nested_objects(100_000)] {
        // An unknown field, names the field.
        let r = refused_fast(&s.app, "/v1/chat/completions", with_raw(&chat_req, "x", &deep)).await;
        let e = r.error(StatusCode::BAD_REQUEST, Some("x"));
        assert!(e["message"].as_str().unwrap().contains(&MAX_JSON_DEPTH.to_string()), "{e}");
        let r = refused_fast(&s.app, "/api/chat", with_raw(&ollama_req, "x", &deep)).await;
        assert!(ollama_error(&r, StatusCode::BAD_REQUEST).contains("deeper"));
        // Inside fields that are parsed into trees (`content` parts, Ollama's `options`).
        let content = format!(r#"[{{"role":"user","content":{deep}}}]"#);
        refused_fast(&s.app, "/v1/chat/completions", with_raw(&chat_req, "messages", &content)).await;
        refused_fast(&s.app, "/api/chat", with_raw(&ollama_req, "options", &deep)).await;
        refused_fast(&s.app, "/v1/completions", with_raw(&completion(json!({})), "prompt", &deep)).await;
    }
    // Just under the limit is parsed as usual.
    let ok = with_raw(&chat_req, "x", &nested_arrays(MAX_JSON_DEPTH - 1));
    send(&s.app, post_raw("/v1/chat/completions", ok)).await.ok();
    // A flat array of a million small numbers where a message or its content goes.
    let flat = format!("[{}0]", "0,".repeat(999_999));
    refused_fast(&s.app, "/v1/chat/completions", with_raw(&chat_req, "messages", &flat)).await;
    refused_fast(&s.app, "/api/chat", with_raw(&ollama_req, "messages", &flat)).await;
    let content = format!(r#"[{{"role":"user","content":{flat}}}]"#);
    refused_fast(&s.app, "/v1/chat/completions", with_raw(&chat_req, "messages", &content)).await;
    refused_fast(&s.app, "/api/chat", with_raw(&ollama_req, "messages", &content)).await;
}
