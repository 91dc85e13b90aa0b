//! `sandgate logs --sandbox ID [--follow]`: a sandbox's request log, read from the admin
//! listener (`GET /sandboxes/<id>/requests`, `?follow=1` for the live stream).

use std::path::PathBuf;

use bytes::Bytes;
use http::header::HOST;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::config::Config;

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The sandbox whose requests to show.
    #[arg(long)]
    sandbox: String,
    /// Keep streaming new requests until Ctrl-C or the proxy closes the stream.
    #[arg(long)]
    follow: bool,
    /// One JSON object per line instead of readable text.
    #[arg(long)]
    json: bool,
    /// Only the last N requests (of the backlog, with --follow).
    #[arg(long)]
    limit: Option<usize>,
    /// The proxy's config file: its `[admin] listen` is where to ask.
    #[arg(long, short, env = "SANDGATE_CONFIG")]
    config: Option<PathBuf>,
    /// The admin listener's URL, e.g. http://127.0.0.1:9090 (wins over --config).
    #[arg(long)]
    admin: Option<String>,
}

pub async fn run(args: LogsArgs) -> Result<(), String> {
    let authority = admin_authority(&args)?;
    let mut path = format!("/sandboxes/{}/requests?", args.sandbox);
    if let Some(limit) = args.limit {
        path.push_str(&format!("limit={limit}&"));
    }
    if args.follow {
        path.push_str("follow=1");
    }
    let response = get(&authority, &path).await?;
    let status = response.status();
    let mut body = response.into_body();
    if status != StatusCode::OK {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Err(format!("the admin listener answered {status}: {message}"));
    }
    if !args.follow {
        let bytes = body
            .collect()
            .await
            .map_err(|e| format!("reading the request log: {e}"))?
            .to_bytes();
        let list: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the admin listener sent no request log: {e}"))?;
        for entry in list["requests"].as_array().into_iter().flatten() {
            println!("{}", line(entry, args.json));
        }
        return Ok(());
    }
    let mut events = Events::default();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(frame) = frame else {
            return Ok(()); // the proxy ended the stream (it is shutting down)
        };
        let frame = frame.map_err(|e| format!("the request log stream broke: {e}"))?;
        if let Ok(data) = frame.into_data() {
            events.feed(&data, |event, data| show(event, data, args.json));
        }
    }
}

/// `host:port` of the admin listener, from `--admin` or the config's `[admin] listen` (an
/// unspecified address such as 0.0.0.0 is reached on loopback).
fn admin_authority(args: &LogsArgs) -> Result<String, String> {
    if let Some(url) = &args.admin {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(format!("--admin {url:?}: expected http://host:port"));
        }
        return Ok(authority.to_string());
    }
    let config = Config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    let Some(mut addr) = config.admin.listen else {
        return Err(
            "no admin listener: set [admin] listen in the proxy's config, or pass --admin URL"
                .into(),
        );
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr.to_string())
}

async fn get(authority: &str, path: &str) -> Result<http::Response<hyper::body::Incoming>, String> {
    let unreachable =
        |e: &dyn std::fmt::Display| format!("cannot reach the admin listener at {authority}: {e}");
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("--sandbox: {e}"))?;
    sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(&e))
}

/// Server-Sent Events, split as they arrive: each complete event goes to the callback with its
/// `event` name and `data`; comments (keep-alives) are skipped.
#[derive(Default)]
struct Events {
    pending: Vec<u8>,
}

impl Events {
    fn feed(&mut self, data: &[u8], mut each: impl FnMut(&str, &str)) {
        self.pending.extend_from_slice(data);
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let (mut event, mut data) = ("message", String::new());
            for field in text.lines() {
                if let Some(name) = field.strip_prefix("event: ") {
                    event = name;
                } else if let Some(value) = field.strip_prefix("data: ") {
                    data.push_str(value);
                }
            }
            if !data.is_empty() {
                each(event, &data);
            }
        }
    }
}

fn show(event: &str, data: &str, json: bool) {
    let Ok(value) = serde_json::from_str::<Value>(data) else {
        return;
    };
    match event {
        "request" => println!("{}", line(&value, json)),
        "dropped" => eprintln!(
            "sandgate: {} requests were missed (this reader fell behind the ring)",
            value["dropped"]
        ),
        _ => {}
    }
}

/// `2026-12-01T20:00:00.123456Z 200 GET /path 1.234ms 5B preview:3000 req=…`, or the entry's
/// JSON.
fn line(entry: &Value, json: bool) -> String {
    if json {
        return entry.to_string();
    }
    let text = |key: &str| entry[key].as_str().unwrap_or("-").to_string();
    let mut out = format!(
        "{} {} {} {}{}",
        text("time"),
        entry["status"],
        text("method"),
        text("path"),
        if entry["path_truncated"] == true {
            "…"
        } else {
            ""
        },
    );
    let micros = entry["micros"].as_u64().unwrap_or(0);
    out.push_str(&format!(" {}.{:03}ms", micros / 1000, micros % 1000));
    match entry["bytes"].as_u64() {
        Some(bytes) => out.push_str(&format!(" {bytes}B")),
        None => out.push_str(" -"),
    }
    out.push(' ');
    out.push_str(&text("kind"));
    if let Some(port) = entry["port"].as_u64() {
        out.push_str(&format!(":{port}"));
    }
    if let Some(id) = entry["request_id"].as_str() {
        out.push_str(&format!(" req={id}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_joined_and_comments_skipped() {
        let mut events = Events::default();
        let mut seen = Vec::new();
        let mut push = |e: &str, d: &str| seen.push(format!("{e}={d}"));
        events.feed(b": keep-alive\n\nid: 1\nevent: request\nda", &mut push);
        events.feed(b"ta: {\"a\":1}\n\nevent: dropped\ndata: {}\n\n", &mut push);
        assert_eq!(seen, ["request={\"a\":1}", "dropped={}"]);
    }

    #[test]
    fn a_readable_line_has_every_field() {
        let entry = serde_json::json!({
            "seq": 3, "time": "2026-12-01T20:00:00.000001Z", "method": "GET", "path": "/a",
            "path_truncated": true, "status": 401, "micros": 1234, "bytes": 5,
            "kind": "preview", "port": 3000, "request_id": "r-1"
        });
        assert_eq!(
            line(&entry, false),
            "2026-12-01T20:00:00.000001Z 401 GET /a… 1.234ms 5B preview:3000 req=r-1"
        );
    }
}
