//! One pass over a request's header names that records which of the custom headers the phases
//! look up it carries. Most requests carry none of them, and a lookup of a custom name hashes
//! every byte of it (`x-daytona-skip-last-activity-update` is 35), present or not; comparing
//! the few names a request has is cheaper. A phase asks [`Present::may_have`] before its lookup.

use http::HeaderMap;

/// The custom request headers the phases look up (lowercase, as `HeaderName`s are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tracked {
    RequestId = 1 << 0,
    DisableCors = 1 << 1,
    PreviewToken = 1 << 2,
    SkipActivity = 1 << 3,
    SkipWarning = 1 << 4,
    SecFetchMode = 1 << 5,
    SecFetchDest = 1 << 6,
}

impl Tracked {
    pub const ALL: [Tracked; 7] = [
        Tracked::RequestId,
        Tracked::DisableCors,
        Tracked::PreviewToken,
        Tracked::SkipActivity,
        Tracked::SkipWarning,
        Tracked::SecFetchMode,
        Tracked::SecFetchDest,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Tracked::RequestId => "x-request-id",
            Tracked::DisableCors => "x-daytona-disable-cors",
            Tracked::PreviewToken => "x-daytona-preview-token",
            Tracked::SkipActivity => "x-daytona-skip-last-activity-update",
            Tracked::SkipWarning => "x-daytona-skip-preview-warning",
            Tracked::SecFetchMode => "sec-fetch-mode",
            Tracked::SecFetchDest => "sec-fetch-dest",
        }
    }
}

/// Which [`Tracked`] headers a request had when it was scanned. The phases only remove these
/// names (or, for `X-Request-Id`, insert it after its last lookup), so one the scan did not
/// see is still absent later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Present(u8);

impl Present {
    /// No scan: every lookup is made.
    pub const UNKNOWN: Present = Present(u8::MAX);

    pub fn scan(headers: &HeaderMap) -> Present {
        let mut bits = 0;
        for name in headers.keys() {
            let name = name.as_str();
            // Every tracked name has 12 bytes or more; most common ones are shorter.
            if name.len() < 12 {
                continue;
            }
            bits |= match name {
                "x-request-id" => Tracked::RequestId as u8,
                "x-daytona-disable-cors" => Tracked::DisableCors as u8,
                "x-daytona-preview-token" => Tracked::PreviewToken as u8,
                "x-daytona-skip-last-activity-update" => Tracked::SkipActivity as u8,
                "x-daytona-skip-preview-warning" => Tracked::SkipWarning as u8,
                "sec-fetch-mode" => Tracked::SecFetchMode as u8,
                "sec-fetch-dest" => Tracked::SecFetchDest as u8,
                _ => 0,
            };
        }
        Present(bits)
    }

    /// `false`: the request has no such header, no lookup needed.
    pub fn may_have(self, name: Tracked) -> bool {
        self.0 & name as u8 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    #[test]
    fn the_scan_sees_each_tracked_name_and_nothing_else() {
        for tracked in Tracked::ALL {
            let mut headers = HeaderMap::new();
            headers.insert("host", HeaderValue::from_static("h"));
            headers.insert("x-request-idx", HeaderValue::from_static("1"));
            let present = Present::scan(&headers);
            assert!(Tracked::ALL.iter().all(|t| !present.may_have(*t)));
            headers.append(
                HeaderName::from_static(tracked.name()),
                HeaderValue::from_static("1"),
            );
            let present = Present::scan(&headers);
            for other in Tracked::ALL {
                assert_eq!(present.may_have(other), other == tracked, "{other:?}");
            }
            assert!(Present::UNKNOWN.may_have(tracked));
        }
    }
}
