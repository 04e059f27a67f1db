//! Property tests of the request parsers: random JSON for every field the OpenAI and Ollama
//! generation routes read (right types with edge values, wrong types, unknown fields), and
//! random bytes, never get a 5xx or a panic. An OpenAI 400 for a JSON object names the field
//! (`param`); an Ollama error is `{"error": "..."}`. After every run no admission permit is
//! left behind and a plain request still succeeds.
//!
//! Two levels: [`JsonBody`] on its own for each OpenAI body type, then the whole router over
//! the tiny model. Case counts are bounded (`FLINT_PROPTEST_SCALE` multiplies them for a deeper
//! local run); token counts are kept small so generation stays cheap.

mod common;

use std::sync::Arc;

use axum::{
    body::Body,
    extract::FromRequest,
    http::{header, Request, StatusCode},
};
use common::*;
use flint_server::api::{
    types::{ChatCompletionRequest, CompletionRequest, LoadLoraAdapterRequest, UnloadLoraAdapterRequest},
    ApiError, JsonBody,
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use serde_json::{json, Map, Value};

fn cases(n: u32) -> Config {
    let scale = std::env::var("FLINT_PROPTEST_SCALE").ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(1);
    Config::with_cases(n.saturating_mul(scale.max(1)))
}

/// Runs `test` on values of `strategy`, panicking with the minimal failing input.
fn run<S: Strategy>(config: Config, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = TestRunner::new(config).run(&strategy, test) {
        panic!("{e}");
    }
}

fn one_of(values: Vec<Value>) -> BoxedStrategy<Value> {
    proptest::sample::select(values).boxed()
}

/// Mostly `typical`, sometimes `edge`.
fn mostly(typical: Vec<Value>, edge: Vec<Value>) -> BoxedStrategy<Value> {
    prop_oneof![9 => one_of(typical), 1 => one_of(edge)].boxed()
}

/// Text with special-token look-alikes and unusual Unicode.
fn text() -> BoxedStrategy<String> {
    let piece = prop_oneof![
        2 => "[a-z ]{0,8}",
        1 => "\\PC{0,6}",
        1 => proptest::sample::select(vec!["<|im_start|>", "<|im_end|>", "<|endoftext|>", "{{", "{%", "\n", "\0", "\u{202e}", "🦀"])
            .prop_map(str::to_string),
    ];
    proptest::collection::vec(piece, 0..4).prop_map(|p| p.concat()).boxed()
}

fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![Just(0i64), Just(-1), Just(1), Just(i64::MAX), Just(i64::MIN), any::<i64>()].prop_map(Value::from),
        prop_oneof![Just(u64::MAX), any::<u64>()].prop_map(Value::from),
        prop_oneof![Just(0.5f64), Just(-0.0), Just(1e308), Just(-1e308), Just(5e-324), any::<f64>()]
            .prop_map(Value::from),
        text().prop_map(Value::from),
    ]
    .boxed()
}

/// Any JSON value, a few levels deep.
fn json_value() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// An object with each of `fields` present with probability `p`, holding a plausible value
/// (30 in 31) or any JSON, plus up to two unknown fields.
fn object(p: f64, fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    request(vec![], p, fields)
}

