//! One pass over a request's header names that records which of the headers the phases look
//! up it carries. Most requests carry few of them, and a lookup hashes the name (every byte of
//! a custom one: `x-daytona-skip-last-activity-update` is 35) and probes the map, present or
//! not; comparing the few names a request has is cheaper. A phase asks [`Present::may_have`]
//! before its lookup.

use http::HeaderMap;

/// The request headers the phases look up (lowercase, as `HeaderName`s are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Tracked {
    RequestId = 1 << 0,
    DisableCors = 1 << 1,
    PreviewToken = 1 << 2,
    SkipActivity = 1 << 3,
    SkipWarning = 1 << 4,
    SecFetchMode = 1 << 5,
    SecFetchDest = 1 << 6,
    Upgrade = 1 << 7,
    Authorization = 1 << 8,
    Cookie = 1 << 9,
    Origin = 1 << 10,
    Forwarded = 1 << 11,
    Accept = 1 << 12,
    DaytonaSandboxId = 1 << 13,
    DaytonaSandboxPort = 1 << 14,
    SandgateSandboxId = 1 << 15,
    SandgateSandboxPort = 1 << 16,
    Identity = 1 << 17,
    ForwardedHost = 1 << 18,
}

impl Tracked {
    pub const ALL: [Tracked; 19] = [
        Tracked::RequestId,
        Tracked::DisableCors,
        Tracked::PreviewToken,
        Tracked::SkipActivity,
        Tracked::SkipWarning,
        Tracked::SecFetchMode,
        Tracked::SecFetchDest,
        Tracked::Upgrade,
        Tracked::Authorization,
        Tracked::Cookie,
        Tracked::Origin,
        Tracked::Forwarded,
        Tracked::Accept,
        Tracked::DaytonaSandboxId,
        Tracked::DaytonaSandboxPort,
        Tracked::SandgateSandboxId,
        Tracked::SandgateSandboxPort,
        Tracked::Identity,
        Tracked::ForwardedHost,
    ];

    /// The header-routing names (`http::header_route`).
    pub const ROUTING: [Tracked; 4] = [
        Tracked::DaytonaSandboxId,
        Tracked::DaytonaSandboxPort,
        Tracked::SandgateSandboxId,
        Tracked::SandgateSandboxPort,
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
            Tracked::Upgrade => "upgrade",
            Tracked::Authorization => "authorization",
            Tracked::Cookie => "cookie",
            Tracked::Origin => "origin",
            Tracked::Forwarded => "forwarded",
            Tracked::Accept => "accept",
            Tracked::Identity => "x-sandgate-identity",
            Tracked::ForwardedHost => "x-forwarded-host",
            Tracked::DaytonaSandboxId => "x-daytona-sandbox-id",
            Tracked::DaytonaSandboxPort => "x-daytona-sandbox-port",
            Tracked::SandgateSandboxId => "x-sandgate-sandbox-id",
            Tracked::SandgateSandboxPort => "x-sandgate-sandbox-port",
        }
    }
}

/// Which [`Tracked`] headers a request had when it was scanned. The phases only remove these
/// names, or insert them after their last lookup (`X-Request-Id`, `Upgrade`) or when the scan
/// saw them (`Cookie`, `Authorization` keep the values they do not strip), so one the scan did
/// not see is still absent later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Present(u32);

impl Present {
    /// No scan: every lookup is made.
    pub const UNKNOWN: Present = Present(u32::MAX);

    pub fn scan(headers: &HeaderMap) -> Present {
        let mut bits = 0;
        for name in headers.keys() {
            bits |= match name.as_str() {
                "x-request-id" => Tracked::RequestId as u32,
                "x-daytona-disable-cors" => Tracked::DisableCors as u32,
                "x-daytona-preview-token" => Tracked::PreviewToken as u32,
                "x-daytona-skip-last-activity-update" => Tracked::SkipActivity as u32,
                "x-daytona-skip-preview-warning" => Tracked::SkipWarning as u32,
                "sec-fetch-mode" => Tracked::SecFetchMode as u32,
                "sec-fetch-dest" => Tracked::SecFetchDest as u32,
                "upgrade" => Tracked::Upgrade as u32,
                "authorization" => Tracked::Authorization as u32,
                "cookie" => Tracked::Cookie as u32,
                "origin" => Tracked::Origin as u32,
                "forwarded" => Tracked::Forwarded as u32,
                "accept" => Tracked::Accept as u32,
                "x-daytona-sandbox-id" => Tracked::DaytonaSandboxId as u32,
                "x-daytona-sandbox-port" => Tracked::DaytonaSandboxPort as u32,
                "x-sandgate-sandbox-id" => Tracked::SandgateSandboxId as u32,
                "x-sandgate-sandbox-port" => Tracked::SandgateSandboxPort as u32,
                "x-sandgate-identity" => Tracked::Identity as u32,
                "x-forwarded-host" => Tracked::ForwardedHost as u32,
                _ => 0,
            };
        }
        Present(bits)
    }

    /// `false`: the request has no such header, no lookup needed.
    pub fn may_have(self, name: Tracked) -> bool {
        self.0 & name as u32 != 0
    }

    /// `false`: the request has none of `names`.
    pub fn may_have_any(self, names: &[Tracked]) -> bool {
        names.iter().any(|name| self.may_have(*name))
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
            headers.insert("accept-encoding", HeaderValue::from_static("gzip"));
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
