//! The one response body type: streamed from upstream, or a small body the proxy made itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::activity::StreamGuard;
use crate::registry::InflightGuard;
use crate::upstream::Lease;

/// What a response body holds until it ends: the activity guard of a long-lived stream and the
/// sandbox's in-flight slot.
#[derive(Default)]
pub struct Guards {
    pub activity: Option<StreamGuard>,
    pub inflight: Option<InflightGuard>,
    /// The client connection's limit slots, for relays that outlive the HTTP connection.
    pub connection: Option<crate::proxy::ConnectionSlots>,
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
        _guards: Guards,
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
            _guards: guards,
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
            ProxyBody::Upstream { body, lease, .. } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
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
/// when a bodiless request is sent again (see `upstream`).
pub enum RequestBody {
    Empty,
    Streamed(Incoming),
    Limited(http_body_util::Limited<Incoming>),
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut polled = match self.get_mut() {
            RequestBody::Empty => return Poll::Ready(None),
            RequestBody::Streamed(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            RequestBody::Limited(body) => Pin::new(body).poll_frame(cx),
        };
        if let Poll::Ready(Some(Ok(frame))) = &mut polled {
            if let Some(trailers) = frame.trailers_mut() {
                crate::forward::scrub_trailers(trailers);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streamed(body) => body.is_end_stream(),
            RequestBody::Limited(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streamed(body) => body.size_hint(),
            RequestBody::Limited(body) => body.size_hint(),
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