/// [`object`] whose `required` fields are there 39 times in 40.
fn request(
    required: Vec<(&'static str, BoxedStrategy<Value>)>,
    p: f64,
    optional: Vec<(&'static str, BoxedStrategy<Value>)>,
) -> BoxedStrategy<Value> {
    let presence = std::iter::repeat_n(0.975, required.len()).chain(std::iter::repeat(p));
    let entries: Vec<_> = required
        .into_iter()
        .chain(optional)
        .zip(presence)
        .map(|((name, good), p)| {
            proptest::option::weighted(p, prop_oneof![30 => good, 1 => json_value()]).prop_map(move |v| (name, v))
        })
        .collect();
    (entries, proptest::collection::btree_map("[a-z_]{1,8}", json_value(), 0..2))
        .prop_map(|(entries, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            for (name, v) in entries {
                match v {
                    Some(v) => m.insert(name.to_string(), v),
                    None => m.remove(name),
                };
            }
            Value::Object(m)
        })
        .boxed()
}

fn model() -> BoxedStrategy<Value> {
    mostly(vec![json!(MODEL)], vec![json!(""), json!("nope"), json!("tiny:latest"), json!(1), json!(null)])
}

/// Few tokens: generation is real, so keep it short (edge values are refused or capped).
fn max_tokens() -> BoxedStrategy<Value> {
    mostly(
        vec![json!(1), json!(2), json!(3)],
        vec![json!(0), json!(-1), json!(i64::MAX), json!(1e9), json!(CONTEXT), json!("4"), json!(1.5)],
    )
}

fn sampling_fields() -> Vec<(&'static str, BoxedStrategy<Value>)> {
    let prob = |typical: Vec<Value>| {
        mostly(
            typical,
            vec![json!(-1), json!(1e308), json!(-1e308), json!(5e-324), json!(2), json!("0.5"), json!(-0.0)],
        )
    };
    let ints = |typical: Vec<Value>| {
        mostly(
            typical,
            vec![json!(-1), json!(0), json!(i64::MAX), json!(i64::MIN), json!(u64::MAX), json!(1.5), json!("1")],
        )
    };
    let stop = prop_oneof![
        text().prop_map(Value::from),
        proptest::collection::vec(text(), 0..6).prop_map(|v| json!(v)),
        Just(json!(["x".repeat(2000)])),
        Just(json!(vec!["a"; 5000])),
    ]
    .boxed();
    let logit_bias = prop_oneof![
        3 => proptest::collection::btree_map(
            prop_oneof![Just("1".to_string()), Just("255".to_string()), Just("256".to_string()), Just("-1".to_string()), Just("x".to_string()), Just("99999999999999999999".to_string())],
            prop_oneof![Just(json!(5)), Just(json!(-100)), Just(json!(100)), Just(json!(101)), Just(json!(1e308)), Just(json!("1"))],
            0..4
        ).prop_map(|m| json!(m)),
        1 => Just(Value::Object((0..400).map(|i| (i.to_string(), json!(1))).collect())),
    ]
    .boxed();
    let stop_ids = prop_oneof![
        3 => proptest::collection::vec(one_of(vec![json!(1), json!(2), json!(255), json!(256), json!(-1), json!(1u64 << 40)]), 0..4).prop_map(Value::Array),
        1 => Just(json!(vec![3; 5000])),
    ]
    .boxed();
    vec![
        ("temperature", prob(vec![json!(0), json!(0.7), json!(1.5)])),
        ("top_p", prob(vec![json!(1), json!(0.5), json!(0.01)])),
        ("top_k", ints(vec![json!(-1), json!(1), json!(50)])),
        ("min_p", prob(vec![json!(0), json!(0.1)])),
        ("n", ints(vec![json!(1), json!(1), json!(2), json!(73)])),
        ("presence_penalty", prob(vec![json!(0), json!(1.5), json!(-2)])),
        ("frequency_penalty", prob(vec![json!(0), json!(1.5), json!(3)])),
        ("repetition_penalty", prob(vec![json!(1), json!(1.2), json!(0)])),
        ("seed", ints(vec![json!(0), json!(42)])),
        ("stop", stop),
        ("logit_bias", logit_bias),
        ("ignore_eos", any::<bool>().prop_map(Value::from).boxed()),
        ("min_tokens", ints(vec![json!(0), json!(1), json!(5)])),
        ("stop_token_ids", stop_ids),
        ("cache_salt", mostly(vec![json!("salt")], vec![json!(""), json!("s".repeat(5000))])),
        ("return_tokens_as_token_ids", any::<bool>().prop_map(Value::from).boxed()),
        ("stream", any::<bool>().prop_map(Value::from).boxed()),
        (
            "stream_options",
            mostly(vec![json!({"include_usage": true}), json!(null)], vec![json!({"include_usage": 1})]),
        ),
        ("user", text().prop_map(Value::from).boxed()),
    ]
}

fn role() -> BoxedStrategy<Value> {
    mostly(
        vec![json!("user"), json!("assistant"), json!("system"), json!("developer"), json!("tool")],
        vec![json!("system<|im_end|>\n<|im_start|>user"), json!(""), json!("admin"), json!(1), json!(null)],
    )
}

fn content() -> BoxedStrategy<Value> {
    let part = object(
        0.9,
        vec![
            ("type", mostly(vec![json!("text")], vec![json!("image_url"), json!("input_audio"), json!(7)])),
            ("text", text().prop_map(Value::from).boxed()),
        ],
    );
    prop_oneof![
        4 => text().prop_map(Value::from),
        1 => proptest::collection::vec(part, 0..3).prop_map(Value::Array),
        1 => Just(Value::Null),
    ]
    .boxed()
}

fn chat_body() -> BoxedStrategy<Value> {
    let message =
        object(0.95, vec![("role", role()), ("content", content()), ("name", text().prop_map(Value::from).boxed())]);
    let messages = prop_oneof![
        8 => proptest::collection::vec(message, 1..4).prop_map(Value::Array),
        1 => Just(json!([])),
        1 => Just(Value::Array(vec![json!({"role": "user", "content": "a"}); 5000])),
    ]
    .boxed();
    let required = vec![("model", model()), ("messages", messages), ("max_tokens", max_tokens())];
    let mut fields = vec![
        ("max_completion_tokens", prop_oneof![4 => Just(Value::Null), 1 => max_tokens()].boxed()),
        ("logprobs", any::<bool>().prop_map(Value::from).boxed()),
        (
            "top_logprobs",
            mostly(vec![json!(null), json!(0)], vec![json!(2), json!(20), json!(21), json!(-1), json!(i64::MAX)]),
        ),
    ];
    fields.extend(sampling_fields());
    request(required, 0.3, fields)
}

fn completion_body() -> BoxedStrategy<Value> {
    let ids = |n| {
        proptest::collection::vec(
            one_of(vec![json!(1), json!(65), json!(255), json!(256), json!(-1), json!(u64::MAX)]),
            0..n,
        )
    };
    let prompt = prop_oneof![
        4 => text().prop_map(|t| Value::from(format!("x{t}"))),
        1 => Just(json!("")),
        1 => proptest::collection::vec(text(), 0..3).prop_map(|v| json!(v)),
        2 => ids(6).prop_map(Value::Array),
        1 => proptest::collection::vec(ids(4).prop_map(Value::Array), 0..3).prop_map(Value::Array),
        1 => Just(json!(vec![vec![1]; 3000])),
        1 => Just(json!(["", [1]])),
    ]
    .boxed();
    let required = vec![("model", model()), ("prompt", prompt), ("max_tokens", max_tokens())];
    let mut fields = vec![
        ("logprobs", mostly(vec![json!(null), json!(0), json!(3)], vec![json!(21), json!(-1), json!(true)])),
        ("echo", any::<bool>().prop_map(Value::from).boxed()),
        ("suffix", mostly(vec![json!(null)], vec![json!("end")])),
        ("best_of", mostly(vec![json!(null)], vec![json!(2), json!(0)])),
    ];
    fields.extend(sampling_fields());
    request(required, 0.3, fields)
}

fn ollama_options() -> BoxedStrategy<Value> {
    let num = |typical: Vec<Value>| {
        mostly(typical, vec![json!(-1), json!(1e308), json!(i64::MAX), json!(u64::MAX), json!("1"), json!(null)])
    };
    object(
        0.4,
        vec![
            ("temperature", num(vec![json!(0), json!(0.8)])),
            ("top_k", num(vec![json!(40), json!(1)])),
            ("top_p", num(vec![json!(0.9), json!(1)])),
            ("min_p", num(vec![json!(0), json!(0.05)])),
            (
                "num_predict",
                mostly(
                    vec![json!(1), json!(3)],
                    vec![json!(0), json!(-1), json!(-2), json!(i64::MAX), json!(1e9), json!("3")],
                ),
            ),
            ("num_ctx", num(vec![json!(64), json!(2048)])),
            ("stop", proptest::collection::vec(text(), 0..3).prop_map(|v| json!(v)).boxed()),
            ("seed", num(vec![json!(1)])),
            ("repeat_penalty", num(vec![json!(1.1)])),
            ("presence_penalty", num(vec![json!(0)])),
            ("frequency_penalty", num(vec![json!(0)])),
            ("mirostat", num(vec![json!(0), json!(2)])),
            ("num_gpu", num(vec![json!(1)])),
        ],
    )
}

/// Never 0 or a short duration: an idle or immediate unload would stop the shared model.
fn keep_alive() -> BoxedStrategy<Value> {
    mostly(
        vec![json!("1h"), json!(-1), json!(3600)],
        vec![json!("soon"), json!([]), json!({}), json!(1e308), json!("-5m")],
    )
}

fn ollama_common() -> Vec<(&'static str, BoxedStrategy<Value>)> {
    vec![
        ("stream", any::<bool>().prop_map(Value::from).boxed()),
        ("options", prop_oneof![5 => ollama_options(), 1 => json_value()].boxed()),
        ("format", mostly(vec![json!(null), json!("")], vec![json!("json"), json!({"type": "object"})])),
        ("think", mostly(vec![json!(false)], vec![json!(true), json!("high")])),
        ("keep_alive", keep_alive()),
        ("logprobs", mostly(vec![json!(false)], vec![json!(true), json!(1)])),
        ("top_logprobs", mostly(vec![json!(0), json!(3)], vec![json!(21), json!(-1)])),
    ]
}

fn ollama_generate_body() -> BoxedStrategy<Value> {
    let mut fields = vec![
        // Never empty: an empty prompt loads (or with keep_alive 0 unloads) the model.
        ("prompt", text().prop_map(|t| Value::from(format!("x{t}"))).boxed()),
        ("system", text().prop_map(Value::from).boxed()),
        ("suffix", mostly(vec![json!(null)], vec![json!("s")])),
        ("template", mostly(vec![json!(null)], vec![json!("{{ .Prompt }}")])),
        (
            "context",
            proptest::collection::vec(one_of(vec![json!(1), json!(256), json!(-1), json!(u64::MAX)]), 0..3)
                .prop_map(Value::Array)
                .boxed(),
        ),
        ("raw", any::<bool>().prop_map(Value::from).boxed()),
        ("images", mostly(vec![json!(null), json!([])], vec![json!(["aGk="])])),
    ];
    fields.extend(ollama_common());
    request(vec![("model", model())], 0.35, fields)
        .prop_map(|mut v| {
            v["prompt"] =
                v.get("prompt").filter(|p| p.as_str().is_some_and(|s| !s.is_empty())).cloned().unwrap_or(json!("x"));
            v
        })
        .boxed()
}

fn ollama_chat_body() -> BoxedStrategy<Value> {
    let message = object(
        0.95,
        vec![
            ("role", role()),
            ("content", prop_oneof![5 => text().prop_map(|t| Value::from(format!("x{t}"))), 1 => json_value()].boxed()),
            ("images", mostly(vec![json!(null)], vec![json!(["aGk="])])),
            ("tool_calls", mostly(vec![json!(null)], vec![json!([{"function": {"name": "f"}}])])),
        ],
    );
    let mut fields = vec![
        // Never empty or missing: an empty message list loads or unloads the model.
        ("messages", proptest::collection::vec(message, 1..4).prop_map(Value::Array).boxed()),
        ("tools", mostly(vec![json!(null)], vec![json!([{"type": "function"}])])),
    ];
    fields.extend(ollama_common());
    request(vec![("model", model())], 0.35, fields)
        .prop_map(|mut v| {
            if v.get("messages").is_none_or(|m| m.as_array().is_none_or(|a| a.is_empty())) {
                v["messages"] = json!([{"role": "user", "content": "x"}]);
            }
            v
        })
        .boxed()
}

/// A POST with a JSON content type.
fn post_bytes(uri: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(uri).header(header::CONTENT_TYPE, "application/json").body(Body::from(body)).expect("request")
}

/// `body` through [`JsonBody`] as `T`: parsed, or a 400 that names the field when the body is
/// a JSON object.
async fn extract<T: serde::de::DeserializeOwned + Send + 'static>(body: &[u8]) -> Result<(), TestCaseError> {
    let req = post_bytes("/", body.to_vec());
    match JsonBody::<T>::from_request(req, &()).await {
        Ok(_) => Ok(()),
        Err(ApiError { status, param, message, .. }) => {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", message);
            let object = serde_json::from_slice::<Value>(body).is_ok_and(|v| v.is_object());
            // Nesting deeper than the limit is refused before any field is read.
            let too_deep = message.contains("nest");
            prop_assert!(!object || too_deep || param.is_some(), "a 400 for a JSON object without `param`: {message}");
            Ok(())
        }
    }
}

/// What a route must answer: never a 5xx; errors in the route's shape; with `need_param`,
/// OpenAI 400s for JSON objects name the field.
fn check_response(ollama: bool, need_param: bool, r: &Resp) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(&r.body);
    prop_assert!(r.status.as_u16() < 500, "{}: {}", r.status, text);
    if r.status == StatusCode::OK {
        return Ok(());
    }
    let body: Value = serde_json::from_slice(&r.body)
        .map_err(|e| TestCaseError::fail(format!("{}: not JSON ({e}): {text}", r.status)))?;
    if ollama {
        prop_assert!(body["error"].is_string() && body.as_object().is_some_and(|o| o.len() == 1), "{}", body);
    } else {
        let e = &body["error"];
        prop_assert!(e["message"].is_string() && e["type"].is_string(), "{}", body);
        if r.status == StatusCode::BAD_REQUEST && need_param {
            prop_assert!(e["param"].is_string(), "a 400 for a JSON object without `param`: {}", body);
        }
    }
    Ok(())
}

