//! The one response body type: streamed from upstream, or a small body the proxy made itself.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::activity::StreamGuard;
use crate::http::client_io::ConnectionEnd;
use crate::http::upstream::Lease;
use crate::registry::InflightGuard;

/// What a response body holds until it ends: the activity guard of a long-lived stream and the
/// sandbox's in-flight slot.
#[derive(Default)]
pub struct Guards {
    pub activity: Option<StreamGuard>,
    pub inflight: Option<InflightGuard>,
    /// The client connection's limit slots, for relays that outlive the HTTP connection.
    pub connection: Option<crate::base::ConnectionSlots>,
}

pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    /// Streamed from upstream frame by frame (never buffered), holding its guards until the
    /// body ends or the client goes away. The upstream connection goes back to the pool when
    /// the body has been read to its end.
    Upstream {
        body: Incoming,
        lease: Option<Lease>,
        guards: Guards,
        /// The client connection to reset if this body fails (HTTP/1).
        reset_on_error: Option<Arc<ConnectionEnd>>,
    },
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn upstream(body: Incoming, guards: Guards, lease: Option<Lease>) -> ProxyBody {
        let mut lease = lease;
        if body.is_end_stream() {
            release(&mut lease);
        }
        ProxyBody::Upstream {
            body,
            lease,
            guards,
            reset_on_error: None,
        }
    }

    /// Made by the proxy rather than streamed from upstream.
    pub fn is_generated(&self) -> bool {
        !matches!(self, ProxyBody::Upstream { .. })
    }

    /// If this upstream body fails midway, the client connection is reset: on HTTP/1 nothing
    /// else tells a client reading to the end of the connection that the body is incomplete.
    pub fn reset_connection_on_error(&mut self, end: &Arc<ConnectionEnd>) {
        if let ProxyBody::Upstream { reset_on_error, .. } = self {
            *reset_on_error = Some(end.clone());
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            // An upstream error mid-stream propagates, so hyper aborts the client connection
            // instead of ending the body as if it were complete.
            ProxyBody::Upstream {
                body,
                lease,
                reset_on_error,
                guards,
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let (Poll::Ready(Some(Ok(frame))), Some(activity)) = (&polled, &guards.activity)
                {
                    if frame.data_ref().is_some_and(|d| !only_keepalives(d)) {
                        activity.touch();
                    }
                }
                if let (Poll::Ready(Some(Err(_))), Some(end)) = (&polled, reset_on_error) {
                    end.reset();
                }
                // hyper stops polling once `is_end_stream` says so, and after trailers (always
                // the last frame): release on any of these signs.
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(frame))) => frame.is_trailers() || body.is_end_stream(),
                    _ => false,
                };
                if ended {
                    release(lease);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}

fn release(lease: &mut Option<Lease>) {
    if let Some(lease) = lease.take() {
        lease.release();
    }
}

/// The request body sent upstream: the client's, or the client's behind a size limit; empty
/// when a bodiless request is sent again (see `upstream`). A client body that fails records why
/// in its [`ClientBodyWatch`], so a failed upstream call can be blamed on the right side.
pub enum RequestBody {
    Empty,
    Streamed(Incoming, Option<Arc<ClientBodyWatch>>),
    Limited(
        http_body_util::Limited<Incoming>,
        Option<Arc<ClientBodyWatch>>,
    ),
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the client's side of a request body failed, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyFault {
    /// Malformed framing, or the client went away mid-body.
    Broken,
    /// Over the configured size limit.
    TooLarge,
}

/// Shared by a request body and the forward phase that sent it.
#[derive(Default)]
pub struct ClientBodyWatch(AtomicU8);

impl ClientBodyWatch {
    /// A watch for `body`, unless it is complete already (then nothing of it can fail).
    pub fn of(body: &Incoming) -> Option<Arc<ClientBodyWatch>> {
        (!body.is_end_stream()).then(Default::default)
    }

    pub fn fault(watch: Option<&ClientBodyWatch>) -> Option<ClientBodyFault> {
        match watch?.0.load(Ordering::Acquire) {
            BROKEN => Some(ClientBodyFault::Broken),
            TOO_LARGE => Some(ClientBodyFault::TooLarge),
            _ => None,
        }
    }

    fn record(watch: &Option<Arc<ClientBodyWatch>>, error: BoxError) -> BoxError {
        if let Some(watch) = watch {
            let fault = if is_length_limit(&*error) {
                TOO_LARGE
            } else {
                BROKEN
            };
            watch.0.store(fault, Ordering::Release);
        }
        error
    }
}

const BROKEN: u8 = 1;
const TOO_LARGE: u8 = 2;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut polled = match self.get_mut() {
            RequestBody::Empty => return Poll::Ready(None),
            RequestBody::Streamed(body, watch) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| ClientBodyWatch::record(watch, e.into())),
            RequestBody::Limited(body, watch) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| ClientBodyWatch::record(watch, e)),
        };
        if let Poll::Ready(Some(Ok(frame))) = &mut polled {
            if let Some(trailers) = frame.trailers_mut() {
                crate::http::headers::scrub_trailers(trailers);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streamed(body, _) => body.is_end_stream(),
            RequestBody::Limited(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streamed(body, _) => body.size_hint(),
            RequestBody::Limited(body, _) => body.size_hint(),
        }
    }
}

/// True when `error` (or one of its sources) is a body-limit overflow.
pub fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}
/// Is a streamed chunk nothing but server-sent-event comment lines (`: keepalive`) and blank
/// lines, or empty? Such keepalives are not use of the sandbox.
fn only_keepalives(chunk: &[u8]) -> bool {
    chunk.split(|&b| b == b'\n').all(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.is_empty() || line.first() == Some(&b':')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_comments_are_keepalives() {
        for (chunk, keepalive) in [
            (&b""[..], true),
            (b": ping\n\n", true),
            (b":\r\n\r\n", true),
            (b"data: 1\n\n", false),
            (b": ping\ndata: 1\n\n", false),
            (b"{\"log\":1}\n", false),
        ] {
            assert_eq!(only_keepalives(chunk), keepalive, "{chunk:?}");
        }
    }
}
