//! Custom domains: a host name the registry maps to a sandbox's port (interface; the
//! implementation lands with #19).

use std::sync::Arc;

use super::{Registry, RegistryError};
use crate::config::DomainsConfig;

/// The TXT record whose value proves a pending domain: `_sandgate-challenge.<host>`.
pub const CHALLENGE_LABEL: &str = "_sandgate-challenge";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRecord {
    /// Lower-case, no trailing dot.
    pub host: Box<str>,
    pub sandbox: Box<str>,
    pub port: u16,
    /// Prepended to the request path (`/app`: starts with `/`, no trailing `/`).
    pub path_prefix: Option<Box<str>>,
    pub state: DomainState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainState {
    Verified,
    Pending(Verification),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// `_sandgate-challenge.<host>` must hold this TXT value.
    DnsTxt { token: Box<str> },
    /// The control plane (the registry) marks it verified.
    ControlPlane,
}

/// A host's answer, as the proxy acts on it.
#[derive(Debug, Clone)]
pub enum DomainLookup {
    Unknown,
    Pending(Arc<DomainRecord>),
    Verified(Arc<DomainRecord>),
}

/// The registry's custom domains behind a bounded cache, with DNS TXT verification.
pub struct CustomDomains {
    registry: Arc<dyn Registry>,
}

impl CustomDomains {
    pub fn new(
        registry: Arc<dyn Registry>,
        _config: &DomainsConfig,
    ) -> Result<CustomDomains, String> {
        Ok(CustomDomains { registry })
    }

    /// `host`: lower-case, without port or trailing dot.
    pub async fn lookup(&self, host: &str) -> Result<DomainLookup, RegistryError> {
        let _ = (&self.registry, host);
        Ok(DomainLookup::Unknown)
    }
}
