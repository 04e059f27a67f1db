//! Helpers for the HTTP route tests: a tiny random model with a byte-level tokenizer and a
//! ChatML template, an [`AppState`] around it, and request/response plumbing for `oneshot`.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    http::{header, HeaderMap, Request, StatusCode},
    Router,
};
use flint_engine::{models::LoadOptions, EngineConfig, EngineHandle, KvCacheBudget, LoraSettings};
use flint_server::{
    api::{self, AppState, Served, ServerConfig},
    chat_template::ChatTemplate,
};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

pub const MODEL: &str = "tiny";
/// `max_position_embeddings` of the fixture.
pub const CONTEXT: usize = 256;

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A model directory (kept alive as long as the engine that reads it).
pub fn model_dir() -> TempDir {
    let fixture = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny/llama-gqa-tied"));
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), dir.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    flint_engine::tokenizer::testing::write_byte_level_tokenizer(dir.path()).unwrap();
    let cfg = json!({"chat_template": CHATML, "eos_token": "<|im_end|>"});
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    dir
}

pub fn served(dir: &Path) -> Served {
    served_with(dir, None)
}

/// [`served`] with LoRA on (`lora`) or off (`None`).
pub fn served_with(dir: &Path, lora: Option<LoraSettings>) -> Served {
    let mut cfg = EngineConfig::new(dir, LoadOptions { device: flint_engine::models::Device::Cpu, dtype: None, quantization: None });
    cfg.kv_cache = KvCacheBudget::Blocks(512);
    cfg.block_size = 4;
    cfg.lora = lora;
    let engine = EngineHandle::start(cfg).expect("the tiny model loads");
    let template = ChatTemplate::from_tokenizer_config(&engine.tokenizer().template_config()).unwrap();
    assert!(template.is_some());
    Served::new(engine, MODEL, template)
}

pub fn config() -> ServerConfig {
    ServerConfig {
        api_key: None,
        max_waiting_requests: 64,
        max_num_seqs: 8,
        max_body_bytes: 1 << 20,
        max_upload_bytes: 1 << 20,
        ..ServerConfig::default()
    }
}

/// A router over a loaded model; keep the [`Server`] alive for the test's duration.
pub struct Server {
    pub app: Router,
    pub state: Arc<AppState>,
    pub _dir: TempDir,
    /// `--lora-dir` of [`lora_server`].
    pub lora_dir: Option<TempDir>,
}

pub fn server_with(cfg: ServerConfig) -> Server {
    let dir = model_dir();
    let state = AppState::new(cfg);
    state.set_model(served(dir.path()));
    Server { app: api::router(state.clone()), state, _dir: dir, lora_dir: None }
}

/// The committed PEFT adapters for the tiny model, and their `reference.json`.
pub fn lora_fixtures() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/lora/llama-gqa-tied")).to_path_buf()
}

/// The fixture adapters' names.
pub const ADAPTERS: [&str; 3] = ["attn-r8", "all-r16-rslora", "mlp-r4"];

/// A directory holding copies of the fixture adapters (one subdirectory each).
pub fn adapter_dir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ADAPTERS {
        copy_adapter(&lora_fixtures().join(name), &dir.path().join(name));
    }
    dir
}

/// Copies an adapter directory's two files.
pub fn copy_adapter(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

/// A server with LoRA on (2 slots, rank <= 16) and `--lora-dir` holding the fixture adapters
/// (none loaded yet).
pub fn lora_server() -> Server {
    let lora = adapter_dir();
    let dir = model_dir();
    let state = AppState::new(ServerConfig { lora_dir: Some(lora.path().to_path_buf()), ..config() });
    state.set_model(served_with(dir.path(), Some(LoraSettings { max_loras: 2, max_lora_rank: 16 })));
    Server { app: api::router(state.clone()), state, _dir: dir, lora_dir: Some(lora) }
}

pub fn server() -> Server {
    server_with(config())
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The JSON body of a 200.
    pub fn ok(&self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{}", String::from_utf8_lossy(&self.body));
        self.json()
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn events(&self) -> Vec<String> {
        assert_eq!(self.status, StatusCode::OK, "{}", String::from_utf8_lossy(&self.body));
        assert!(self.header("content-type").unwrap().starts_with("text/event-stream"));
        self.text().lines().filter_map(|l| l.strip_prefix("data: ").map(str::to_owned)).collect()
    }

    /// The SSE chunks as JSON, checking that `[DONE]` comes last and only there.
    pub fn chunks(&self) -> Vec<Value> {
        let events = self.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
        let rest = &events[..events.len() - 1];
        rest.iter().map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}"))).collect()
    }

    /// Checks an OpenAI error body with this status and `param`; returns `error`.
    pub fn error(&self, status: StatusCode, param: Option<&str>) -> Value {
        assert_eq!(self.status, status, "{}", String::from_utf8_lossy(&self.body));
        let body = self.json();
        let obj = body.as_object().unwrap();
        assert_eq!(obj.len(), 1, "{body}");
        let e = &body["error"];
        let mut fields: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["code", "message", "param", "type"], "{body}");
        assert!(!e["message"].as_str().unwrap().is_empty());
        assert!(!e["type"].as_str().unwrap().is_empty());
        assert_eq!(e["param"].as_str(), param, "{body}");
        e.clone()
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Resp {
    let fut = async {
        let resp = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        Resp { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
    };
    tokio::time::timeout(Duration::from_secs(30), fut).await.expect("the response took over 30 s")
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

pub fn post_raw(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri).header(header::CONTENT_TYPE, "application/json").body(body.into()).unwrap()
}

pub fn post(uri: &str, body: &Value) -> Request<Body> {
    post_raw(uri, body.to_string())
}

/// `base` with `extra`'s fields set (a `null` in `extra` removes the field).
pub fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

/// A short greedy chat request plus `extra`.
pub fn chat(extra: Value) -> Value {
    let base = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 5, "ignore_eos": true, "temperature": 0});
    with(base, extra)
}

/// A short greedy completions request plus `extra`.
pub fn completion(extra: Value) -> Value {
    let base = json!({"model": MODEL, "prompt": "Once upon", "max_tokens": 5, "ignore_eos": true, "temperature": 0});
    with(base, extra)
}

pub async fn post_chat(app: &Router, extra: Value) -> Resp {
    send(app, post("/v1/chat/completions", &chat(extra))).await
}

pub async fn post_completion(app: &Router, extra: Value) -> Resp {
    send(app, post("/v1/completions", &completion(extra))).await
}

/// `usage` adds up; returns (prompt, completion) tokens.
pub fn check_usage(usage: &Value) -> (u64, u64) {
    let p = usage["prompt_tokens"].as_u64().unwrap();
    let c = usage["completion_tokens"].as_u64().unwrap();
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), p + c, "{usage}");
    (p, c)
}

/// A `flint serve` child process, killed when the test ends, however it ends.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Waits until `{base}/ready` answers 200; panics if the server exits first or is not
    /// ready within `secs` seconds.
    pub async fn wait_ready(&mut self, base: &str, secs: u64) {
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            assert!(self.0.try_wait().unwrap().is_none(), "flint serve exited early");
            if http.get(format!("{base}/ready")).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "flint serve was not ready in {secs} s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
