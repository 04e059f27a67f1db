//! LoRA adapters over HTTP (in process, via `oneshot`) on the tiny model with the committed
//! PEFT fixtures: vLLM's load/unload routes, `model` naming an adapter, greedy output equal to
//! peft's (tests/fixtures/lora/llama-gqa-tied/reference.json), and the errors.

mod common;

use axum::{
    http::{header, Request, StatusCode},
    Router,
};
use common::*;
use flint_engine::LoraSettings;
use flint_server::api::{self, AppState, ServerConfig};
use serde_json::{json, Value};

fn reference() -> Value {
    let text = std::fs::read_to_string(lora_fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

/// `(prompt_ids, output_ids)` of peft's greedy runs: `adapter`'s, or the base model's.
fn cases(adapter: Option<&str>) -> Vec<(Vec<u32>, Vec<u32>)> {
    let r = reference();
    let list = match adapter {
        Some(a) => r["adapters"][a]["greedy_cases"].clone(),
        None => r["base_greedy_cases"].clone(),
    };
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["max_new_tokens"], 12);
            (ids(&c["prompt_ids"]), ids(&c["output_ids"]))
        })
        .collect()
}

fn load_body(name: &str, path: &str) -> Value {
    json!({"lora_name": name, "lora_path": path})
}

async fn load(app: &Router, name: &str, path: &str) -> Resp {
    send(app, post("/v1/load_lora_adapter", &load_body(name, path))).await
}

async fn unload(app: &Router, name: &str) -> Resp {
    send(app, post("/v1/unload_lora_adapter", &json!({"lora_name": name}))).await
}

/// A 200 with vLLM's plain-text success line.
fn success(r: &Resp, name: &str, what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/plain"), "{:?}", r.headers);
    assert_eq!(r.text(), format!("Success: LoRA adapter '{name}' {what} successfully."));
}

/// A greedy 12-token completions request on `model` whose logprobs name the token ids.
fn greedy_request(model: &str, prompt: &[u32], extra: Value) -> Value {
    let base = json!({"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": true,
        "logprobs": 0, "return_tokens_as_token_ids": true});
    with(base, extra)
}

