//! `flint bench` against a fake OpenAI-compatible server in this process: a few fixed tokens
//! streamed with known delays, so counts are exact and timings land near the injected delays
//! (bounds are loose: within 10x). Also failures: error chunks, HTTP errors, nothing listening.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use flint_server::bench::{self, BenchConfig, Client, Endpoint};
use serde_json::{json, Value};

/// Delay before the first text chunk.
const TTFT_MS: u64 = 40;
/// Delay between text chunks.
const ITL_MS: u64 = 10;
/// Text chunks per response.
const CHUNKS: usize = 5;

#[derive(Clone, Default)]
struct Fake {
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    prompts: Arc<Mutex<Vec<String>>>,
    auth: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    fn take_max(&self) -> usize {
        self.max_in_flight.swap(0, Ordering::SeqCst)
    }
    fn take_prompts(&self) -> Vec<String> {
        std::mem::take(&mut self.prompts.lock().unwrap())
    }
}

/// Serves the fake on a free loopback port; returns its `/v1` base URL.
async fn start(fake: Fake) -> String {
    let app = Router::new()
        .route("/v1/models", get(|| async { Json(json!({"object": "list", "data": [{"id": "fake-model"}]})) }))
        .route("/v1/completions", post(stream))
        .route("/v1/chat/completions", post(stream))
        .route("/broken/v1/completions", post(broken))
        .route("/down/v1/completions", post(down))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

/// An SSE body fed by a task, so the test controls when each byte leaves.
fn sse(f: impl FnOnce(tokio::sync::mpsc::Sender<String>) -> tokio::task::JoinHandle<()>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    f(tx);
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (Ok::<_, Infallible>(s), rx)) });
    ([("content-type", "text/event-stream")], Body::from_stream(body)).into_response()
}

/// Completions: CHUNKS text chunks, usage says `max_tokens` (as if chunks held several
/// tokens). Chat: an empty role delta first (not a token), content deltas, no usage.
async fn stream(State(fake): State<Fake>, headers: HeaderMap, Json(req): Json<Value>) -> Response {
    assert_eq!(req["stream"], true);
    assert_eq!(req["stream_options"]["include_usage"], true);
    assert_eq!(req["ignore_eos"], true);
    let chat = req.get("messages").is_some();
    let prompt = if chat { req["messages"][0]["content"].as_str() } else { req["prompt"].as_str() };
    fake.prompts.lock().unwrap().push(prompt.unwrap().to_owned());
    if let Some(a) = headers.get("authorization") {
        fake.auth.lock().unwrap().push(a.to_str().unwrap().to_owned());
    }
    let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    fake.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let max_tokens = req["max_tokens"].as_u64().unwrap();
    sse(move |tx| {
        tokio::spawn(async move {
            let ms = |n| tokio::time::sleep(Duration::from_millis(n));
            tx.send(": keep-alive\n\n".into()).await.unwrap();
            if chat {
                tx.send(format!(
                    "data: {}\n\n",
                    json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
                ))
                .await
                .unwrap();
            }
            ms(TTFT_MS).await;
            for i in 0..CHUNKS {
                let choice = if chat {
                    json!({"index": 0, "delta": {"content": format!(" t{i}")}})
                } else {
                    json!({"index": 0, "text": format!(" t{i}")})
                };
                let line = format!("data: {}\n\n", json!({"choices": [choice]}));
                // The first chunk goes out in two writes: the client must join the halves.
                if i == 0 {
                    let (a, b) = line.split_at(9);
                    tx.send(a.to_owned()).await.unwrap();
                    ms(2).await;
                    tx.send(b.to_owned()).await.unwrap();
                } else {
                    tx.send(line).await.unwrap();
                }
                if i + 1 < CHUNKS {
                    ms(ITL_MS).await;
                }
            }
            if !chat {
                let usage = json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": max_tokens}});
                tx.send(format!("data: {usage}\n\n")).await.unwrap();
            }
            fake.in_flight.fetch_sub(1, Ordering::SeqCst);
            tx.send("data: [DONE]\n\n".into()).await.unwrap();
        })
    })
}

/// One token, then an error chunk (what vLLM sends when a request dies mid-stream).
async fn broken() -> Response {
    sse(|tx| {
        tokio::spawn(async move {
            tx.send("data: {\"choices\":[{\"text\":\"a\"}]}\n\n".into()).await.unwrap();
            tx.send("data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n".into()).await.unwrap();
            tx.send("data: [DONE]\n\n".into()).await.unwrap();
        })
    })
}

async fn down() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": {"message": "overloaded", "type": "server_error"}})))
        .into_response()
}