/// Posts `body` (JSON or raw bytes) to `uri` and checks the answer; `param`: an OpenAI 400 for
/// a JSON object must name the field (the generation routes, where every 400 is about one).
async fn post_checked(app: &axum::Router, uri: &str, body: Vec<u8>, param: bool) -> Result<(), TestCaseError> {
    let object = serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.is_object());
    let r = send(app, post_bytes(uri, body)).await;
    check_response(uri.starts_with("/api/"), param && object, &r)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Bodies that are not (quite) JSON objects: arbitrary bytes, truncated JSON, other values.
fn broken_body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (chat_body(), any::<proptest::sample::Index>()).prop_map(|(v, cut)| {
            let s = v.to_string().into_bytes();
            s[..cut.index(s.len() + 1)].to_vec()
        }),
        json_value().prop_map(|v| v.to_string().into_bytes()),
    ]
    .boxed()
}

#[test]
fn json_body_extractor_names_the_field() {
    let rt = runtime();
    let bodies = prop_oneof![
        3 => chat_body(),
        3 => completion_body(),
        1 => json_value(),
        1 => object(0.5, vec![("lora_name", text().prop_map(Value::from).boxed()), ("lora_path", text().prop_map(Value::from).boxed()), ("model", model())]),
    ]
    .prop_map(|v| v.to_string().into_bytes());
    let bodies = prop_oneof![4 => bodies, 1 => broken_body()];
    run(cases(512), bodies, |body| {
        rt.block_on(async {
            extract::<ChatCompletionRequest>(&body).await?;
            extract::<CompletionRequest>(&body).await?;
            extract::<LoadLoraAdapterRequest>(&body).await?;
            extract::<UnloadLoraAdapterRequest>(&body).await
        })
    });
}