/// The token ids of a completions choice (or chunk choice), read from its logprobs.
fn token_ids(choice: &Value) -> Vec<u32> {
    choice["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().strip_prefix("token_id:").unwrap().parse().unwrap())
        .collect()
}

/// The greedy output ids of `prompt` on `model`, checking that the response names `model`.
async fn greedy(app: &Router, model: &str, prompt: &[u32]) -> Vec<u32> {
    let body = send(app, post("/v1/completions", &greedy_request(model, prompt, json!({})))).await.ok();
    assert_eq!(body["model"], model, "{body}");
    token_ids(&body["choices"][0])
}

async fn model_ids(app: &Router) -> Vec<String> {
    let list = send(app, get("/v1/models")).await.ok();
    list["data"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn adapters_load_list_and_match_peft() {
    let s = lora_server();
    success(&load(&s.app, "attn-r8", "attn-r8").await, "attn-r8", "added");
    // An absolute path inside --lora-dir works too; unknown fields (vLLM's lora_int_id) are ignored.
    let abs = s.lora_dir.as_ref().unwrap().path().join("all-r16-rslora");
    let body = json!({"lora_name": "rs", "lora_path": abs.to_str().unwrap(), "lora_int_id": 7});
    success(&send(&s.app, post("/v1/load_lora_adapter", &body)).await, "rs", "added");

    let list = send(&s.app, get("/v1/models")).await.ok();
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{list}");
    let base = &data[0];
    assert_eq!((base["id"].as_str(), base["parent"].clone()), (Some(MODEL), Value::Null), "{base}");
    assert_eq!(base["max_model_len"].as_u64(), Some(CONTEXT as u64));
    let root = std::fs::canonicalize(s.lora_dir.as_ref().unwrap().path()).unwrap();
    for (card, (name, dir)) in data[1..].iter().zip([("attn-r8", "attn-r8"), ("rs", "all-r16-rslora")]) {
        assert_eq!(card["id"], name, "{list}");
        assert_eq!(card["object"], "model");
        assert_eq!(card["parent"], MODEL);
        assert_eq!(card["owned_by"], base["owned_by"]);
        assert_eq!(card["root"].as_str().unwrap(), root.join(dir).to_str().unwrap());
        assert!(card["created"].as_i64().unwrap() > 0, "{card}");
        assert_eq!(&send(&s.app, get(&format!("/v1/models/{name}"))).await.ok(), card);
    }

    // Greedy through HTTP equals peft's greedy, per adapter and for the base model.
    for (model, adapter) in [("attn-r8", Some("attn-r8")), ("rs", Some("all-r16-rslora")), (MODEL, None)] {
        for (prompt, expected) in cases(adapter) {
            assert_eq!(greedy(&s.app, model, &prompt).await, expected, "{model} on {prompt:?}");
        }
    }

    // Several prompts and n > 1: every sample runs on the adapter.
    let (p0, e0) = cases(Some("attn-r8")).remove(0);
    let (p1, e1) = cases(Some("attn-r8")).remove(1);
    let req = greedy_request("attn-r8", &[], json!({"prompt": [p0, p1], "n": 2}));
    let body = send(&s.app, post("/v1/completions", &req)).await.ok();
    let got: Vec<Vec<u32>> = body["choices"].as_array().unwrap().iter().map(token_ids).collect();
    assert_eq!(got, [e0.clone(), e0.clone(), e1.clone(), e1]);

    // Streamed, the chunks name the adapter and carry the same tokens.
    let resp = send(&s.app, post("/v1/completions", &greedy_request("attn-r8", &p0, json!({"stream": true})))).await;
    let chunks = resp.chunks();
    assert!(chunks.iter().all(|c| c["model"] == "attn-r8"));
    let streamed: Vec<u32> = chunks.iter().flat_map(|c| token_ids(&c["choices"][0])).collect();
    assert_eq!(streamed, e0);

    // Chat on an adapter (n = 2, greedy): both choices are the adapter's answer, not the base
    // model's, under the adapter's name.
    let chat_ids = |b: &Value, i: usize| -> Vec<String> {
        let content = b["choices"][i]["logprobs"]["content"].as_array().unwrap();
        content.iter().map(|t| t["token"].as_str().unwrap().to_owned()).collect()
    };
    let extra = json!({"max_tokens": 8, "logprobs": true, "return_tokens_as_token_ids": true, "n": 2});
    let on_base = post_chat(&s.app, extra.clone()).await.ok();
    let on_adapter = post_chat(&s.app, with(extra, json!({"model": "attn-r8"}))).await.ok();
    assert_eq!(on_adapter["model"], "attn-r8");
    assert_eq!(on_base["model"], MODEL);
    assert_eq!(chat_ids(&on_adapter, 0), chat_ids(&on_adapter, 1));
    assert_eq!(chat_ids(&on_base, 0), chat_ids(&on_base, 1));
    assert_ne!(chat_ids(&on_adapter, 1), chat_ids(&on_base, 1));
}

#[tokio::test]
async fn base_and_adapters_in_flight_at_once() {
    let s = lora_server();
    for name in ADAPTERS {
        success(&load(&s.app, name, name).await, name, "added");
    }
    // Three adapters in two LoRA slots plus the base model, all at once, twice over.
    for round in 0..2 {
        let run = |model: &'static str, adapter: Option<&'static str>| {
            let s = &s;
            async move {
                let mut out = Vec::new();
                for (prompt, expected) in cases(adapter) {
                    out.push((greedy(&s.app, model, &prompt).await, expected));
                }
                out
            }
        };
        let (base, a, b, c) = tokio::join!(
            run(MODEL, None),
            run("attn-r8", Some("attn-r8")),
            run("all-r16-rslora", Some("all-r16-rslora")),
            run("mlp-r4", Some("mlp-r4")),
        );
        for (i, results) in [base, a, b, c].into_iter().enumerate() {
            for (got, expected) in results {
                assert_eq!(got, expected, "round {round}, stream {i}");
            }
        }
    }
}

#[tokio::test]
async fn unload_refuses_new_requests_and_lets_running_ones_finish() {
    let s = lora_server();
    success(&load(&s.app, "mlp", "mlp-r4").await, "mlp", "added");
    let (prompt, expected) = cases(Some("mlp-r4")).remove(0);

    // A stream accepted before the unload runs to the end on the adapter.
    let req = post("/v1/completions", &greedy_request("mlp", &prompt, json!({"stream": true})));
    let held = tower::ServiceExt::oneshot(s.app.clone(), req).await.unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    success(&unload(&s.app, "mlp").await, "mlp", "removed");
    let body = http_body_util::BodyExt::collect(held.into_body()).await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let streamed: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .flat_map(|d| token_ids(&serde_json::from_str::<Value>(d).unwrap()["choices"][0]))
        .collect();
    assert_eq!(streamed, expected);

    // Gone for new requests: 404 for `model`, and unloading again is a 404 too.
    let e = send(&s.app, post("/v1/completions", &greedy_request("mlp", &prompt, json!({})))).await;
    let e = e.error(StatusCode::NOT_FOUND, Some("model"));
    assert_eq!(e["code"], "model_not_found");
    post_chat(&s.app, json!({"model": "mlp"})).await.error(StatusCode::NOT_FOUND, Some("model"));
    send(&s.app, get("/v1/models/mlp")).await.error(StatusCode::NOT_FOUND, Some("model"));
    let e = unload(&s.app, "mlp").await.error(StatusCode::NOT_FOUND, Some("lora_name"));
    assert!(e["message"].as_str().unwrap().contains("mlp"), "{e}");
    assert_eq!(model_ids(&s.app).await, [MODEL]);

    // The name can be loaded again, and serves the same adapter.
    success(&load(&s.app, "mlp", "mlp-r4").await, "mlp", "added");
    assert_eq!(greedy(&s.app, "mlp", &prompt).await, expected);
}

#[tokio::test]
async fn load_errors_name_the_field_and_register_nothing() {
    let s = lora_server();
    let lora_dir = s.lora_dir.as_ref().unwrap().path().to_path_buf();
    success(&load(&s.app, "attn", "attn-r8").await, "attn", "added");
    let before = model_ids(&s.app).await;
    let bad = StatusCode::BAD_REQUEST;

    // Unknown model: 404 listing what is served.
    let e = post_completion(&s.app, json!({"model": "nope"})).await.error(StatusCode::NOT_FOUND, Some("model"));
    assert_eq!(e["code"], "model_not_found");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("nope") && msg.contains(MODEL) && msg.contains("attn"), "{msg}");
    post_chat(&s.app, json!({"model": "nope"})).await.error(StatusCode::NOT_FOUND, Some("model"));

    // Names: taken, empty, or the base model's.
    let e = load(&s.app, "attn", "mlp-r4").await.error(bad, Some("lora_name"));
    assert!(e["message"].as_str().unwrap().contains("already"), "{e}");
    load(&s.app, "", "mlp-r4").await.error(bad, Some("lora_name"));
    load(&s.app, MODEL, "mlp-r4").await.error(bad, Some("lora_name"));

    // Paths outside --lora-dir, however spelled, are refused before anything is read.
    let outside_abs = lora_fixtures().join("mlp-r4");
    let secret = tempfile::tempdir().unwrap();
    copy_adapter(&outside_abs, secret.path());
    let relative_escape = format!("../{}", secret.path().file_name().unwrap().to_str().unwrap());
    for path in [
        "../../etc",
        "/etc",
        "mlp-r4/../../x",
        outside_abs.to_str().unwrap(),
        secret.path().to_str().unwrap(),
        relative_escape.as_str(),
    ] {
        let e = load(&s.app, "evil", path).await.error(bad, Some("lora_path"));
        assert!(e["message"].as_str().unwrap().contains("outside the allowed directory (--lora-dir)"), "{path}: {e}");
    }
    // ... and so are symlinks inside it that lead out.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(secret.path(), lora_dir.join("link")).unwrap();
        load(&s.app, "evil", "link").await.error(bad, Some("lora_path"));
    }
    let e = load(&s.app, "evil", "missing").await.error(bad, Some("lora_path"));
    assert!(e["message"].as_str().unwrap().contains("missing"), "{e}");
    load(&s.app, "evil", "").await.error(bad, Some("lora_path"));

    // Broken adapters inside the directory: 400 naming the file or field at fault.
    copy_adapter(&lora_fixtures().join("attn-r8"), &lora_dir.join("garbage"));
    std::fs::write(lora_dir.join("garbage/adapter_model.safetensors"), b"not safetensors at all").unwrap();
    let e = load(&s.app, "garbage", "garbage").await.error(bad, Some("lora_path"));
    assert!(e["message"].as_str().unwrap().contains("adapter_model.safetensors"), "{e}");
    copy_adapter(&lora_fixtures().join("attn-r8"), &lora_dir.join("big"));
    let cfg_path = lora_dir.join("big/adapter_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["r"] = json!(64);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = load(&s.app, "big", "big").await.error(bad, Some("lora_path"));
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("adapter_config.json") && msg.contains("max-lora-rank"), "{msg}");
    std::fs::create_dir(lora_dir.join("empty")).unwrap();
    let e = load(&s.app, "empty", "empty").await.error(bad, Some("lora_path"));
    assert!(e["message"].as_str().unwrap().contains("adapter_config.json"), "{e}");

    // Bodies: malformed JSON, missing or mistyped fields.
    let raw = |uri: &str, body: &str| send(&s.app, post_raw(uri, body.to_owned()));
    raw("/v1/load_lora_adapter", "{\"lora_name\": \"a\", ").await.error(bad, None);
    raw("/v1/load_lora_adapter", "lora_name=a").await.error(bad, None);
    raw("/v1/load_lora_adapter", "[\"a\", \"b\"]").await.error(bad, None);
    raw("/v1/load_lora_adapter", r#"{"lora_path": "mlp-r4"}"#).await.error(bad, Some("lora_name"));
    raw("/v1/load_lora_adapter", r#"{"lora_name": "x"}"#).await.error(bad, Some("lora_path"));
    raw("/v1/load_lora_adapter", r#"{"lora_name": 3, "lora_path": "mlp-r4"}"#).await.error(bad, Some("lora_name"));
    raw("/v1/unload_lora_adapter", "{}").await.error(bad, Some("lora_name"));
    unload(&s.app, MODEL).await.error(bad, Some("lora_name"));

    // None of it registered anything.
    assert_eq!(model_ids(&s.app).await, before);
    send(&s.app, get("/v1/models/evil")).await.error(StatusCode::NOT_FOUND, Some("model"));
}

#[tokio::test]
async fn lora_off_or_without_a_directory() {
    // LoRA off: both routes are a 400 that says how to turn it on.
    let s = server();
    for r in [load(&s.app, "a", "attn-r8").await, unload(&s.app, "a").await] {
        let e = r.error(StatusCode::BAD_REQUEST, None);
        assert!(e["message"].as_str().unwrap().contains("--enable-lora"), "{e}");
    }
    assert_eq!(model_ids(&s.app).await, [MODEL]);

    // LoRA on without --lora-dir: adapters come from --lora (loaded at startup, as here)
    // alone; loading over HTTP is refused, pointing at --lora-dir.
    let dir = model_dir();
    let state = AppState::new(config());
    let served = served_with(dir.path(), Some(LoraSettings::default()));
    served.engine.load_adapter("attn", lora_fixtures().join("attn-r8")).await.unwrap();
    state.set_model(served);
    let app2 = api::router(state);
    let e = load(&app2, "mlp", "mlp-r4").await.error(StatusCode::BAD_REQUEST, Some("lora_path"));
    assert!(e["message"].as_str().unwrap().contains("--lora-dir"), "{e}");
    let (prompt, expected) = cases(Some("attn-r8")).remove(2);
    assert_eq!(greedy(&app2, "attn", &prompt).await, expected);
    success(&unload(&app2, "attn").await, "attn", "removed");
    assert_eq!(model_ids(&app2).await, [MODEL]);
}

#[tokio::test]
async fn lora_routes_need_the_key_and_are_documented() {
    let lora = adapter_dir();
    let dir = model_dir();
    let cfg = ServerConfig { api_key: Some("k".into()), lora_dir: Some(lora.path().to_path_buf()), ..config() };
    let state = AppState::new(cfg);
    state.set_model(served_with(dir.path(), Some(LoraSettings::default())));
    let app = api::router(state);
    send(&app, post("/v1/load_lora_adapter", &load_body("a", "attn-r8"))).await.error(StatusCode::UNAUTHORIZED, None);
    send(&app, post("/v1/unload_lora_adapter", &json!({"lora_name": "a"}))).await.error(StatusCode::UNAUTHORIZED, None);
    let authed = |uri: &str, body: Value| {
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, "Bearer k")
            .body(body.to_string().into())
            .unwrap()
    };
    let r = send(&app, authed("/v1/load_lora_adapter", load_body("a", "attn-r8"))).await;
    success(&r, "a", "added");

    let spec = send(&app, authed_get("/openapi.json")).await.ok();
    for path in ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"] {
        assert!(spec["paths"][path]["post"].is_object(), "{path} missing from the spec");
    }
    let schemas = &spec["components"]["schemas"];
    assert!(schemas["LoadLoraAdapterRequest"]["properties"]["lora_path"].is_object(), "{schemas}");
    assert!(schemas["UnloadLoraAdapterRequest"]["properties"]["lora_name"].is_object(), "{schemas}");
}

fn authed_get(uri: &str) -> Request<axum::body::Body> {
    Request::get(uri).header(header::AUTHORIZATION, "Bearer k").body(axum::body::Body::empty()).unwrap()
}

/// `flint serve` on the tiny model with `extra` flags, as users start it.
fn serve(model: &std::path::Path, port: u16, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flint"));
    cmd.args(["serve", "--served-model-name", MODEL, "--kv-cache-memory", "16MiB", "--port"])
        .arg(port.to_string())
        .arg("--model")
        .arg(model)
        .args(extra)
        .env_remove("FLINT_API_KEY");
    cmd
}

#[tokio::test]
async fn serve_loads_lora_flags_at_startup() {
    let model = model_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let fixtures = lora_fixtures();
    let abs = fixtures.join("mlp-r4");
    let mut child = common::Running(
        serve(model.path(), port, &["--lora", "a=attn-r8", "--lora-modules", &format!("m={}", abs.display())])
            .args(["--lora-dir", fixtures.to_str().unwrap(), "--max-loras", "2"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    child.wait_ready(&base, 60).await;
    let client = reqwest::Client::new();
    let models: Value = client.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [MODEL, "a", "m"], "{models}");
    for (name, adapter) in [("a", "attn-r8"), ("m", "mlp-r4")] {
        let (prompt, expected) = cases(Some(adapter)).remove(1);
        let req = greedy_request(name, &prompt, json!({}));
        let body: Value =
            client.post(format!("{base}/v1/completions")).json(&req).send().await.unwrap().json().await.unwrap();
        assert_eq!(token_ids(&body["choices"][0]), expected, "{body}");
    }
    // --lora-dir allows loading more at runtime.
    let r = client
        .post(format!("{base}/v1/load_lora_adapter"))
        .json(&load_body("rs", "all-r16-rslora"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    drop(child);
}

#[test]
fn serve_refuses_bad_lora_flags() {
    let model = model_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let fail = |extra: &[&str]| {
        let out = serve(model.path(), port, extra).output().unwrap();
        assert!(!out.status.success(), "{extra:?} started");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    // Flag syntax, before anything loads.
    let err = fail(&["--lora", "=/x"]);
    assert!(err.contains("--lora") && err.contains("NAME=PATH"), "{err}");
    let err = fail(&["--lora-dir", "/no/such/adapters"]);
    assert!(err.contains("--lora-dir") && err.contains("/no/such/adapters"), "{err}");
    let err = fail(&["--lora", &format!("{MODEL}=/x")]);
    assert!(err.contains("base model"), "{err}");
    // An adapter that does not load stops startup, naming it.
    let err = fail(&["--lora", "broken=/no/such/adapter"]);
    assert!(err.contains("`broken`") && err.contains("/no/such/adapter"), "{err}");
    let big = tempfile::tempdir().unwrap();
    copy_adapter(&lora_fixtures().join("all-r16-rslora"), big.path());
    let err = fail(&["--lora", &format!("rs={}", big.path().display()), "--max-lora-rank", "8"]);
    assert!(err.contains("`rs`") && err.contains("max-lora-rank"), "{err}");
}