/// A loopback port with nothing listening.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_a_streaming_server() {
    let fake = Fake::default();
    let base = start(fake.clone()).await;
    let client = Client::new();
    assert_eq!(bench::discover_model(&client, &base, None).await.unwrap(), "fake-model");
    let mut cfg = BenchConfig::new(&base, "fake-model");
    cfg.output_len = 7;
    cfg.api_key = Some("sk-test".into());
    let prompts = bench::random_prompts(12, 16, 0, None).unwrap();

    let mut levels = Vec::new();
    for (c, n, prompts) in [(1, 4, &prompts[..4]), (4, 8, &prompts[4..])] {
        let r = bench::run_level(&cfg, &client, c, n, prompts).await.unwrap();
        assert_eq!((r.concurrency, r.requests, r.ok, r.failed), (c, n, n, 0), "{r:?}");
        assert_eq!(fake.take_max(), c, "requests in flight at concurrency {c}");
        let mut seen = fake.take_prompts();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), n, "every request has its own prompt");
        // usage.completion_tokens wins over the chunk count.
        assert_eq!(r.output_tokens, 7 * n as u64);
        assert!(r.samples.iter().all(|s| s.output_tokens == 7 && s.prompt_tokens == Some(3)));
        assert_eq!(r.mean_prompt_tokens, Some(3.0));
        assert_eq!(r.ttft_ms.count, n);
        assert_eq!(r.itl_ms.count, n * (CHUNKS - 1));
        let (ttft, itl) = (TTFT_MS as f64, ITL_MS as f64);
        assert!(r.ttft_ms.p50 >= ttft / 2.0 && r.ttft_ms.p50 <= ttft * 10.0, "TTFT {:?}", r.ttft_ms);
        assert!(r.itl_ms.mean >= itl / 10.0 && r.itl_ms.p50 <= itl * 10.0, "ITL {:?}", r.itl_ms);
        let e2e = ttft + itl * (CHUNKS - 1) as f64;
        assert!(r.e2e_ms.p50 >= e2e / 2.0 && r.e2e_ms.p99 <= e2e * 10.0, "E2E {:?}", r.e2e_ms);
        assert!(r.wall_s > 0.0 && (r.output_throughput - r.output_tokens as f64 / r.wall_s).abs() < 1e-6);
        levels.push(r);
    }
    // Four at a time finish twice the requests in about the same wall time.
    assert!(
        levels[1].request_throughput > levels[0].request_throughput,
        "{} vs {}",
        levels[1].request_throughput,
        levels[0].request_throughput
    );
    assert!(fake.auth.lock().unwrap().iter().all(|a| a == "Bearer sk-test"));
    let table = bench::render_table(&levels);
    assert_eq!(table.lines().count(), 3, "{table}");

    // Chat: the empty role delta is not the first token, and without usage the content
    // chunks are counted.
    cfg.endpoint = Endpoint::Chat;
    let r = bench::run_level(&cfg, &client, 2, 2, &prompts[..2]).await.unwrap();
    assert_eq!((r.ok, r.output_tokens), (2, 2 * CHUNKS as u64), "{r:?}");
    assert!(r.ttft_ms.p50 >= TTFT_MS as f64 / 2.0, "TTFT {:?}", r.ttft_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_with_their_message() {
    let base = start(Fake::default()).await;
    let root = base.trim_end_matches("/v1");
    let client = Client::new();
    let prompts = bench::random_prompts(4, 8, 1, None).unwrap();

    let cfg = BenchConfig::new(format!("{root}/broken/v1"), "m");
    let r = bench::run_level(&cfg, &client, 2, 4, &prompts).await.unwrap();
    assert_eq!((r.ok, r.failed, r.output_tokens), (0, 4, 0));
    assert_eq!(r.errors.len(), 1);
    assert_eq!((r.errors[0].message.as_str(), r.errors[0].count), ("error in stream: boom", 4));
    assert!(r.ttft_ms.p50.is_nan(), "failed requests add no latency samples");

    let cfg = BenchConfig::new(format!("{root}/down/v1"), "m");
    let r = bench::run_level(&cfg, &client, 4, 3, &prompts).await.unwrap();
    assert_eq!((r.ok, r.failed), (0, 3));
    assert_eq!(r.errors[0].message, "HTTP 503: overloaded");

    let dead = format!("http://127.0.0.1:{}/v1", closed_port());
    let err = bench::discover_model(&client, &dead, None).await.unwrap_err().to_string();
    assert!(err.contains(&format!("{dead}/models")) && err.starts_with("cannot connect to"), "{err}");
    let r = bench::run_level(&BenchConfig::new(&dead, "m"), &client, 1, 2, &prompts).await.unwrap();
    assert_eq!(r.failed, 2);
    assert!(r.errors[0].message.starts_with("cannot connect to"), "{}", r.errors[0].message);
}

/// The binary end to end: the table on stdout, the JSON report, and a one-line error when
/// nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_table_and_json() {
    let base = start(Fake::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let args: Vec<String> = [
        "bench",
        "--base-url",
        &base,
        "--concurrency",
        "1,2",
        "--requests",
        "2",
        "--output-len",
        "3",
        "--input-len",
        "8",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--json".into(), json_path.display().to_string()])
    .collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_flint")).args(args).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("flint bench: fake-model at "), "{stdout}");
    assert!(stdout.contains("ttft_p50"), "{stdout}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(doc["config"]["model"], "fake-model");
    assert_eq!(doc["config"]["concurrency"], json!([1, 2]));
    assert!(doc["config"].get("api_key").is_none());
    let levels = doc["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    assert_eq!(levels[1]["concurrency"], 2);
    assert_eq!(levels[1]["ok"], 2);
    assert_eq!(levels[1]["output_tokens"], 6);
    assert!(levels[0]["ttft_ms"]["p50"].as_f64().unwrap() > 0.0);

    let dead = format!("http://127.0.0.1:{}/v1", closed_port());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_flint")).args(["bench", "--base-url", &dead]).output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("error: cannot connect to http://127.0.0.1:") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
