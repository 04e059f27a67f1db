//! What keeps a web page from using the server through a visitor's browser, and what keeps a
//! hostile JSON body from costing more than its size, all checked at the edge:
//!
//! - [`Guard`] and its middleware [`check`]: the `Host` header of a server bound to a loopback
//!   address must be a loopback name or an `--allowed-host` (DNS rebinding), and a request
//!   carrying an `Origin` must come from an origin `--cors-origin` allows or from the server's
//!   own pages (403 otherwise, as Ollama does with `OLLAMA_ORIGINS`);
//! - [`require_json`]: JSON routes take `Content-Type: application/json` only (415), so a page
//!   cannot post a JSON body as a "simple" `text/plain` or form request that skips CORS;
//! - [`check_depth`]: one linear pass over a JSON body that refuses nesting deeper than
//!   [`MAX_JSON_DEPTH`] (400) before serde sees it; [`large_parse_slot`]: large bodies are
//!   parsed off the async workers, one per core at a time.
//!
//! Same-origin rule: a request whose `Origin` is `http(s)://` + its own `Host` is the server's
//! own page (the playground at `/ui`) when that Host can only name this server: a loopback name
//! or address, any IP address, or an `--allowed-host`. A DNS name outside those is what a
//! rebinding page would send, so it needs `--cors-origin`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, OnceLock},
};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap},
    middleware::Next,
    response::Response,
};
use tokio::sync::Semaphore;

use super::{error_response, ApiError, ServerConfig};

/// Deepest nesting of arrays and objects a request body may have. Real requests (messages,
/// content parts, tool schemas) stay under ten; the bound keeps serde's recursion, and any
/// tree a field is parsed into, small whatever a body holds.
pub const MAX_JSON_DEPTH: usize = 64;

/// The `Host` and `Origin` rules of one server, built once from its [`ServerConfig`].
#[derive(Clone, Debug)]
pub struct Guard {
    /// `--cors-origin '*'`: any origin may call.
    any_origin: bool,
    /// `--cors-origin` values, lower-cased, without a trailing `/`.
    origins: Vec<String>,
    /// Bound to a loopback address: refuse Host names that are not loopback or allowed.
    check_host: bool,
    /// `--allowed-host` values, lower-cased: `name`, `.domain` (it and its subdomains) or `*`.
    allowed_hosts: Vec<String>,
}

impl Guard {
    pub fn new(config: &ServerConfig) -> Self {
        let origins: Vec<String> = config.cors_origins.iter().map(|o| normalize_origin(o)).collect();
        Self {
            any_origin: origins.iter().any(|o| o == "*"),
            origins,
            check_host: config.check_host,
            allowed_hosts: config.allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
        }
    }

    /// `Ok` when a request with these headers may go on; the 403 otherwise.
    pub fn admit(&self, headers: &HeaderMap, uri_authority: Option<&str>) -> Result<(), ApiError> {
        let host = match headers.get(header::HOST) {
            Some(v) => Some(v.to_str().map_err(|_| host_refused("(not text)"))?),
            // HTTP/2 carries the authority in the URI.
            None => uri_authority,
        };
        // No Host at all: no name a rebinding page could have used (browsers always send one).
        if let (true, Some(h)) = (self.check_host, host) {
            if !self.host_allowed(h) {
                return Err(host_refused(h));
            }
        }
        let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
        if self.any_origin {
            return Ok(());
        }
        let origin = origin.to_str().map_err(|_| origin_refused("(not text)"))?;
        if self.origin_allowed(origin, host) {
            Ok(())
        } else {
            Err(origin_refused(origin))
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else { return false };
        is_loopback_name(&name) || self.listed_host(&name)
    }

    fn listed_host(&self, name: &str) -> bool {
        self.allowed_hosts.iter().any(|a| match a.strip_prefix('.') {
            _ if a == "*" => true,
            Some(domain) => name == domain || name.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.')),
            None => name == a,
        })
    }

    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = normalize_origin(origin);
        if self.origins.contains(&origin) {
            return true;
        }
        // The server's own pages: same scheme-less authority as the Host they were served under.
        let Some(host) = host else { return false };
        let Some(authority) = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) else {
            return false;
        };
        let Some(name) = host_name(host) else { return false };
        authority == host.trim().to_ascii_lowercase()
            && (is_loopback_name(&name) || name.parse::<IpAddr>().is_ok() || self.listed_host(&name))
    }
}

