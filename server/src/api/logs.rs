//! `GET /admin/logs?limit=N&level=warn`: the most recent lines from the in-memory log ring
//! ([`crate::logs::LogRing`]), so an operator can see what the server just did without access
//! to its stderr.

use std::collections::HashMap;

use axum::{extract::Query, Json};
use serde::{Deserialize, Serialize};
use tracing::Level;

use crate::{
    api::ApiError,
    logs::{LogLine, LogRing},
};

/// Lines returned when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 10_000;

/// The raw query. Values stay strings so that bad ones become an OpenAI-shaped [`ApiError`]
/// from [`recent_logs`] rather than axum's plain-text rejection; it is read through a map so
/// a repeated key (last one wins) cannot be rejected by the extractor either.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(from = "HashMap<String, String>")]
pub struct LogsQuery {
    pub limit: Option<String>,
    pub level: Option<String>,
}

impl From<HashMap<String, String>> for LogsQuery {
    fn from(mut m: HashMap<String, String>) -> Self {
        Self { limit: m.remove("limit"), level: m.remove("level") }
    }
}

/// `{"object": "list", "data": [...]}`, oldest line first.
#[derive(Serialize, Debug)]
pub struct LogsResponse {
    pub object: &'static str,
    pub data: Vec<LogLine>,
}

/// `limit` in `1..=MAX_LIMIT` (default [`DEFAULT_LIMIT`]).
fn parse_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    let Some(raw) = raw else { return Ok(DEFAULT_LIMIT) };
    match raw.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid("limit", format!("`limit` must be an integer from 1 to {MAX_LIMIT}, got `{raw}`"))),
    }
}

/// `level`, case-insensitive; only the five names (tracing's parser would also take digits).
fn parse_level(raw: Option<&str>) -> Result<Option<Level>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let level = match raw.trim().to_ascii_lowercase().as_str() {
        "trace" => Level::TRACE,
        "debug" => Level::DEBUG,
        "info" => Level::INFO,
        "warn" => Level::WARN,
        "error" => Level::ERROR,
        _ => {
            return Err(ApiError::invalid(
                "level",
                format!("`level` must be one of trace, debug, info, warn, error; got `{raw}`"),
            ))
        }
    };
    Ok(Some(level))
}

/// Validates `q` and reads `ring` (an empty list when there is none).
fn read(ring: Option<&LogRing>, q: &LogsQuery) -> Result<LogsResponse, ApiError> {
    let limit = parse_limit(q.limit.as_deref())?;
    let level = parse_level(q.level.as_deref())?;
    let data = ring.map(|r| r.recent(limit, level)).unwrap_or_default();
    Ok(LogsResponse { object: "list", data })
}

/// `GET /admin/logs`: the newest `limit` lines (default 100, at most 10000) at `level` or more
/// severe (default: all), oldest first. Empty if logging was never initialised.
pub async fn recent_logs(Query(q): Query<LogsQuery>) -> Result<Json<LogsResponse>, ApiError> {
    let ring = crate::logs::global();
    read(ring.as_deref(), &q).map(Json)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn query(limit: Option<&str>, level: Option<&str>) -> LogsQuery {
        LogsQuery { limit: limit.map(Into::into), level: level.map(Into::into) }
    }

    fn ring_with(levels: &[&str]) -> LogRing {
        let ring = LogRing::new(100);
        for (i, lvl) in levels.iter().enumerate() {
            ring.push(LogLine {
                timestamp: String::new(),
                level: (*lvl).into(),
                target: "t".into(),
                message: i.to_string(),
                fields: Default::default(),
            });
        }
        ring
    }

    #[test]
    fn bad_limit_and_level_are_400_with_param() {
        for bad in ["0", "10001", "-1", "abc", ""] {
            let e = read(None, &query(Some(bad), None)).expect_err(bad);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.param.as_deref(), Some("limit"));
        }
        for bad in ["loud", "3", ""] {
            let e = read(None, &query(None, Some(bad))).expect_err(bad);
            assert_eq!(e.param.as_deref(), Some("level"));
        }
    }

    #[test]
    fn filters_and_limits() {
        let ring = ring_with(&["INFO", "WARN", "ERROR", "DEBUG", "WARN"]);
        let r = read(Some(&ring), &query(Some("2"), Some("WaRn"))).expect("valid query");
        assert_eq!(r.object, "list");
        let msgs: Vec<_> = r.data.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(msgs, ["2", "4"]);
        assert_eq!(read(Some(&ring), &LogsQuery::default()).expect("defaults").data.len(), 5);
    }

    #[tokio::test]
    async fn handler_without_init_returns_empty_list() {
        let Json(r) = recent_logs(Query(query(Some("10000"), Some("error")))).await.expect("valid query");
        assert_eq!(r.object, "list");
        assert!(r.data.is_empty());
        assert!(recent_logs(Query(query(Some("0"), None))).await.is_err());
    }

    #[test]
    fn query_string_parses_through_a_map() {
        let q: LogsQuery = serde_urlencoded_like("limit=5&level=warn&limit=7&other=1");
        assert_eq!(q.limit.as_deref(), Some("7"));
        assert_eq!(q.level.as_deref(), Some("warn"));
    }

    /// Parses a query string the way axum's `Query` does (serde_urlencoded via its map form).
    fn serde_urlencoded_like(s: &str) -> LogsQuery {
        let uri: axum::http::Uri = format!("/admin/logs?{s}").parse().expect("valid uri");
        Query::<LogsQuery>::try_from_uri(&uri).expect("query parses").0
    }
}