/// The routes over the tiny model, then a check that nothing is left admitted and a plain
/// request of the same route still works.
fn route_test(uri: &'static str, bodies: BoxedStrategy<Vec<u8>>, n: u32, plain: Value) {
    let rt = runtime();
    let s = rt.block_on(async { Arc::new(server()) });
    run(cases(n), bodies, |body| rt.block_on(post_checked(&s.app, uri, body, true)));
    rt.block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while s.state.admission.in_flight() != 0 {
            assert!(std::time::Instant::now() < deadline, "{} requests still admitted", s.state.admission.in_flight());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let r = send(&s.app, post(uri, &plain)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    });
}

fn json_bytes(s: BoxedStrategy<Value>) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![8 => s.prop_map(|v| v.to_string().into_bytes()), 1 => broken_body()].boxed()
}

#[test]
fn openai_chat_route() {
    let plain = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    route_test("/v1/chat/completions", json_bytes(chat_body()), 192, plain);
}

#[test]
fn openai_completions_route() {
    let plain = json!({"model": MODEL, "prompt": "hi", "max_tokens": 2});
    route_test("/v1/completions", json_bytes(completion_body()), 192, plain);
}

#[test]
fn ollama_generate_route() {
    let plain = json!({"model": MODEL, "prompt": "hi", "stream": false, "options": {"num_predict": 2}});
    route_test("/api/generate", json_bytes(ollama_generate_body()), 128, plain);
}

