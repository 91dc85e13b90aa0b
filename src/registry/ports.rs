//! Per-port access: which preview ports of a sandbox are open to anyone, which need a
//! credential, and which are not exposed at all; and preview tokens bound to a few ports.
//!
//! The per-request checks are a binary search in a small sorted slice: no allocation.

use crate::base::ports::is_reserved_port;

// The values a config file spells (`ports`, `port_access`) are defined with the config.
pub use crate::config::{PortAccess, PortsMode};

/// What the policy says of one request's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRule {
    /// No credential needed.
    Public,
    /// A valid credential of the sandbox is needed.
    Private,
    /// The port is not exposed (declared mode, no entry).
    NotExposed,
}

/// A sandbox's port policy: its mode and its entries, sorted by port, one per port, never a
/// reserved port (those always need a credential, whatever a record says).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortPolicy {
    mode: PortsMode,
    entries: Box<[(u16, PortAccess)]>,
}

impl PortPolicy {
    /// Refuses port 0, reserved ports and a port named twice, naming the port.
    pub fn new(
        mode: PortsMode,
        entries: impl IntoIterator<Item = (u16, PortAccess)>,
    ) -> Result<PortPolicy, String> {
        let mut entries: Vec<(u16, PortAccess)> = entries.into_iter().collect();
        entries.sort_unstable_by_key(|(port, _)| *port);
        for pair in entries.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(format!("port {} is named twice", pair[0].0));
            }
        }
        for (port, _) in &entries {
            check_port(*port)?;
        }
        Ok(PortPolicy {
            mode,
            entries: entries.into(),
        })
    }

    pub fn mode(&self) -> PortsMode {
        self.mode
    }

    pub fn entries(&self) -> &[(u16, PortAccess)] {
        &self.entries
    }

    /// The rule for a request on `port` (`None`: toolbox traffic) of a sandbox whose `public`
    /// flag is `sandbox_public`. Reserved ports and the toolbox always need a credential.
    pub fn rule(&self, port: Option<u16>, sandbox_public: bool) -> PortRule {
        let Some(port) = port.filter(|p| !is_reserved_port(*p)) else {
            return PortRule::Private;
        };
        match self.entries.binary_search_by_key(&port, |(p, _)| *p) {
            Ok(i) => match self.entries[i].1 {
                PortAccess::Public => PortRule::Public,
                PortAccess::Private => PortRule::Private,
            },
            Err(_) => match self.mode {
                PortsMode::Declared => PortRule::NotExposed,
                PortsMode::All if sandbox_public => PortRule::Public,
                PortsMode::All => PortRule::Private,
            },
        }
    }
}

/// A port an entry may name: 1..65535 and not reserved.
pub fn check_port(port: u16) -> Result<(), String> {
    if port == 0 {
        return Err("port 0 is not a port".into());
    }
    if is_reserved_port(port) {
        return Err(format!(
            "port {port} is reserved (always authenticated); it cannot have an entry"
        ));
    }
    Ok(())
}

/// A preview token bound to some ports: only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedToken {
    pub sha256: [u8; 32],
    /// Sorted, without duplicates, never empty.
    ports: Box<[u16]>,
}

impl ScopedToken {
    /// Refuses an empty list and port 0 (a reserved port may be named: the token is still a
    /// credential there, which reserved ports require anyway).
    pub fn new(
        sha256: [u8; 32],
        ports: impl IntoIterator<Item = u16>,
    ) -> Result<ScopedToken, String> {
        Ok(ScopedToken {
            sha256,
            ports: scoped_ports(ports)?.into(),
        })
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Does this token open `port`? (`None`, the toolbox: never.)
    pub fn opens(&self, port: Option<u16>) -> bool {
        port.is_some_and(|p| self.ports.binary_search(&p).is_ok())
    }
}

/// A scoped token's ports, sorted and without duplicates: at least one, never port 0.
pub fn scoped_ports(ports: impl IntoIterator<Item = u16>) -> Result<Vec<u16>, String> {
    let mut ports: Vec<u16> = ports.into_iter().collect();
    ports.sort_unstable();
    ports.dedup();
    match ports.first() {
        None => Err("a port-scoped token needs at least one port".into()),
        Some(0) => Err("port 0 is not a port".into()),
        Some(_) => Ok(ports),
    }
}

/// `3000,3001` → the ports (the Redis field's value and the CLI's display).
pub fn parse_port_list(text: &str) -> Result<Vec<u16>, String> {
    text.split(',')
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port (a comma-separated list of ports)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use PortAccess::*;

    #[test]
    fn the_rule_by_mode_entry_and_reserved_ports() {
        let all = PortPolicy::new(PortsMode::All, [(3000, Public), (8080, Private)]).unwrap();
        let declared =
            PortPolicy::new(PortsMode::Declared, [(3000, Public), (8080, Private)]).unwrap();
        // (policy, port, sandbox public) → rule
        let cases = [
            (&all, Some(3000), false, PortRule::Public),
            (&all, Some(8080), true, PortRule::Private),
            (&all, Some(5000), true, PortRule::Public),
            (&all, Some(5000), false, PortRule::Private),
            (&declared, Some(3000), false, PortRule::Public),
            (&declared, Some(8080), true, PortRule::Private),
            (&declared, Some(5000), true, PortRule::NotExposed),
            (&declared, Some(5000), false, PortRule::NotExposed),
            (&declared, Some(2280), true, PortRule::Private),
            (&declared, Some(22222), true, PortRule::Private),
            (&declared, None, true, PortRule::Private),
            (&PortPolicy::default(), Some(1), true, PortRule::Public),
        ];
        for (policy, port, public, rule) in cases {
            assert_eq!(policy.rule(port, public), rule, "{port:?} public={public}");
        }
    }

    #[test]
    fn a_reserved_port_can_never_be_made_public() {
        for reserved in crate::base::ports::RESERVED_PORTS {
            let err = PortPolicy::new(PortsMode::All, [(reserved, Public)]).unwrap_err();
            assert!(err.contains("reserved"), "{err}");
            // Even a policy built around the check keeps the reserved rule.
            let forged = PortPolicy {
                mode: PortsMode::All,
                entries: vec![(reserved, Public)].into(),
            };
            assert_eq!(forged.rule(Some(reserved), true), PortRule::Private);
        }
        assert!(PortPolicy::new(PortsMode::All, [(0, Public)]).is_err());
        let twice = PortPolicy::new(PortsMode::All, [(1, Public), (1, Private)]).unwrap_err();
        assert!(twice.contains("twice"), "{twice}");
    }

    #[test]
    fn scoped_tokens_open_their_ports_only() {
        let token = ScopedToken::new([1; 32], [3001, 3000, 3000]).unwrap();
        assert_eq!(token.ports(), &[3000, 3001]);
        assert!(token.opens(Some(3000)) && token.opens(Some(3001)));
        assert!(!token.opens(Some(8080)) && !token.opens(None));
        assert!(ScopedToken::new([1; 32], []).is_err());
        assert!(ScopedToken::new([1; 32], [0]).is_err());
        assert_eq!(parse_port_list("3000, 3001").unwrap(), vec![3000, 3001]);
        assert!(parse_port_list("3000,x").is_err());
        assert!(parse_port_list("").is_err());
    }

    #[test]
    fn modes_and_access_parse_strictly() {
        assert_eq!("declared".parse::<PortsMode>(), Ok(PortsMode::Declared));
        assert!("Declared".parse::<PortsMode>().is_err());
        assert_eq!("private".parse::<PortAccess>(), Ok(Private));
        assert!("open".parse::<PortAccess>().is_err());
    }
}
