//! Streaming through the proxy: SSE flushed per event, and 1 GiB each way with the proxy's
//! memory staying flat (bodies are streamed, never buffered whole).
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::runner::{drain_pattern, sandboxes, PatternBody, Runner};
use support::{request, send_streaming, Proxy};

const PREVIEW: &str = "3000-sbx-1.preview.localhost";
const GIB: u64 = 1 << 30;
/// Peak RSS allowed for the (debug build) proxy while moving 1 GiB. Measured at about 17 MiB;
/// a body buffered whole would need more than 1 GiB.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

async fn setup() -> (Runner, Proxy) {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&runner.config(sandboxes()));
    (runner, proxy)
}

/// Reads `path` until `first` arrived, while the runner holds the stream open; then releases
/// the runner and expects `second` and a clean end.
async fn held_stream_flows(path: &str, content_type: &str, first: &[u8], second: &[u8]) {
    let (runner, proxy) = setup().await;
    let req = request("GET", PREVIEW, path)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send_streaming(proxy.addr, req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], content_type);
    let mut body = response.into_body();
    let mut seen = Vec::new();
    // The runner holds the stream open until `release`: the first part can only arrive now if
    // the proxy flushed it on its own.
    while !seen.ends_with(first) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the first part was not flushed")
            .expect("the stream ended early")
            .unwrap();
        seen.extend_from_slice(&frame.into_data().unwrap_or_default());
    }
    assert_eq!(seen, first);
    runner.release();
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], second);
}

#[tokio::test]
async fn sse_first_event_arrives_before_the_upstream_finishes() {
    held_stream_flows(
        "/sse",
        "text/event-stream",
        b"data: first\n\n",
        b"data: second\n\n",
    )
    .await;
}

#[tokio::test]
async fn chunked_octet_stream_flows_without_delay() {
    held_stream_flows(
        "/follow?follow=true",
        "application/octet-stream",
        b"line 1\n",
        b"line 2\n",
    )
    .await;
}

#[tokio::test]
async fn one_gib_download_is_streamed() {
    let (runner, proxy) = setup().await;
    let started = Instant::now();
    let req = request("GET", PREVIEW, &format!("/bytes/{GIB}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send_streaming(proxy.addr, req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], GIB.to_string());
    let (len, intact) = drain_pattern(response.into_body()).await.unwrap();
    let peak = proxy.peak_rss_kib();
    eprintln!(
        "1 GiB download: {:?}, proxy peak RSS {peak} KiB",
        started.elapsed()
    );
    assert_eq!(len, GIB);
    assert!(intact, "the body was altered");
    assert!(
        peak > 0 && peak < RSS_LIMIT_KIB,
        "proxy peak RSS {peak} KiB"
    );
    assert_eq!(runner.seen().len(), 1);
}

#[tokio::test]
async fn one_gib_upload_is_streamed() {
    let (runner, proxy) = setup().await;
    let started = Instant::now();
    let req = request("POST", PREVIEW, "/upload")
        .body(PatternBody::new(GIB, true))
        .unwrap();
    let response = send_streaming(proxy.addr, req).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let peak = proxy.peak_rss_kib();
    eprintln!(
        "1 GiB upload: {:?}, proxy peak RSS {peak} KiB",
        started.elapsed()
    );
    assert_eq!(json["len"], GIB);
    assert_eq!(json["pattern_ok"], true);
    assert!(
        peak > 0 && peak < RSS_LIMIT_KIB,
        "proxy peak RSS {peak} KiB"
    );
    assert_eq!(
        runner.last().all("content-length"),
        [GIB.to_string()],
        "the length is forwarded, not re-chunked"
    );
}

#[tokio::test]
async fn chunked_upload_is_streamed_and_hashed() {
    let (runner, proxy) = setup().await;
    let len = 3 << 20;
    let req = request("PUT", PREVIEW, "/upload")
        .body(PatternBody::new(len, false))
        .unwrap();
    let response = send_streaming(proxy.addr, req).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["len"], len);
    assert_eq!(json["pattern_ok"], true);
    let expected = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut sent = 0u64;
        let mut b = PatternBody::new(len, false);
        while let Some(frame) = b.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            sent += data.len() as u64;
            h.update(&data);
        }
        assert_eq!(sent, len);
        hex::encode(h.finalize())
    };
    assert_eq!(json["sha256"], expected);
    assert_eq!(runner.last().all("transfer-encoding"), ["chunked"]);
}
