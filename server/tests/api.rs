//! The HTTP routes end to end (in process, via `oneshot`) on a tiny random model with a
//! byte-level tokenizer (one token per byte) and a ChatML template.

mod common;

use std::time::{Duration, Instant};

use axum::http::{Request, StatusCode};
use common::*;
use flint_server::api::{AppState, ServerConfig};
use serde_json::{json, Value};

fn choices(body: &Value) -> &Vec<Value> {
    body["choices"].as_array().unwrap()
}

/// Per choice index: the concatenated streamed text and the finish reason, checking that
/// `finish_reason` is set exactly once per choice, on its last chunk. `text` picks the text.
fn collect_stream(chunks: &[Value], text: impl Fn(&Value) -> Option<&str>) -> Vec<(String, String)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for c in chunks {
        for ch in choices(c) {
            let i = ch["index"].as_u64().unwrap() as usize;
            if out.len() <= i {
                out.resize(i + 1, (String::new(), None));
            }
            assert!(out[i].1.is_none(), "choice {i} has output after its finish_reason: {c}");
            out[i].0.push_str(text(ch).unwrap_or(""));
            if let Some(f) = ch["finish_reason"].as_str() {
                out[i].1 = Some(f.to_owned());
            }
        }
    }
    out.into_iter().map(|(t, f)| (t, f.expect("every choice finishes"))).collect()
}

#[tokio::test]
async fn chat_completion() {
    let s = server();
    let body = post_chat(&s.app, json!({})).await.ok();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"), "{body}");
    assert_eq!(body["model"], MODEL);
    assert!(body["created"].as_i64().unwrap() > 0);
    let c = &choices(&body)[0];
    assert_eq!(choices(&body).len(), 1);
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["finish_reason"], "length");
    assert!(c["logprobs"].is_null());
    let (prompt, completion) = check_usage(&body["usage"]);
    // The byte tokenizer: one token per byte of the rendered ChatML prompt.
    assert_eq!(prompt as usize, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n".len());
    assert_eq!(completion, 5);

    // Greedy is deterministic; `max_completion_tokens` wins over `max_tokens`.
    let again = post_chat(&s.app, json!({})).await.ok();
    assert_eq!(again["choices"][0]["message"]["content"], c["message"]["content"]);
    assert_ne!(again["id"], body["id"]);
    let longer = post_chat(&s.app, json!({"max_completion_tokens": 7})).await.ok();
    assert_eq!(check_usage(&longer["usage"]).1, 7);
}

#[tokio::test]
async fn chat_stream_matches_the_non_streamed_answer() {
    let s = server();
    let full = post_chat(&s.app, json!({"max_tokens": 12})).await.ok();
    let expected = full["choices"][0]["message"]["content"].as_str().unwrap();

    let resp = post_chat(&s.app, json!({"max_tokens": 12, "stream": true})).await;
    let chunks = resp.chunks();
    let first = &chunks[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert!(first["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["id"] == first["id"] && c["usage"].is_null()), "no usage unless asked");
    assert!(chunks[1..].iter().all(|c| c["choices"][0]["delta"].get("role").is_none()));
    let streamed = collect_stream(&chunks, |ch| ch["delta"]["content"].as_str());
    assert_eq!(streamed, vec![(expected.to_owned(), "length".to_owned())]);
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string(), "finish is the last chunk");

    // With include_usage: one more chunk, with no choices and the usage.
    let usage_on = json!({"max_tokens": 12, "stream": true, "stream_options": {"include_usage": true}});
    let resp = post_chat(&s.app, usage_on).await;
    let chunks = resp.chunks();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(check_usage(&last["usage"]), check_usage(&full["usage"]));
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()));
    assert_eq!(collect_stream(&chunks[..chunks.len() - 1], |ch| ch["delta"]["content"].as_str())[0].0, expected);
}

