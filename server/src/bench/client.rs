//! One streamed request against an OpenAI-compatible server, timed chunk by chunk.
//!
//! The SSE stream is parsed by hand rather than with an SSE crate: the OpenAI dialect is
//! one `data: {json}` line per event, and what matters here is *when* each line arrived,
//! which a line parser fed straight from the socket's reads gives exactly.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Client;
use serde_json::{json, Value};

use super::{BenchConfig, Endpoint, Prompt};

/// One event of an SSE stream as OpenAI-compatible servers send them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// The payload of a `data:` line (a JSON chunk).
    Data(String),
    /// `data: [DONE]`: the stream is over.
    Done,
}

/// Splits a byte stream into SSE events. Network reads cut lines (and UTF-8 characters)
/// anywhere, so bytes are buffered until a newline; `:` comments (keep-alives), blank
/// lines and other fields (`event:`, `id:`) carry nothing the benchmark needs.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one read's bytes; returns the events whose lines are now complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + nl];
            start += nl + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(ev) = parse_line(line) {
                events.push(ev);
            }
        }
        self.buf.drain(..start);
        events
    }

    /// Whatever is left once the stream ends: a last line without its newline.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let rest = std::mem::take(&mut self.buf);
        let line = rest.strip_suffix(b"\r").unwrap_or(&rest);
        parse_line(line)
    }
}

fn parse_line(line: &[u8]) -> Option<SseEvent> {
    let data = line.strip_prefix(b"data:")?;
    let data = data.strip_prefix(b" ").unwrap_or(data);
    let text = String::from_utf8_lossy(data);
    if text.trim() == "[DONE]" {
        Some(SseEvent::Done)
    } else {
        Some(SseEvent::Data(text.into_owned()))
    }
}

/// What one JSON chunk of a completion stream says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    /// `choices[0].text` (completions) or `choices[0].delta.content` (chat), when non-empty.
    pub text: Option<String>,
    /// `usage.completion_tokens`, sent in the last chunk with `include_usage`.
    pub completion_tokens: Option<u64>,
    pub prompt_tokens: Option<u64>,
}

/// Parses a `data:` payload; an `{"error": ...}` chunk (or garbage) is `Err(message)`.
pub fn parse_chunk(data: &str) -> Result<Chunk, String> {
    let v: Value = serde_json::from_str(data).map_err(|e| format!("bad stream chunk ({e}): {}", clip(data)))?;
    if let Some(err) = v.get("error") {
        return Err(format!("error in stream: {}", error_message(err)));
    }
    let choice = v.get("choices").and_then(|c| c.get(0));
    let text = choice
        .and_then(|c| c.get("text").or_else(|| c.get("delta").and_then(|d| d.get("content"))))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let usage = v.get("usage").filter(|u| !u.is_null());
    Ok(Chunk {
        text,
        completion_tokens: usage.and_then(|u| u.get("completion_tokens")).and_then(Value::as_u64),
        prompt_tokens: usage.and_then(|u| u.get("prompt_tokens")).and_then(Value::as_u64),
    })
}

/// The human part of an OpenAI error object (`{"message": ...}`, or a bare string).
fn error_message(err: &Value) -> String {
    match err {
        Value::String(s) => s.clone(),
        _ => err.get("message").and_then(Value::as_str).map_or_else(|| clip(&err.to_string()), str::to_owned),
    }
}

