//! A start hook (`[registry.wake] url`) on a free loopback port: every `POST` is recorded
//! (path, `Authorization`) when it arrives, then answered after the configured delay (and after
//! the [`Gate`] opens) with the configured status: 200 by default, which tells the proxy the
//! sandbox is up (how the static registry wakes); a non-2xx answer carries a JSON `message`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::gate::Gate;

/// One call as the hook received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCall {
    pub method: String,
    pub path: String,
    pub authorization: String,
}

/// How the hook answers.
#[derive(Debug, Clone)]
pub struct HookReply {
    pub delay: Duration,
    pub status: u16,
    /// The JSON body's `message` (a non-2xx answer's reason).
    pub message: String,
}

struct State {
    calls: Mutex<Vec<HookCall>>,
    reply: Mutex<HookReply>,
    gate: Gate,
}

pub struct Hook {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hook {
    /// A hook answering 200 after `delay`.
    pub async fn start(delay: Duration) -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            calls: Mutex::default(),
            reply: Mutex::new(HookReply {
                delay,
                status: 200,
                message: String::new(),
            }),
            gate: Gate::default(),
        });
        let served = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Hook { addr, state, task }
    }

    /// The `[registry.wake] url` for this hook.
    pub fn url(&self) -> String {
        format!("http://{}/api/sandbox/{{id}}/start", self.addr)
    }

    /// From now on, answer `status` (with `message`) after `delay`.
    pub fn answer(&self, delay: Duration, status: u16, message: &str) {
        *self.state.reply.lock().unwrap() = HookReply {
            delay,
            status,
            message: message.into(),
        };
    }

    pub fn gate(&self) -> &Gate {
        &self.state.gate
    }

    pub fn calls(&self) -> Vec<HookCall> {
        self.state.calls.lock().unwrap().clone()
    }

    /// Calls made to start sandbox `id`.
    pub fn calls_for(&self, id: &str) -> usize {
        let path = format!("/api/sandbox/{id}/start");
        self.calls().iter().filter(|c| c.path == path).count()
    }
}

impl State {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.calls.lock().unwrap().push(HookCall {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            authorization,
        });
        let reply = self.reply.lock().unwrap().clone();
        tokio::time::sleep(reply.delay).await;
        self.gate.passed().await;
        let body = serde_json::json!({ "message": reply.message }).to_string();
        Response::builder()
            .status(reply.status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }
}