#[tokio::test]
async fn chat_n_logprobs_and_stop() {
    let s = server();
    // n = 2, sampled, streamed and not.
    let body = post_chat(&s.app, json!({"n": 2, "temperature": 1.0, "seed": 7})).await.ok();
    let idx: Vec<u64> = choices(&body).iter().map(|c| c["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, [0, 1]);
    assert!(choices(&body).iter().all(|c| c["finish_reason"] == "length" && c["message"]["role"] == "assistant"));
    assert_eq!(check_usage(&body["usage"]).1, 10);
    let chunks = post_chat(&s.app, json!({"n": 2, "stream": true, "temperature": 1.0})).await.chunks();
    let roles: Vec<&Value> = chunks.iter().filter(|c| c["choices"][0]["delta"]["role"] == "assistant").collect();
    assert_eq!(roles.len(), 2);
    assert_eq!(collect_stream(&chunks, |ch| ch["delta"]["content"].as_str()).len(), 2);

    // logprobs with 3 alternatives per token, streamed and not.
    let body = post_chat(&s.app, json!({"logprobs": true, "top_logprobs": 3})).await.ok();
    let content = body["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 5);
    for t in content {
        assert!(t["token"].is_string() && t["logprob"].as_f64().unwrap() <= 0.0 && t["bytes"].is_array(), "{t}");
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{t}");
        assert!(top.iter().all(|a| a["token"].is_string() && a["logprob"].is_number() && a["bytes"].is_array()));
        assert!(top[0]["logprob"].as_f64() >= top[2]["logprob"].as_f64(), "most likely first: {t}");
    }
    let chunks = post_chat(&s.app, json!({"logprobs": true, "top_logprobs": 2, "stream": true})).await.chunks();
    let streamed: usize =
        chunks[1..].iter().map(|c| c["choices"][0]["logprobs"]["content"].as_array().unwrap().len()).sum();
    assert_eq!(streamed, 5);
    let plain = post_chat(&s.app, json!({"logprobs": true})).await.ok();
    let content = plain["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(content.iter().all(|t| t["top_logprobs"] == json!([])));

    // A stop string taken from the greedy answer cuts the text just before it.
    let full = post_chat(&s.app, json!({"max_tokens": 24})).await.ok();
    let text = full["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    let stop = text.chars().skip(1).find(|c| c.is_ascii()).expect("an ASCII character in the answer").to_string();
    let cut = &text[..text.find(&stop).unwrap()];
    for stream in [false, true] {
        let resp = post_chat(&s.app, json!({"max_tokens": 24, "stop": [stop], "stream": stream})).await;
        let (got, finish) = if stream {
            collect_stream(&resp.chunks(), |ch| ch["delta"]["content"].as_str()).remove(0)
        } else {
            let b = resp.ok();
            assert_eq!(b["choices"][0]["stop_reason"], json!(stop));
            (b["choices"][0]["message"]["content"].as_str().unwrap().to_owned(), "stop".to_owned())
        };
        assert_eq!((got.as_str(), finish.as_str()), (cut, "stop"), "stop {stop:?} in {text:?}");
    }
}

#[tokio::test]
async fn completions_prompt_forms() {
    let s = server();
    let body = post_completion(&s.app, json!({})).await.ok();
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(choices(&body).len(), 1);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(check_usage(&body["usage"]), ("Once upon".len() as u64, 5));
    let text = body["choices"][0]["text"].as_str().unwrap();

    // The same prompt as token ids gives the same greedy text.
    let ids: Vec<u8> = "Once upon".bytes().collect();
    let by_ids = post_completion(&s.app, json!({"prompt": ids})).await.ok();
    assert_eq!(by_ids["choices"][0]["text"], text);

    // prompts × n choices; choice i * n + j is sample j of prompt i.
    let body = post_completion(&s.app, json!({"prompt": ["ab", "Once upon"], "n": 2})).await.ok();
    let idx: Vec<u64> = choices(&body).iter().map(|c| c["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, [0, 1, 2, 3]);
    assert_eq!(body["choices"][2]["text"], text);
    assert_eq!(body["choices"][3]["text"], text);
    assert_eq!(body["choices"][0]["text"], body["choices"][1]["text"]);
    assert_eq!(check_usage(&body["usage"]), (2 + 9, 20));

    let body = post_completion(&s.app, json!({"prompt": [[1, 2], [3, 4, 5]]})).await.ok();
    assert_eq!(choices(&body).len(), 2);
    assert_eq!(check_usage(&body["usage"]), (5, 10));

    // echo prepends the prompt.
    let body = post_completion(&s.app, json!({"echo": true})).await.ok();
    assert_eq!(body["choices"][0]["text"], format!("Once upon{text}"));
    let body = post_completion(&s.app, json!({"echo": true, "prompt": [72, 105]})).await.ok();
    assert!(body["choices"][0]["text"].as_str().unwrap().starts_with("Hi"));
    let chunks = post_completion(&s.app, json!({"echo": true, "stream": true})).await.chunks();
    assert_eq!(collect_stream(&chunks, |c| c["text"].as_str())[0].0, format!("Once upon{text}"));
}

#[tokio::test]
async fn completions_stream_and_logprobs() {
    let s = server();
    let full = post_completion(&s.app, json!({"prompt": ["ab", "cd"], "max_tokens": 10})).await.ok();
    let resp = post_completion(&s.app, json!({"prompt": ["ab", "cd"], "max_tokens": 10, "stream": true,
        "stream_options": {"include_usage": true}}))
    .await;
    let chunks = resp.chunks();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion" && c["id"] == chunks[0]["id"]));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(check_usage(&last["usage"]), check_usage(&full["usage"]));
    let streamed = collect_stream(&chunks[..chunks.len() - 1], |c| c["text"].as_str());
    let expected: Vec<(String, String)> =
        choices(&full).iter().map(|c| (c["text"].as_str().unwrap().to_owned(), "length".to_owned())).collect();
    assert_eq!(streamed, expected);

    // logprobs: parallel arrays, one entry per generated token.
    let body = post_completion(&s.app, json!({"logprobs": 3, "max_tokens": 8})).await.ok();
    let lp = &body["choices"][0]["logprobs"];
    let len = |k: &str| lp[k].as_array().unwrap().len();
    assert_eq!([len("tokens"), len("token_logprobs"), len("top_logprobs"), len("text_offset")], [8; 4], "{lp}");
    assert_eq!(lp["text_offset"][0], 0);
    let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    for top in lp["top_logprobs"].as_array().unwrap() {
        let top = top.as_object().unwrap();
        // Keyed by token text: byte tokens that are not UTF-8 on their own all read "\u{FFFD}".
        assert!((1..=3).contains(&top.len()), "{top:?}");
        assert!(top.values().all(|v| v.as_f64().unwrap() <= 0.0));
    }
    // vLLM's return_tokens_as_token_ids: every alternative keeps its own key.
    let body = post_completion(&s.app, json!({"logprobs": 3, "max_tokens": 4, "return_tokens_as_token_ids": true}))
        .await
        .ok();
    let lp = &body["choices"][0]["logprobs"];
    for (tok, top) in lp["tokens"].as_array().unwrap().iter().zip(lp["top_logprobs"].as_array().unwrap()) {
        let id: u32 = tok.as_str().unwrap().strip_prefix("token_id:").unwrap().parse().unwrap();
        assert!(id < 256);
        assert_eq!(top.as_object().unwrap().len(), 3, "{top}");
        assert!(top.as_object().unwrap().contains_key(tok.as_str().unwrap()), "greedy picks the top token");
    }
    let chunks = post_completion(&s.app, json!({"logprobs": 0, "max_tokens": 8, "stream": true})).await.chunks();
    let n: usize = chunks.iter().map(|c| c["choices"][0]["logprobs"]["tokens"].as_array().unwrap().len()).sum();
    assert_eq!(n, 8);
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let s = server();
    let chat_raw = |body: &str| send(&s.app, post_raw("/v1/chat/completions", body.to_owned()));
    chat_raw("{\"model\": \"tiny\", ").await.error(StatusCode::BAD_REQUEST, None);
    chat_raw("").await.error(StatusCode::BAD_REQUEST, None);
    assert_eq!(chat_raw("[1, 2]").await.status, StatusCode::BAD_REQUEST);

    let bad = StatusCode::BAD_REQUEST;
    let cases: [(Value, &str); 9] = [
        (json!({"temperature": "hot"}), "temperature"),
        (json!({"top_p": 3}), "top_p"),
        (json!({"max_tokens": -1}), "max_tokens"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"n": -2}), "n"),
        (json!({"messages": []}), "messages"),
        (json!({"messages": [{"role": 1, "content": "hi"}]}), "messages[0].role"),
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (json!({"logprobs": true, "top_logprobs": 21}), "top_logprobs"),
    ];
    for (extra, param) in cases {
        post_chat(&s.app, extra).await.error(bad, Some(param));
    }
    // A missing required field is a 400 too.
    let e = send(&s.app, post("/v1/chat/completions", &chat(json!({"messages": null})))).await;
    assert_eq!(e.status, bad);
    assert!(e.json()["error"]["message"].as_str().unwrap().contains("messages"), "{}", e.text());
    // An absent required field is named; a JSON array is not a request.
    let e = send(&s.app, post("/v1/chat/completions", &json!({"model": "tiny"}))).await;
    e.error(bad, Some("messages"));
    let e = send(&s.app, post("/v1/chat/completions", &json!(["tiny", [{"role": "user", "content": "hi"}]]))).await;
    e.error(bad, None);
    // The prompt plus max_tokens must fit in the 256-token context.
    let long = "x".repeat(CONTEXT - 10);
    post_completion(&s.app, json!({"prompt": long, "max_tokens": 11})).await.error(bad, Some("max_tokens"));
    post_completion(&s.app, json!({"prompt": long, "max_tokens": 10})).await.ok();
    post_chat(&s.app, json!({"max_tokens": CONTEXT})).await.error(bad, Some("max_tokens"));

    let cases: [(Value, &str); 7] = [
        (json!({"prompt": [1, 300]}), "prompt"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": [[1], [-1]]}), "prompt[1]"),
        (json!({"logprobs": 21}), "logprobs"),
        (json!({"echo": true, "logprobs": 1}), "echo"),
        (json!({"logit_bias": {"abc": 1}}), "logit_bias"),
    ];
    for (extra, param) in cases {
        post_completion(&s.app, extra).await.error(bad, Some(param));
    }

    // Unknown model: 404 naming `model`.
    let e = post_chat(&s.app, json!({"model": "gpt-4"})).await.error(StatusCode::NOT_FOUND, Some("model"));
    assert_eq!(e["code"], "model_not_found");
    let e = post_completion(&s.app, json!({"model": "gpt-4"})).await.error(StatusCode::NOT_FOUND, Some("model"));
    assert_eq!(e["code"], "model_not_found");
    // Unknown route and wrong method.
    send(&s.app, get("/v1/nothing")).await.error(StatusCode::NOT_FOUND, None);
    send(&s.app, post("/v2/chat/completions", &chat(json!({})))).await.error(StatusCode::NOT_FOUND, None);
    let r = send(&s.app, get("/v1/chat/completions")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn lenient_about_unknown_fields_and_content_parts() {
    let s = server();
    let extra =
        json!({"foo": 1, "user": "x", "stream_options": null, "tools": [], "response_format": {"type": "text"}});
    let plain = post_chat(&s.app, extra).await.ok();
    post_completion(&s.app, json!({"foo": 1, "user": "x", "stream_options": null, "best_of": 1})).await.ok();

    // Text parts are joined: the same prompt as "Hello".
    let parts = json!([{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]);
    let body = post_chat(&s.app, json!({"messages": [{"role": "user", "content": parts}]})).await.ok();
    assert_eq!(body["choices"][0]["message"]["content"], plain["choices"][0]["message"]["content"]);
    assert_eq!(body["usage"]["prompt_tokens"], plain["usage"]["prompt_tokens"]);
    let msgs = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": null}, {"role": "user", "content": "Again", "name": "bob"}]);
    post_chat(&s.app, json!({"messages": msgs})).await.ok();

    let image = json!({"type": "image_url", "image_url": {"url": "http://x/y.png"}});
    let e = post_chat(&s.app, json!({"messages": [{"role": "user", "content": [image]}]})).await;
    e.error(StatusCode::BAD_REQUEST, Some("messages[0].content[0].type"));
    let no_text = json!([{"type": "text", "text": "a"}, {"type": "text"}]);
    let e = post_chat(&s.app, json!({"messages": [{"role": "user", "content": no_text}]})).await;
    e.error(StatusCode::BAD_REQUEST, Some("messages[0].content[1].text"));
}

#[tokio::test]
async fn body_limit_is_413() {
    let s = server_with(ServerConfig { max_body_bytes: 1024, ..config() });
    let big = chat(json!({"messages": [{"role": "user", "content": "x".repeat(2000)}]}));
    let e = send(&s.app, post("/v1/chat/completions", &big)).await.error(StatusCode::PAYLOAD_TOO_LARGE, None);
    assert!(e["message"].as_str().unwrap().contains("1024"), "{e}");
    let big = completion(json!({"prompt": "y".repeat(2000)}));
    send(&s.app, post("/v1/completions", &big)).await.error(StatusCode::PAYLOAD_TOO_LARGE, None);
    post_chat(&s.app, json!({})).await.ok();
}

#[tokio::test]
async fn api_key() {
    let s = server_with(ServerConfig { api_key: Some("sekrit".into()), ..config() });
    let with_header = |name: &str, value: &str| {
        Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .header(name, value)
            .body(chat(json!({})).to_string().into())
            .unwrap()
    };
    let e = post_chat(&s.app, json!({})).await.error(StatusCode::UNAUTHORIZED, None);
    assert_eq!(e["code"], "invalid_api_key");
    for (name, value) in [("authorization", "Bearer wrong"), ("authorization", "sekrit"), ("x-api-key", "sekri")] {
        send(&s.app, with_header(name, value)).await.error(StatusCode::UNAUTHORIZED, None);
    }
    send(&s.app, with_header("authorization", "Bearer sekrit")).await.ok();
    send(&s.app, with_header("x-api-key", "sekrit")).await.ok();
    send(&s.app, get("/v1/models")).await.error(StatusCode::UNAUTHORIZED, None);
    send(&s.app, get("/openapi.json")).await.error(StatusCode::UNAUTHORIZED, None);
    assert_eq!(send(&s.app, get("/health")).await.status, StatusCode::OK);
    assert_eq!(send(&s.app, get("/ready")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn too_many_requests_is_429_until_a_slot_frees() {
    let s = server_with(ServerConfig { max_num_seqs: 1, max_waiting_requests: 0, ..config() });
    // A long stream that nobody reads keeps its slot (the writer blocks on a full channel).
    let long = completion(json!({"prompt": [1], "max_tokens": CONTEXT - 1, "stream": true}));
    let held = tower::ServiceExt::oneshot(s.app.clone(), post("/v1/completions", &long)).await.unwrap();
    assert_eq!(held.status(), StatusCode::OK);

    let r = post_chat(&s.app, json!({})).await;
    let e = r.error(StatusCode::TOO_MANY_REQUESTS, None);
    assert_eq!(e["type"], "rate_limit_error");
    assert_eq!(r.header("retry-after"), Some("1"));
    post_completion(&s.app, json!({})).await.error(StatusCode::TOO_MANY_REQUESTS, None);
    // Unmetered routes still answer.
    assert_eq!(send(&s.app, get("/v1/models")).await.status, StatusCode::OK);

    // The client goes away: the slot comes back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = post_chat(&s.app, json!({})).await;
        if r.status == StatusCode::OK {
            break;
        }
        r.error(StatusCode::TOO_MANY_REQUESTS, None);
        assert!(Instant::now() < deadline, "the slot of a dropped stream was never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Refused and finished requests give their slot back too.
    post_chat(&s.app, json!({"top_p": 3})).await.error(StatusCode::BAD_REQUEST, Some("top_p"));
    post_chat(&s.app, json!({"model": "x"})).await.error(StatusCode::NOT_FOUND, Some("model"));
    post_chat(&s.app, json!({"stream": true})).await.chunks();
    post_chat(&s.app, json!({})).await.ok();
}

#[tokio::test]
async fn readiness_and_models() {
    let dir = model_dir();
    let state = AppState::new(config());
    let app = flint_server::api::router(state.clone());
    assert_eq!(send(&app, get("/health")).await.status, StatusCode::OK);
    let r = send(&app, get("/ready")).await;
    r.error(StatusCode::SERVICE_UNAVAILABLE, None);
    assert!(r.header("retry-after").is_some());
    // Only ready models are listed: none yet.
    assert_eq!(send(&app, get("/v1/models")).await.ok(), json!({"object": "list", "data": []}));

    state.set_model(served(dir.path()));
    assert_eq!(send(&app, get("/ready")).await.ok(), json!({"status": "ready", "models": [MODEL]}));
    let models = send(&app, get("/v1/models")).await.ok();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    let card = &models["data"][0];
    assert_eq!((card["id"].as_str(), card["object"].as_str()), (Some(MODEL), Some("model")));
    assert_eq!(card["max_model_len"].as_u64(), Some(CONTEXT as u64));
    assert_eq!(&send(&app, get("/v1/models/tiny")).await.ok(), card);
    let e = send(&app, get("/v1/models/gpt-4")).await.error(StatusCode::NOT_FOUND, Some("model"));
    assert_eq!(e["code"], "model_not_found");

    state.begin_shutdown();
    send(&app, get("/ready")).await.error(StatusCode::SERVICE_UNAVAILABLE, None);
    post_chat(&app, json!({})).await.error(StatusCode::SERVICE_UNAVAILABLE, None);
    assert_eq!(send(&app, get("/health")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn openapi_and_docs() {
    let s = server();
    let spec = send(&s.app, get("/openapi.json")).await.ok();
    assert!(spec["openapi"].is_string());
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready"] {
        assert!(spec["paths"].get(path).is_some(), "{path} missing from the spec");
    }
    let docs = send(&s.app, get("/docs")).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.header("content-type").unwrap().starts_with("text/html"));
    assert!(docs.text().to_lowercase().contains("<html"));
}

#[tokio::test]
async fn cors_preflight_needs_no_key() {
    let from_origin = |o: &str| Request::get("/health").header("origin", o).body(axum::body::Body::empty()).unwrap();
    let cfg = ServerConfig { api_key: Some("k".into()), cors_origins: vec!["http://app.example".into()], ..config() };
    let s = server_with(cfg);
    let preflight = Request::options("/v1/chat/completions")
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .body(axum::body::Body::empty())
        .unwrap();
    let r = send(&s.app, preflight).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://app.example"));
    // An origin --cors-origin does not list is refused (api::guard), without CORS headers.
    let r = send(&s.app, from_origin("http://evil.example")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Without --cors-origin there are no CORS headers at all.
    let plain = server();
    let r = send(&plain.app, from_origin("http://app.example")).await;
    assert_eq!(r.header("access-control-allow-origin"), None);
}
