//! The Ollama routes end to end (in process, via `oneshot`) on the tiny random model with a
//! byte-level tokenizer (one token per byte) and a ChatML template.

mod common;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use common::*;
use flint_server::api::ServerConfig;
use serde_json::{json, Value};

/// A short greedy raw generate request plus `extra`.
fn generate(extra: Value) -> Value {
    let base = json!({"model": MODEL, "prompt": "Once upon", "raw": true, "stream": false,
        "options": {"temperature": 0, "num_predict": 8}});
    with(base, extra)
}

/// A short greedy chat request plus `extra`.
fn ollama_chat(extra: Value) -> Value {
    let base = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "stream": false,
        "options": {"temperature": 0, "num_predict": 6}});
    with(base, extra)
}

/// Checks an Ollama error: this status and a body that is exactly `{"error": "<message>"}`;
/// returns the message.
fn ollama_error(r: &Resp, status: StatusCode) -> String {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    let obj = body.as_object().unwrap();
    assert_eq!(obj.len(), 1, "{body}");
    let msg = body["error"].as_str().unwrap_or_else(|| panic!("no error message: {body}"));
    assert!(!msg.is_empty());
    msg.to_owned()
}

/// The NDJSON lines of a streamed answer: each `\n`-terminated, no blank lines.
fn ndjson(r: &Resp) -> Vec<Value> {
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let text = r.text();
    assert!(text.ends_with('\n'), "{text:?}");
    text.split_terminator('\n')
        .map(|l| {
            assert!(!l.trim().is_empty(), "blank line in {text:?}");
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .collect()
}

/// The final fields every finished answer carries.
fn check_final(v: &Value) {
    assert_eq!(v["done"], true, "{v}");
    assert!(matches!(v["done_reason"].as_str(), Some("stop" | "length")), "{v}");
    for k in
        ["total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"]
    {
        assert!(v[k].is_u64(), "{k} in {v}");
    }
    let created = v["created_at"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(created).is_ok(), "{created}");
    assert!(v["total_duration"].as_u64() >= v["eval_duration"].as_u64(), "{v}");
}

#[tokio::test]
async fn generate_matches_completions() {
    let s = server();
    let openai = post_completion(&s.app, json!({"max_tokens": 8, "ignore_eos": null})).await.ok();
    let expected = openai["choices"][0]["text"].as_str().unwrap();
    let (prompt_tokens, completion_tokens) = check_usage(&openai["usage"]);

    let body = send(&s.app, post("/api/generate", &generate(json!({})))).await.ok();
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["response"], expected);
    check_final(&body);
    assert_eq!(body["done_reason"], openai["choices"][0]["finish_reason"]);
    assert_eq!(body["prompt_eval_count"].as_u64(), Some(prompt_tokens));
    assert_eq!(body["eval_count"].as_u64(), Some(completion_tokens));
    // `context`: the prompt's tokens (one per byte) and then the answer's.
    let context = body["context"].as_array().unwrap();
    assert_eq!(context.len() as u64, prompt_tokens + completion_tokens);
    let prompt: Vec<u64> = "Once upon".bytes().map(u64::from).collect();
    assert_eq!(context[..prompt.len()].iter().map(|v| v.as_u64().unwrap()).collect::<Vec<_>>(), prompt);
    assert!(body.get("message").is_none());
}

#[tokio::test]
async fn generate_stream_is_ndjson() {
    let s = server();
    let whole = send(&s.app, post("/api/generate", &generate(json!({})))).await.ok();
    // `stream` defaults to true.
    let r = send(&s.app, post("/api/generate", &generate(json!({"stream": null})))).await;
    let lines = ndjson(&r);
    let (last, deltas) = lines.split_last().unwrap();
    assert!(!deltas.is_empty());
    for d in deltas {
        assert_eq!(d["done"], false, "{d}");
        assert_eq!(d["model"], MODEL);
        assert!(d["response"].is_string() && d.get("done_reason").is_none(), "{d}");
    }
    let text: String = deltas.iter().map(|d| d["response"].as_str().unwrap()).collect();
    assert_eq!(text, whole["response"].as_str().unwrap());
    check_final(last);
    assert_eq!(last["response"], "");
    assert_eq!(last["done_reason"], whole["done_reason"]);
    assert_eq!(last["eval_count"], whole["eval_count"]);
    assert_eq!(last["context"], whole["context"]);
    // Every output token is counted, and follows the prompt's in `context`.
    let context = last["context"].as_array().unwrap().len();
    assert_eq!(last["eval_count"].as_u64(), Some((context - "Once upon".len()) as u64));
    assert_eq!(last["eval_count"], 8, "the random model runs to num_predict");
}

#[tokio::test]
async fn logprobs_per_token() {
    let s = server();
    let extra = json!({"logprobs": true, "top_logprobs": 2});
    let body = send(&s.app, post("/api/generate", &generate(extra.clone()))).await.ok();
    let lps = body["logprobs"].as_array().unwrap();
    assert_eq!(lps.len() as u64, body["eval_count"].as_u64().unwrap());
    for lp in lps {
        assert!(lp["token"].is_string() && lp["logprob"].as_f64().unwrap() <= 0.0 && lp["bytes"].is_array(), "{lp}");
        assert_eq!(lp["top_logprobs"].as_array().unwrap().len(), 2, "{lp}");
    }
    let lines = ndjson(&send(&s.app, post("/api/generate", &generate(with(extra, json!({"stream": true}))))).await);
    let streamed: usize = lines.iter().filter_map(|l| l["logprobs"].as_array()).map(Vec::len).sum();
    assert_eq!(streamed, lps.len());
    let plain = send(&s.app, post("/api/generate", &generate(json!({})))).await.ok();
    assert!(plain.get("logprobs").is_none(), "only when asked: {plain}");
    let r = send(&s.app, post("/api/generate", &generate(json!({"logprobs": true, "top_logprobs": 21})))).await;
    assert!(ollama_error(&r, StatusCode::BAD_REQUEST).contains("top_logprobs"));
}

#[tokio::test]
async fn generate_templated_and_context() {
    let s = server();
    // Not raw: system + prompt go through the chat template, as /v1/chat/completions renders.
    let openai = post_chat(
        &s.app,
        json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Once upon"}],
            "max_tokens": 8, "ignore_eos": null}),
    )
    .await
    .ok();
    let body = send(&s.app, post("/api/generate", &generate(json!({"raw": null, "system": "Be brief."})))).await.ok();
    assert_eq!(body["response"], openai["choices"][0]["message"]["content"]);
    assert_eq!(body["prompt_eval_count"], openai["usage"]["prompt_tokens"]);

    // `context` continues an earlier answer: its ids come first.
    let first = send(&s.app, post("/api/generate", &generate(json!({})))).await.ok();
    let ctx = first["context"].clone();
    let next = send(&s.app, post("/api/generate", &generate(json!({"context": ctx, "prompt": "!"})))).await.ok();
    let n = first["context"].as_array().unwrap().len() as u64;
    assert_eq!(next["prompt_eval_count"].as_u64(), Some(n + 1));
    let r = send(&s.app, post("/api/generate", &generate(json!({"context": [1, 99999999]})))).await;
    assert!(ollama_error(&r, StatusCode::BAD_REQUEST).contains("context[1]"));
}