/// Long bodies (an HTML error page) are cut so one failure stays one line.
fn clip(s: &str) -> String {
    let s = s.trim().replace('\n', " ");
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// A reqwest error as one line naming the URL and the root cause ("connection refused"),
/// which reqwest's own `Display` leaves in the source chain.
pub fn describe_error(e: &reqwest::Error) -> String {
    let url = e.url().map_or_else(|| "the server".to_owned(), |u| u.to_string());
    let mut root: Option<&dyn std::error::Error> = None;
    let mut next = std::error::Error::source(e);
    while let Some(err) = next {
        root = Some(err);
        next = err.source();
    }
    let cause = root.map_or_else(|| e.to_string(), |r| r.to_string());
    if e.is_timeout() {
        format!("request to {url} timed out")
    } else if e.is_connect() {
        format!("cannot connect to {url}: {cause}")
    } else if e.is_body() || e.is_decode() {
        format!("broken response from {url}: {cause}")
    } else {
        format!("request to {url} failed: {cause}")
    }
}

/// The timing of one finished request.
#[derive(Debug, Clone, Default)]
pub struct RequestOutcome {
    pub ttft: Option<Duration>,
    /// Gaps between successive text chunks.
    pub itl: Vec<Duration>,
    pub e2e: Duration,
    pub output_tokens: u64,
    pub prompt_tokens: Option<u64>,
    pub error: Option<String>,
}

/// `base_url` + `path` without doubling the slash (`--base-url` often ends in `/`).
pub fn join_url(base_url: &str, path: &str) -> String {
    format!("{}/{}", base_url.trim_end_matches('/'), path.trim_start_matches('/'))
}

fn authorized(req: reqwest::RequestBuilder, api_key: Option<&str>) -> reqwest::RequestBuilder {
    match api_key {
        Some(key) => req.bearer_auth(key),
        None => req,
    }
}

/// The first model `GET {base_url}/models` lists: what `--model` defaults to.
pub async fn discover_model(client: &Client, base_url: &str, api_key: Option<&str>) -> anyhow::Result<String> {
    let url = join_url(base_url, "models");
    let resp = authorized(client.get(&url), api_key)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(describe_error(&e)))?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| anyhow::anyhow!(describe_error(&e)))?;
    if !status.is_success() {
        anyhow::bail!("GET {url}: HTTP {status}: {}", body_error(&body));
    }
    let v: Value =
        serde_json::from_str(&body).map_err(|e| anyhow::anyhow!("GET {url}: not JSON ({e}): {}", clip(&body)))?;
    v.get("data")
        .and_then(|d| d.get(0))
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("GET {url} lists no model; pass --model"))
}

/// The message of a non-2xx body: the OpenAI error object's, else the body itself.
fn body_error(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error").map(error_message).or_else(|| v.get("message").and_then(Value::as_str).map(str::to_owned))
        })
        .unwrap_or_else(|| clip(body))
}