/// The middleware: [`Guard::admit`] before auth and routing, errors in the route's shape.
pub async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    match guard.admit(req.headers(), authority.as_deref()) {
        Ok(()) => next.run(req).await,
        Err(e) => error_response(req.uri().path(), e),
    }
}

/// `Origin` as browsers send it: lower case, no trailing `/`.
fn normalize_origin(o: &str) -> String {
    o.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The name part of a `Host` value (`name`, `name:port`, `[v6]:port`), lower case, without a
/// trailing dot; `None` when it is not of that form.
fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        v6.parse::<Ipv6Addr>().ok()?;
        return Some(format!("[{}]", v6.to_ascii_lowercase()));
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return None,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// `localhost`, `*.localhost` (RFC 6761: always loopback), 127.0.0.0/8 and `[::1]`.
fn is_loopback_name(name: &str) -> bool {
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6
            .parse::<Ipv6Addr>()
            .is_ok_and(|a| a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
    }
    name.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

/// At most 100 characters of a header value, for an error message.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(100).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn host_refused(host: &str) -> ApiError {
    let mut e = ApiError::forbidden(format!(
        "the Host header `{}` is not a loopback name or address: this server is bound to a loopback \
         address and refuses other names (DNS rebinding); start it with --allowed-host NAME to serve \
         it under that name",
        clip(host)
    ));
    e.code = Some("host_not_allowed".into());
    e
}

fn origin_refused(origin: &str) -> ApiError {
    let mut e = ApiError::forbidden(format!(
        "requests from the web origin `{}` (the Origin header) are not allowed: start the server with \
         --cors-origin {} to allow it",
        clip(origin),
        clip(origin)
    ));
    e.code = Some("origin_not_allowed".into());
    e
}

/// A turn to parse a body over `INLINE_PARSE_BYTES`: at most one per core at once, server-wide.
/// Serde may build a tree several times a body's size (a `serde_json::Value`, the buffer of an
/// untagged enum), so this bounds that memory and the cores it takes; small bodies never wait.
pub async fn large_parse_slot() -> tokio::sync::SemaphorePermit<'static> {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));
    slots.acquire().await.expect("the semaphore is never closed")
}

/// `application/json`, with or without parameters (`; charset=utf-8`), or any `+json` type.
pub fn is_json_content_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// 415 unless the request says its body is JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        Some(Ok(v)) if is_json_content_type(v) => Ok(()),
        Some(Ok(v)) => Err(ApiError::unsupported_media_type(format!(
            "the Content-Type header is `{}`, but this route takes JSON: send `Content-Type: application/json`",
            clip(v)
        ))),
        Some(Err(_)) => Err(ApiError::unsupported_media_type(
            "the Content-Type header is not text; this route takes JSON: send `Content-Type: application/json`",
        )),
        None => Err(ApiError::unsupported_media_type(
            "the request has no Content-Type header; this route takes JSON: send `Content-Type: application/json`",
        )),
    }
}

