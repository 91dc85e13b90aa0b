//! The one response body type: streamed from upstream, or a small body the proxy made itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::activity::StreamGuard;

pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    /// Streamed from upstream frame by frame (never buffered). A long-lived stream holds an
    /// activity guard, dropped when the body ends or the client goes away.
    Upstream {
        body: Incoming,
        _guard: Option<StreamGuard>,
    },
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn upstream(body: Incoming, guard: Option<StreamGuard>) -> ProxyBody {
        ProxyBody::Upstream {
            body,
            _guard: guard,
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
            ProxyBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
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
