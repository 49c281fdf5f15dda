//! The chat page: `GET /` and its files under `/ui/`, plain HTML, CSS and JavaScript embedded in
//! the binary (no build step, nothing loaded from another origin).
//!
//! The page is a client of `POST /v1/chat/completions` like any other: it needs no key itself,
//! only its API calls do. Every file is sent with a Content-Security-Policy that allows scripts,
//! styles, images and requests from this origin only (no inline script, no `eval`), and with an
//! `ETag` (a hash of the bytes) under `Cache-Control: no-cache`, so browsers revalidate and get
//! `304 Not Modified` until the binary changes.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::AppState;

/// Sent with every file of the page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// The name under `/ui/` (`index.html` is served at `/`).
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// FNV-1a of `body`, the `ETag`.
    hash: u64,
}

/// FNV-1a, 64 bits: a content tag computed at compile time, not a security measure.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../ui/", $name)),
            hash: fnv1a(include_bytes!(concat!("../ui/", $name))),
        }
    };
}

const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

const FILES: [Asset; 3] = [
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// `GET /` and `GET /ui/{file}` (HEAD too), outside the API key check.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    respond(&INDEX, &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    FILES
        .iter()
        .find(|a| a.name == name)
        .map(|a| respond(a, &headers))
        .ok_or_else(|| ApiError::NotFound(format!("no file /ui/{name}")))
}

/// Whether an `If-None-Match` header names `etag` (or is `*`); weak tags compare equal.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn respond(asset: &Asset, headers: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.hash);
    let mut resp = if matches_etag(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, asset.content_type)],
            axum::body::Bytes::from_static(asset.body),
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    let fixed = [
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_compare_strong_weak_lists_and_star() {
        let tag = "\"00000000000000ab\"";
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(v));
            matches_etag(&h, tag)
        };
        assert!(with("\"00000000000000ab\""));
        assert!(with("W/\"00000000000000ab\""));
        assert!(with("\"x\", \"00000000000000ab\""));
        assert!(with("*"));
        assert!(!with("\"00000000000000ac\""));
        assert!(!with("00000000000000ab"));
        assert!(!matches_etag(&HeaderMap::new(), tag));
    }

    #[test]
    fn the_page_loads_only_files_that_are_served() {
        let html = std::str::from_utf8(INDEX.body).unwrap_or_default();
        let refs: Vec<&str> = html
            .split("\"/ui/")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .collect();
        assert!(refs.len() >= 3, "{refs:?}");
        for r in refs {
            assert!(FILES.iter().any(|a| a.name == r), "{r} is not embedded");
        }
        // No inline script, handler or style: the policy forbids them.
        assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains("style="));
        let handler = html.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "inline event handler in index.html");
    }
}