#[tokio::test]
async fn chat_stream_and_not() {
    let s = server();
    let openai = post_chat(&s.app, json!({"max_tokens": 6, "ignore_eos": null})).await.ok();
    let expected = openai["choices"][0]["message"]["content"].as_str().unwrap();

    let body = send(&s.app, post("/api/chat", &ollama_chat(json!({})))).await.ok();
    assert_eq!(body["message"], json!({"role": "assistant", "content": expected}));
    check_final(&body);
    assert!(body.get("context").is_none() && body.get("response").is_none(), "{body}");
    assert_eq!(body["prompt_eval_count"], openai["usage"]["prompt_tokens"]);

    let lines = ndjson(&send(&s.app, post("/api/chat", &ollama_chat(json!({"stream": true})))).await);
    let (last, deltas) = lines.split_last().unwrap();
    assert!(deltas.iter().all(|d| d["done"] == false && d["message"]["role"] == "assistant"));
    let text: String = deltas.iter().map(|d| d["message"]["content"].as_str().unwrap()).collect();
    assert_eq!(text, expected);
    check_final(last);
    assert_eq!(last["message"], json!({"role": "assistant", "content": ""}));
    assert_eq!(last["eval_count"], body["eval_count"]);
}

#[tokio::test]
async fn names_with_latest_and_unknown_models() {
    let s = server();
    let plain = send(&s.app, post("/api/generate", &generate(json!({})))).await.ok();
    let tagged = send(&s.app, post("/api/generate", &generate(json!({"model": "tiny:latest"})))).await.ok();
    assert_eq!(tagged["model"], "tiny:latest", "the name is echoed as sent");
    assert_eq!(tagged["response"], plain["response"]);
    let chat = send(&s.app, post("/api/chat", &ollama_chat(json!({"model": "tiny:latest"})))).await.ok();
    assert_eq!(chat["model"], "tiny:latest");

    for (uri, body) in [
        ("/api/generate", generate(json!({"model": "llama3"}))),
        ("/api/chat", ollama_chat(json!({"model": "tiny:7b"}))),
        ("/api/show", json!({"model": "nope"})),
    ] {
        let msg = ollama_error(&send(&s.app, post(uri, &body)).await, StatusCode::NOT_FOUND);
        assert!(msg.contains("not found"), "{uri}: {msg}");
    }
}

