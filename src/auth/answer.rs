//! What auth answers by itself (a CORS preflight, the preview warning page and its accept
//! form, the OIDC login redirects) as a plain value: status, headers in the order they go on
//! the wire, and an optional body. `http::respond` renders it; auth builds no response bodies.

use http::header::{CACHE_CONTROL, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, StatusCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `None`: no body at all (not an empty one).
    pub body: Option<String>,
}

impl Answer {
    /// A bodiless answer.
    pub fn empty(status: StatusCode, headers: HeaderMap) -> Answer {
        Answer {
            status,
            headers,
            body: None,
        }
    }

    /// `302 Found` to `location`, never cached, setting `cookie` when there is one.
    pub fn redirect(location: HeaderValue, cookie: Option<HeaderValue>) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, location);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(c) = cookie {
            headers.insert(SET_COOKIE, c);
        }
        Answer::empty(StatusCode::FOUND, headers)
    }
}
