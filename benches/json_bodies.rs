//! How long the server takes to parse (or refuse) the largest bodies a client may send:
//! `--max-body-bytes` (8 MiB by default) of each shape that used to cost seconds — a flat
//! array of small numbers where a field takes several shapes (untagged or flattened fields
//! buffered the whole value first), deep nesting, a million messages. The target is 100 ms
//! for any body under the limit on the 2-core CI machine.
//!
//! `cargo bench --bench json_bodies`. Each case parses through `api::parse_json`, the same
//! path `JsonBody` takes (depth pre-scan, then serde), into the route's request type; whether
//! the answer is a value or a 400 does not matter here.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flint_server::api::{
    ollama::types::ChatRequest,
    parse_json,
    types::{ChatCompletionRequest, CompletionRequest},
};

const LIMIT: usize = 8 << 20;

/// `prefix` + `[0,0,…,0]` (as many zeros as fit `LIMIT`) + `suffix`.
fn flat(prefix: &str, suffix: &str) -> Vec<u8> {
    let room = LIMIT - prefix.len() - suffix.len() - 2;
    let mut body = Vec::with_capacity(LIMIT);
    body.extend_from_slice(prefix.as_bytes());
    body.push(b'[');
    for i in 0..room / 2 {
        if i > 0 {
            body.push(b',');
        }
        body.push(b'0');
    }
    body.push(b']');
    body.extend_from_slice(suffix.as_bytes());
    body
}

fn nested(prefix: &str, suffix: &str) -> Vec<u8> {
    let depth = (LIMIT - prefix.len() - suffix.len()) / 2;
    let mut body = prefix.as_bytes().to_vec();
    body.extend(std::iter::repeat_n(b'[', depth));
    body.extend(std::iter::repeat_n(b']', depth));
    body.extend_from_slice(suffix.as_bytes());
    body
}

fn messages() -> Vec<u8> {
    let one = r#"{"role":"user","content":"a"},"#;
    let mut body = br#"{"model":"m","messages":["#.to_vec();
    while body.len() + one.len() + 2 < LIMIT {
        body.extend_from_slice(one.as_bytes());
    }
    body.pop();
    body.extend_from_slice(b"]}");
    body
}

fn bodies(c: &mut Criterion) {
    let chat = r#"{"model":"m","messages":[{"role":"user","content":"#;
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("chat", "content_numbers", flat(chat, "}]}")),
        ("chat", "unknown_field", flat(r#"{"model":"m","messages":[],"x":"#, "}")),
        ("chat", "stop_numbers", flat(r#"{"model":"m","messages":[],"stop":"#, "}")),
        ("chat", "nested_unknown", nested(r#"{"model":"m","x":"#, "}")),
        ("chat", "one_million_messages", messages()),
        ("completions", "token_ids", flat(r#"{"model":"m","prompt":"#, "}")),
        ("completions", "token_lists", flat(r#"{"model":"m","prompt":["#, "]}")),
        ("completions", "stop_token_ids", flat(r#"{"model":"m","prompt":"a","stop_token_ids":"#, "}")),
        ("ollama_chat", "options_value", flat(r#"{"model":"m","options":{"temperature":"#, "}}")),
        ("ollama_chat", "unknown_field", flat(r#"{"model":"m","x":"#, "}")),
        ("ollama_chat", "format", flat(r#"{"model":"m","format":"#, "}")),
        ("ollama_chat", "images", flat(r#"{"model":"m","messages":[{"role":"user","images":"#, "}]}")),
    ];
    let mut g = c.benchmark_group("json_body_8MiB");
    g.sample_size(10);
    for (route, shape, body) in &cases {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new(*route, shape), body, |b, body| {
            b.iter(|| match *route {
                "chat" => parse_json::<ChatCompletionRequest>(body).is_ok(),
                "completions" => parse_json::<CompletionRequest>(body).is_ok(),
                _ => parse_json::<ChatRequest>(body).is_ok(),
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bodies);
criterion_main!(benches);
