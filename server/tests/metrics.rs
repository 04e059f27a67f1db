//! `GET /metrics`: Prometheus text with vLLM's names, after real requests on the tiny model.

mod common;

use axum::http::{Request, StatusCode};
use common::*;
use flint_server::api::ServerConfig;
use serde_json::json;

/// The value of the sample line `series` (name and labels, exactly).
fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no `{series}` in:\n{text}"));
    line[series.len()..].trim().parse().unwrap()
}

#[tokio::test]
async fn metrics_after_two_completions() {
    let s = server_with(ServerConfig { api_key: Some("sekrit".into()), ..config() });
    let authed = |req: Request<axum::body::Body>| {
        let (mut parts, body) = req.into_parts();
        parts.headers.insert("authorization", "Bearer sekrit".parse().unwrap());
        Request::from_parts(parts, body)
    };

    let full = send(&s.app, authed(post("/v1/completions", &completion(json!({}))))).await.ok();
    let (p1, c1) = check_usage(&full["usage"]);
    let streamed = completion(json!({"stream": true, "stream_options": {"include_usage": true}, "max_tokens": 7}));
    let chunks = send(&s.app, authed(post("/v1/completions", &streamed))).await.chunks();
    let (p2, c2) = check_usage(&chunks.last().unwrap()["usage"]);
    assert_eq!((c1, c2), (5, 7));

    assert_eq!(send(&s.app, get("/metrics")).await.status, StatusCode::UNAUTHORIZED);
    let resp = send(&s.app, authed(get("/metrics"))).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = resp.text();
    let m = format!("{{model_name=\"{MODEL}\"}}");
    let v = |name: &str| value(&text, &format!("{name}{m}"));

    assert!(text.contains(&format!("vllm:num_requests_running{m} 0\n")), "{text}");
    assert_eq!(v("vllm:num_requests_waiting"), 0.0);
    assert_eq!(v("vllm:prompt_tokens_total"), (p1 + p2) as f64);
    assert_eq!(v("vllm:generation_tokens_total"), (c1 + c2) as f64);
    assert_eq!(v("vllm:e2e_request_latency_seconds_count"), 2.0);
    assert_eq!(v("vllm:time_to_first_token_seconds_count"), 2.0);
    let success = format!("vllm:request_success_total{{model_name=\"{MODEL}\",finished_reason=\"length\"}}");
    assert_eq!(value(&text, &success), 2.0);
    // One inter-token latency per token after the first delta of each request.
    let itl = v("vllm:inter_token_latency_seconds_count");
    assert!(itl > 0.0 && itl <= (c1 + c2 - 2) as f64, "{itl}");
    let inf = format!("vllm:e2e_request_latency_seconds_bucket{{model_name=\"{MODEL}\",le=\"+Inf\"}}");
    assert_eq!(value(&text, &inf), 2.0);
    let usage = v("vllm:kv_cache_usage_perc");
    assert!((0.0..=1.0).contains(&usage), "{usage}");
    assert_eq!(v("vllm:prefix_cache_queries_total"), (p1 + p2) as f64);
    assert!(v("vllm:prefix_cache_hits_total") <= (p1 + p2) as f64);
    assert_eq!(v("vllm:num_preemptions_total"), 0.0);
    assert_eq!(v("flint_lora_adapters_loaded"), 0.0);
    assert_eq!(v("flint_lora_adapters_resident"), 0.0);
    for name in ["vllm:num_requests_running", "vllm:time_to_first_token_seconds", "vllm:prompt_tokens_total"] {
        assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1, "{name}");
    }
}