#[tokio::test]
async fn bad_requests_are_400_naming_the_field() {
    let s = server();
    let cases = [
        (generate(json!({"options": {"temperature": "hot"}})), "options.temperature"),
        (generate(json!({"options": {"num_predict": "many"}})), "options.num_predict"),
        (generate(json!({"options": {"stop": 3}})), "options.stop"),
        (generate(json!({"options": [1]})), "options"),
        (generate(json!({"format": "json"})), "format"),
        (generate(json!({"format": {"type": "object"}})), "format"),
        (generate(json!({"think": true})), "think"),
        (generate(json!({"suffix": "end"})), "suffix"),
        (generate(json!({"template": "{{ .Prompt }}"})), "template"),
        (generate(json!({"images": ["aGk="]})), "images"),
        (generate(json!({"keep_alive": "5 minutes"})), "keep_alive"),
        (generate(json!({"prompt": 5})), "prompt"),
        (generate(json!({"model": null})), "model"),
        (
            ollama_chat(json!({"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]})),
            "messages[0].images",
        ),
        (ollama_chat(json!({"tools": [{"type": "function"}]})), "tools"),
        (ollama_chat(json!({"format": "json"})), "format"),
    ];
    for (body, field) in cases {
        let uri = if body.get("messages").is_some() { "/api/chat" } else { "/api/generate" };
        let msg = ollama_error(&send(&s.app, post(uri, &body)).await, StatusCode::BAD_REQUEST);
        assert!(msg.contains(field), "{field}: {msg}");
    }
    let r = send(&s.app, post_raw("/api/generate", "{\"model\": ")).await;
    ollama_error(&r, StatusCode::BAD_REQUEST);
    // Unknown options and fields are ignored, as Ollama ignores them; empty values too.
    let ok = generate(json!({"options": {"temperature": 0, "num_predict": 2, "mirostat": 1, "made_up": true},
        "format": "", "think": false, "images": [], "whatever": 1}));
    assert_eq!(send(&s.app, post("/api/generate", &ok)).await.ok()["eval_count"], 2);
    // Range errors come from the sampling checks, still in Ollama's shape.
    let r = send(&s.app, post("/api/generate", &generate(json!({"options": {"top_p": 3}})))).await;
    assert!(ollama_error(&r, StatusCode::BAD_REQUEST).contains("top_p"));
}

#[tokio::test]
async fn empty_prompt_loads_and_keep_alive() {
    let s = server();
    let body = send(&s.app, post("/api/generate", &json!({"model": MODEL}))).await.ok();
    assert_eq!(body["done"], true);
    assert_eq!(body["done_reason"], "load");
    assert_eq!(body["response"], "");
    let body = send(&s.app, post("/api/chat", &json!({"model": MODEL, "messages": []}))).await.ok();
    assert_eq!(body["done_reason"], "load");
    assert_eq!(body["message"], json!({"role": "assistant", "content": ""}));

    // A keep-alive is applied to the model; `ps` reports when it expires.
    let body = generate(json!({"keep_alive": "10m"}));
    send(&s.app, post("/api/generate", &body)).await.ok();
    let ps = send(&s.app, get("/api/ps")).await.ok();
    let expires = ps["models"][0]["expires_at"].as_str().unwrap();
    let left = chrono::DateTime::parse_from_rfc3339(expires).unwrap().signed_duration_since(chrono::Utc::now());
    assert!(left.num_seconds() > 500 && left.num_seconds() <= 600, "{expires}");

    // An empty prompt with keep_alive 0 unloads it.
    let body = send(&s.app, post("/api/generate", &json!({"model": MODEL, "keep_alive": 0}))).await.ok();
    assert_eq!(body["done_reason"], "unload");
    assert_eq!(send(&s.app, get("/api/ps")).await.ok()["models"], json!([]));
    let r = send(&s.app, post("/api/generate", &generate(json!({})))).await;
    ollama_error(&r, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn root_version_tags_show_ps() {
    let s = server();
    let r = send(&s.app, get("/")).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "Ollama is running"));
    let head = Request::builder().method(Method::HEAD).uri("/").body(Body::empty()).unwrap();
    let r = send(&s.app, head).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    assert_eq!(send(&s.app, get("/api/version")).await.ok(), json!({"version": "0.6.0"}));
    let head = Request::builder().method(Method::HEAD).uri("/api/tags").body(Body::empty()).unwrap();
    assert_eq!(send(&s.app, head).await.status, StatusCode::OK);

    let tags = send(&s.app, get("/api/tags")).await.ok();
    let models = tags["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{tags}");
    let m = &models[0];
    assert_eq!(m["name"], "tiny:latest");
    assert_eq!(m["model"], "tiny:latest");
    assert!(m["size"].as_u64().unwrap() > 0);
    let digest = m["digest"].as_str().unwrap();
    assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()), "{digest}");
    assert!(chrono::DateTime::parse_from_rfc3339(m["modified_at"].as_str().unwrap()).is_ok());
    let d = &m["details"];
    assert_eq!(d["format"], "safetensors");
    assert_eq!(d["family"], "llama");
    assert_eq!(d["families"], json!(["llama"]));
    assert_eq!(d["quantization_level"], "F32");
    assert!(!d["parameter_size"].as_str().unwrap().is_empty());
    assert_eq!(send(&s.app, get("/api/tags")).await.ok(), tags, "stable across calls");

    // `model`, or the legacy `name`; `:latest` is the same model.
    for body in [json!({"model": MODEL}), json!({"name": "tiny:latest"})] {
        let show = send(&s.app, post("/api/show", &body)).await.ok();
        assert_eq!(show["details"], m["details"]);
        assert_eq!(show["capabilities"], json!(["completion"]));
        let info = &show["model_info"];
        assert_eq!(info["general.architecture"], "llama");
        assert_eq!(info["llama.context_length"].as_u64(), Some(CONTEXT as u64));
        for k in [
            "general.parameter_count",
            "llama.embedding_length",
            "llama.block_count",
            "llama.attention.head_count",
            "llama.attention.head_count_kv",
        ] {
            assert!(info[k].as_u64().unwrap() > 0, "{k}: {info}");
        }
        assert!(show["template"].as_str().unwrap().contains("<|im_start|>"));
        assert!(show["modelfile"].as_str().unwrap().contains("FROM "));
        assert!(show["parameters"].as_str().unwrap().contains("num_ctx"));
        assert!(show["modified_at"].is_string());
    }
    let r = send(&s.app, post("/api/show", &json!({}))).await;
    ollama_error(&r, StatusCode::BAD_REQUEST);

    let ps = send(&s.app, get("/api/ps")).await.ok();
    let p = &ps["models"][0];
    assert_eq!(p["name"], "tiny:latest");
    assert_eq!(p["digest"], m["digest"]);
    assert!(p["size"].as_u64() > m["size"].as_u64(), "weights plus KV cache: {p}");
    assert_eq!(p["size_vram"], 0);
    assert_eq!(p["context_length"].as_u64(), Some(CONTEXT as u64));
    let expires = chrono::DateTime::parse_from_rfc3339(p["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires.timestamp() > chrono::Utc::now().timestamp() + 100 * 365 * 86400, "never: {p}");
}

#[tokio::test]
async fn api_key_applies_and_errors_keep_ollama_shape() {
    let s = server_with(ServerConfig { api_key: Some("k".into()), ..config() });
    let r = send(&s.app, post("/api/generate", &generate(json!({})))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Ollama's clients read `error` as a message string.
    assert!(r.json()["error"].as_str().unwrap().contains("API key"), "{}", r.text());
    let r = send(&s.app, get("/api/nothing")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Clients probe `GET /` without a key.
    assert_eq!(send(&s.app, get("/")).await.text(), "Ollama is running");
    // The OpenAI routes keep OpenAI's shape.
    send(&s.app, get("/v1/models")).await.error(StatusCode::UNAUTHORIZED, None);
    let req = Request::post("/api/generate")
        .header("authorization", "Bearer k")
        .header("content-type", "application/json")
        .body(Body::from(generate(json!({})).to_string()))
        .unwrap();
    assert_eq!(send(&s.app, req).await.status, StatusCode::OK);
}
