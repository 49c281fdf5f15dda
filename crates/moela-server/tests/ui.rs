//! The chat page's routes in-process: served without a key while the API needs one, with its
//! content types, security policy and cache validation. The page itself is driven in a real
//! browser by `tests/browser/`.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{engine_config, gauge, get, send, server_with, v3_tokenizer};
use moela_server::{ApiKeys, Settings, CONTENT_SECURITY_POLICY};

fn keyed_server() -> common::Server {
    let mut settings = Settings::new("v3");
    settings.keys = ApiKeys::single("sk-ui").unwrap();
    server_with(settings, engine_config(), v3_tokenizer())
}

fn request(method: Method, path: &str, etag: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = etag {
        b = b.header(header::IF_NONE_MATCH, t);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn the_page_and_its_files_need_no_key_and_carry_type_policy_and_etag() {
    let s = keyed_server();
    let files = [
        (
            "/",
            "text/html; charset=utf-8",
            "<script src=\"/ui/app.js\"",
        ),
        (
            "/ui/app.js",
            "text/javascript; charset=utf-8",
            "/v1/chat/completions",
        ),
        ("/ui/style.css", "text/css; charset=utf-8", "#messages"),
        ("/ui/icon.svg", "image/svg+xml", "<svg"),
    ];
    for (path, content_type, needle) in files {
        let r = send(&s.app, get(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        let h = |name: header::HeaderName| {
            r.headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(h(header::CONTENT_TYPE), content_type, "{path}");
        assert_eq!(h(header::CONTENT_SECURITY_POLICY), CONTENT_SECURITY_POLICY);
        assert_eq!(h(header::CACHE_CONTROL), "no-cache", "{path}");
        assert_eq!(h(header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
        assert!(r.text().contains(needle), "{path} lacks {needle:?}");

        // Revalidation: the same tag answers 304 with no body; another tag gets the file.
        let etag = h(header::ETAG);
        assert!(
            etag.len() == 18 && etag.starts_with('"'),
            "{path}: {etag:?}"
        );
        let r = send(&s.app, request(Method::GET, path, Some(&etag))).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(r.body.is_empty());
        let r = send(&s.app, request(Method::GET, path, Some("\"0\""))).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");

        let r = send(&s.app, request(Method::HEAD, path, None)).await;
        assert_eq!(r.status, StatusCode::OK, "HEAD {path}");
        assert!(r.body.is_empty(), "HEAD {path}");
    }
    // The policy allows this origin only and no inline script.
    assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self';"));
    assert!(CONTENT_SECURITY_POLICY.contains("default-src 'none'"));
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    // Requests to the page are counted under their own endpoint label.
    let page = gauge(&s, r#"moela_requests_total{endpoint="/",status="200"}"#);
    assert!(page >= 3.0, "{page}");
}

#[tokio::test]
async fn the_api_still_needs_the_key_and_unknown_files_are_404() {
    let s = keyed_server();
    send(&s.app, get("/v1/models"))
        .await
        .error(StatusCode::UNAUTHORIZED);
    assert_eq!(send(&s.app, get("/health")).await.status, StatusCode::OK);
    for path in [
        "/ui/",
        "/ui/nothing.js",
        "/ui/index.html",
        "/index.html",
        "/ui/a/b",
    ] {
        send(&s.app, get(path)).await.error(StatusCode::NOT_FOUND);
    }
    send(&s.app, request(Method::POST, "/", None))
        .await
        .error(StatusCode::METHOD_NOT_ALLOWED);
}