/// The JSON body of the `index`-th streamed request, for `prompt`.
pub fn request_body(cfg: &BenchConfig, prompt: &Prompt, index: usize) -> Value {
    let mut body = json!({
        "model": cfg.model_for(index),
        "max_tokens": cfg.output_len,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    match (cfg.endpoint, prompt) {
        (Endpoint::Completions, Prompt::Text(t)) => body["prompt"] = json!(t),
        (Endpoint::Completions, Prompt::Ids(ids)) => body["prompt"] = json!(ids),
        (Endpoint::Chat, Prompt::Text(t)) => body["messages"] = json!([{"role": "user", "content": t}]),
        // The CLI refuses this pairing; a message's content has to be text.
        (Endpoint::Chat, Prompt::Ids(ids)) => {
            let text: Vec<String> = ids.iter().map(u32::to_string).collect();
            body["messages"] = json!([{"role": "user", "content": text.join(" ")}]);
        }
    }
    if cfg.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    body
}

/// Sends one streamed request and times it; failures are reported in the outcome, never
/// as a panic or an `Err`, so one bad request doesn't end the level.
pub async fn send_request(client: &Client, cfg: &BenchConfig, prompt: &Prompt, index: usize) -> RequestOutcome {
    let start = Instant::now();
    let mut out = RequestOutcome::default();
    if let Err(e) = stream_request(client, cfg, prompt, index, start, &mut out).await {
        out.error = Some(e);
    }
    out.e2e = start.elapsed();
    out
}

async fn stream_request(
    client: &Client,
    cfg: &BenchConfig,
    prompt: &Prompt,
    index: usize,
    start: Instant,
    out: &mut RequestOutcome,
) -> Result<(), String> {
    let url = join_url(&cfg.base_url, cfg.endpoint.path());
    let req =
        authorized(client.post(&url), cfg.api_key.as_deref()).timeout(cfg.timeout).json(&request_body(cfg, prompt, index));
    let resp = req.send().await.map_err(|e| describe_error(&e))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("HTTP {}: {}", status.as_u16(), body_error(&body)));
    }
    let mut parser = SseParser::new();
    let mut stream = resp.bytes_stream();
    let mut last_text: Option<Instant> = None;
    let mut chunks = 0u64;
    let mut usage_tokens = None;
    let mut done = false;
    'read: while let Some(bytes) = stream.next().await {
        let bytes = bytes.map_err(|e| describe_error(&e))?;
        let now = Instant::now();
        for ev in parser.push(&bytes) {
            let data = match ev {
                SseEvent::Done => {
                    done = true;
                    break 'read;
                }
                SseEvent::Data(d) => d,
            };
            let chunk = parse_chunk(&data)?;
            if chunk.text.is_some() {
                chunks += 1;
                match last_text {
                    None => out.ttft = Some(now - start),
                    Some(prev) => out.itl.push(now - prev),
                }
                last_text = Some(now);
            }
            usage_tokens = chunk.completion_tokens.or(usage_tokens);
            out.prompt_tokens = chunk.prompt_tokens.or(out.prompt_tokens);
        }
    }
    if !done {
        match parser.finish() {
            Some(SseEvent::Done) => {}
            _ => return Err("stream ended without data: [DONE]".to_owned()),
        }
    }
    out.output_tokens = usage_tokens.unwrap_or(chunks);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(parts: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut evs: Vec<SseEvent> = parts.iter().flat_map(|b| p.push(b)).collect();
        evs.extend(p.finish());
        evs
    }

    #[test]
    fn sse_lines_split_across_reads() {
        let whole = "data: {\"choices\":[{\"text\":\"h\u{e9}llo\"}]}\r\n\r\ndata: {\"choices\":[{\"text\":\"!\"}]}\n\ndata: [DONE]\n\n";
        let want = vec![
            SseEvent::Data("{\"choices\":[{\"text\":\"h\u{e9}llo\"}]}".into()),
            SseEvent::Data("{\"choices\":[{\"text\":\"!\"}]}".into()),
            SseEvent::Done,
        ];
        // Every split point, including inside "data:", inside the 2-byte é and between \r and \n.
        let b = whole.as_bytes();
        for i in 0..=b.len() {
            assert_eq!(feed(&[&b[..i], &b[i..]]), want, "split at {i}");
        }
        // One byte per read.
        let bytes: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(feed(&bytes), want);
    }

    #[test]
    fn sse_ignores_comments_blank_lines_and_other_fields() {
        let s = b": keep-alive\n\nevent: message\nid: 3\ndata:{\"x\":1}\n: ping\n\ndata: [DONE]";
        assert_eq!(feed(&[s]), vec![SseEvent::Data("{\"x\":1}".into()), SseEvent::Done]);
        assert_eq!(feed(&[b": only a comment\n\n"]), vec![]);
    }

    #[test]
    fn chunks_give_text_usage_and_errors() {
        let c = parse_chunk(r#"{"choices":[{"index":0,"text":" the"}]}"#).unwrap();
        assert_eq!(c.text.as_deref(), Some(" the"));
        let c = parse_chunk(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#).unwrap();
        assert_eq!(c.text, None, "an empty role-only delta is not the first token");
        let c = parse_chunk(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#).unwrap();
        assert_eq!(c.text.as_deref(), Some("Hi"));
        let c = parse_chunk(r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":64}}"#).unwrap();
        assert_eq!((c.text, c.completion_tokens, c.prompt_tokens), (None, Some(64), Some(12)));
        let c = parse_chunk(r#"{"choices":[{"text":"x"}],"usage":null}"#).unwrap();
        assert_eq!(c.completion_tokens, None);
        let e = parse_chunk(r#"{"error":{"message":"out of KV cache","type":"server_error"}}"#).unwrap_err();
        assert_eq!(e, "error in stream: out of KV cache");
        assert_eq!(parse_chunk(r#"{"error":"plain"}"#).unwrap_err(), "error in stream: plain");
        assert!(parse_chunk("not json").unwrap_err().starts_with("bad stream chunk"));
    }

    #[test]
    fn error_bodies_and_urls() {
        assert_eq!(body_error(r#"{"error":{"message":"model not found"}}"#), "model not found");
        assert_eq!(body_error(r#"{"message":"nope"}"#), "nope");
        assert_eq!(body_error("Bad Gateway\n"), "Bad Gateway");
        assert!(body_error(&"x".repeat(1000)).ends_with("..."));
        assert_eq!(join_url("http://h:1/v1/", "/models"), "http://h:1/v1/models");
        assert_eq!(join_url("http://h:1/v1", "chat/completions"), "http://h:1/v1/chat/completions");
    }

    #[test]
    fn request_bodies() {
        let mut cfg = BenchConfig::new("http://x/v1", "m");
        cfg.output_len = 7;
        let b = request_body(&cfg, &"hi".into(), 0);
        assert_eq!(b["prompt"], "hi");
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["ignore_eos"], true);
        cfg.endpoint = Endpoint::Chat;
        cfg.ignore_eos = false;
        let b = request_body(&cfg, &"hi".into(), 0);
        assert_eq!(b["messages"][0]["content"], "hi");
        assert!(b.get("ignore_eos").is_none() && b.get("prompt").is_none());
        // A list of models is taken in turn.
        let cfg = BenchConfig::new("http://x/v1", "base,a1,a2");
        let models: Vec<Value> = (0..4).map(|i| request_body(&cfg, &"hi".into(), i)["model"].clone()).collect();
        assert_eq!(models, ["base", "a1", "a2", "base"]);
        assert_eq!(request_body(&cfg, &Prompt::Ids(vec![5, 6]), 0)["prompt"], json!([5, 6]));
    }
}