#[test]
fn ollama_chat_route() {
    let plain = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": false, "options": {"num_predict": 2}});
    route_test("/api/chat", json_bytes(ollama_chat_body()), 128, plain);
}

#[test]
fn other_json_routes() {
    let rt = runtime();
    let s = rt.block_on(async { Arc::new(server()) });
    let lora = object(
        0.8,
        vec![
            ("lora_name", text().prop_map(Value::from).boxed()),
            ("lora_path", text().prop_map(Value::from).boxed()),
            ("model", model()),
        ],
    );
    let show = object(
        0.8,
        vec![("model", model()), ("name", model()), ("verbose", any::<bool>().prop_map(Value::from).boxed())],
    );
    let job = object(
        0.8,
        vec![
            ("model", model()),
            ("training_file", text().prop_map(Value::from).boxed()),
            ("hyperparameters", json_value()),
        ],
    );
    let routes = prop_oneof![
        Just("/v1/load_lora_adapter"),
        Just("/v1/unload_lora_adapter"),
        Just("/api/show"),
        Just("/v1/fine_tuning/jobs"),
        Just("/admin/models/load"),
    ];
    let bodies = prop_oneof![2 => lora, 2 => show, 1 => job, 1 => json_value()];
    run(cases(128), (routes, json_bytes(bodies.boxed())), |(uri, body)| {
        rt.block_on(post_checked(&s.app, uri, body, false))
    });
}