/// Refuses (400) a body whose arrays and objects nest deeper than [`MAX_JSON_DEPTH`], naming
/// the top-level field they are in. One pass, no allocation; it only counts brackets outside
/// strings, so anything else wrong with the body is left for serde to report.
pub fn check_depth(body: &[u8]) -> Result<(), ApiError> {
    let mut depth = 0usize;
    // The last string that ended at depth 1, and the one before a `:` there (the current key).
    let mut last_string = 0..0;
    let mut key = 0..0;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                let start = i + 1;
                i = start;
                // Skip to the closing quote; a backslash escapes the byte after it.
                while i < body.len() {
                    match body[i] {
                        b'"' => break,
                        b'\\' => i += 2,
                        _ => i += 1,
                    }
                }
                if depth == 1 {
                    last_string = start..i.min(body.len());
                }
            }
            b':' if depth == 1 => key = last_string.clone(),
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    let msg = format!("the request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels");
                    return Err(match std::str::from_utf8(&body[key]) {
                        Ok(k) if !k.is_empty() => {
                            let k = clip(k);
                            ApiError::invalid(k.clone(), format!("`{k}`: {msg}"))
                        }
                        _ => ApiError::bad_body(msg),
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::http::{HeaderMap, HeaderValue, StatusCode};

    use super::*;

    fn nested(n: usize) -> String {
        format!(r#"{{"model":"m","x":{}{}}}"#, "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn depth_limit_counts_brackets_outside_strings() {
        assert!(check_depth(nested(MAX_JSON_DEPTH - 1).as_bytes()).is_ok());
        let e = check_depth(nested(MAX_JSON_DEPTH).as_bytes()).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some("x")));
        // Brackets inside strings, escaped quotes included, are text.
        let text = format!(r#"{{"a":"\"{}","b":[1]}}"#, "[".repeat(1000));
        assert!(check_depth(text.as_bytes()).is_ok());
        let escaped = format!(r#"{{"a":"\\","b":{}{}}}"#, "[".repeat(100), "]".repeat(100));
        assert_eq!(check_depth(escaped.as_bytes()).unwrap_err().param.as_deref(), Some("b"));
        // A top-level array (refused later anyway) names no field.
        assert_eq!(check_depth("[".repeat(100).as_bytes()).unwrap_err().param, None);
        // An unterminated string ends the scan without a panic.
        assert!(check_depth(br#"{"a":"\"#).is_ok());
    }

    /// Where the time of a hostile body goes (printed, not asserted: the route tests in
    /// server/tests/guard.rs hold the bound). Serde alone accepts 100,000 nested arrays in an
    /// unknown field (`IgnoredAny` skips them iteratively) and stops at its own recursion
    /// limit inside known fields; what costs is a long flat array where an untagged enum
    /// (`content`) buffers it into serde's `Content` tree before trying each variant.
    #[test]
    fn hostile_body_timings() {
        use crate::api::{parse_json, types::ChatCompletionRequest};
        let chat = |field: &str, value: &str| {
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"{field}":{value}}}"#)
        };
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let flat = format!("[{}0]", "0,".repeat(999_999));
        let flat_content = format!(r#"{{"model":"m","messages":[{{"role":"user","content":{flat}}}]}}"#);
        for (name, body) in
            [("100k nested, unknown field", chat("x", &deep)), ("1M numbers in `content`", flat_content)]
        {
            let t = Instant::now();
            let scan = check_depth(body.as_bytes()).is_ok();
            let scanned = t.elapsed();
            let de = &mut serde_json::Deserializer::from_slice(body.as_bytes());
            let t = Instant::now();
            let serde_only = serde_path_to_error::deserialize::<_, ChatCompletionRequest>(de).is_ok();
            let serde_time = t.elapsed();
            let t = Instant::now();
            let edge = parse_json::<ChatCompletionRequest>(body.as_bytes()).map_err(|e| e.status);
            eprintln!(
                "{name} ({} bytes): pre-scan {scanned:?} (ok: {scan}); serde alone {serde_time:?} (ok: \
                 {serde_only}); JsonBody's parse {:?} ({edge:?})",
                body.len(),
                t.elapsed()
            );
        }
    }

    #[test]
    fn content_types() {
        for ok in ["application/json", "Application/JSON; charset=utf-8", "application/merge-patch+json"] {
            assert!(is_json_content_type(ok), "{ok}");
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "json"] {
            assert!(!is_json_content_type(bad), "{bad}");
        }
        let mut h = HeaderMap::new();
        assert_eq!(require_json(&h).unwrap_err().status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(require_json(&h).unwrap_err().message.contains("Content-Type"));
    }

    fn guard(cors: &[&str], check_host: bool, allowed: &[&str]) -> Guard {
        Guard::new(&ServerConfig {
            cors_origins: cors.iter().map(|s| s.to_string()).collect(),
            check_host,
            allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
            ..ServerConfig::default()
        })
    }

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(header::HOST, HeaderValue::from_str(v).unwrap());
        }
        if let Some(v) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn loopback_hosts() {
        let g = guard(&[], true, &[]);
        for ok in [
            "localhost",
            "LOCALHOST:8000",
            "app.localhost:1",
            "127.0.0.1:8000",
            "127.9.9.9",
            "[::1]:8000",
            "[::1]",
            "localhost.",
        ] {
            assert!(g.admit(&headers(Some(ok), None), None).is_ok(), "{ok}");
        }
        for bad in
            ["evil.com", "evil.com:8000", "localhost.evil.com", "10.0.0.1:8000", "[::2]:80", "127.0.0.1:x", "", "[::1"]
        {
            let e = g.admit(&headers(Some(bad), None), None).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{bad}");
            assert!(e.message.contains("Host"), "{}", e.message);
        }
        assert!(g.admit(&headers(None, None), Some("evil.com")).is_err());
        assert!(g.admit(&headers(None, None), None).is_ok());
        // --allowed-host names (and `.domain` with its subdomains) pass; a bind that is not
        // loopback checks nothing.
        let g = guard(&[], true, &["flint.internal", ".example.com"]);
        for ok in ["flint.internal:8000", "example.com", "a.b.example.com:80"] {
            assert!(g.admit(&headers(Some(ok), None), None).is_ok(), "{ok}");
        }
        assert!(g.admit(&headers(Some("badexample.com"), None), None).is_err());
        assert!(guard(&[], false, &[]).admit(&headers(Some("evil.com"), None), None).is_ok());
        assert!(guard(&[], true, &["*"]).admit(&headers(Some("evil.com"), None), None).is_ok());
    }

    #[test]
    fn origins() {
        let g = guard(&["http://App.example/"], true, &[]);
        let check = |host: Option<&str>, origin: &str| g.admit(&headers(host, Some(origin)), None);
        assert!(check(Some("localhost:8000"), "http://app.example").is_ok());
        let e = check(Some("localhost:8000"), "http://evil.example").unwrap_err();
        assert!(e.message.contains("Origin") && e.message.contains("evil.example"), "{}", e.message);
        assert!(check(Some("localhost:8000"), "null").is_err());
        // The server's own pages, under a loopback name, pass; another local port does not.
        assert!(check(Some("localhost:8000"), "http://localhost:8000").is_ok());
        assert!(check(Some("127.0.0.1:8000"), "http://127.0.0.1:8000").is_ok());
        assert!(check(Some("localhost:8000"), "http://localhost:3000").is_err());
        assert!(check(None, "http://localhost:8000").is_err());
        // Bound elsewhere: an IP address is the server's own; a DNS name may be a rebinding page.
        let g = guard(&[], false, &["flint.lan"]);
        let check = |host: &str, origin: &str| g.admit(&headers(Some(host), Some(origin)), None);
        assert!(check("192.168.1.5:8000", "http://192.168.1.5:8000").is_ok());
        assert!(check("evil.com:8000", "http://evil.com:8000").is_err());
        assert!(check("flint.lan", "https://flint.lan").is_ok());
        assert!(guard(&["*"], true, &[]).admit(&headers(Some("localhost"), Some("http://any.example")), None).is_ok());
    }
}
