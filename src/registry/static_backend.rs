//! The embedded registry: runners and sandboxes listed in the config file.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::domains::{check_host, parse_state, DomainRecord, DomainState};
use super::ports::check_port;
use super::{
    BoxFuture, Lifetime, PortPolicy, Principal, Registry, RegistryError, RunnerRecord,
    SandboxRecord, ScopedToken, TokenGrant, Upstream,
};
use crate::config::{RegistryConfig, SandboxEntry};

type Table = HashMap<Box<str>, Arc<SandboxRecord>>;
/// (token, port) → (sandbox id, expiry in unix seconds).
type SignedTable = HashMap<(Box<str>, u16), (Box<str>, Option<u64>)>;

/// Everything the config lists, swapped as one.
#[derive(Default)]
struct Tables {
    sandboxes: Table,
    /// SHA-256 of the key → principal.
    api_keys: HashMap<[u8; 32], Principal>,
    signed: SignedTable,
    /// SHA-256 of an SSH access token → (sandbox id, expiry in unix seconds).
    ssh_tokens: HashMap<[u8; 32], (Box<str>, Option<u64>)>,
    /// Custom domains by host.
    domains: HashMap<Box<str>, DomainRecord>,
}

/// Atomically replaceable, so a reload never blocks or drops requests.
pub struct StaticRegistry {
    table: ArcSwap<Tables>,
    /// Sandboxes a start hook reported running, until the next reload (the config cannot
    /// learn it).
    started: dashmap::DashMap<Box<str>, Arc<SandboxRecord>>,
    /// Pending domains the proxy found verified (their TXT record), until the next reload.
    verified_domains: dashmap::DashSet<Box<str>>,
}

impl StaticRegistry {
    pub fn from_config(config: &RegistryConfig) -> Result<StaticRegistry, String> {
        Ok(StaticRegistry {
            table: ArcSwap::from_pointee(build_tables(config).map_err(|e| e.join("\n"))?),
            started: Default::default(),
            verified_domains: Default::default(),
        })
    }

    /// Swaps in a new table; on error the old one stays in force.
    pub fn reload(&self, config: &RegistryConfig) -> Result<usize, String> {
        let table = build_tables(config).map_err(|e| e.join("\n"))?;
        let n = table.sandboxes.len();
        self.table.store(Arc::new(table));
        self.started.clear();
        self.verified_domains.clear();
        Ok(n)
    }

    pub fn get(&self, id: &str) -> Option<Arc<SandboxRecord>> {
        if !self.started.is_empty() {
            if let Some(started) = self.started.get(id) {
                return Some(started.clone());
            }
        }
        self.table.load().sandboxes.get(id).cloned()
    }
}

impl Registry for StaticRegistry {
    fn sandbox<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<SandboxRecord>>, RegistryError>> {
        let found = self.get(id);
        Box::pin(async move { Ok(found) })
    }

    fn learns_states(&self) -> bool {
        false
    }

    fn domain<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Option<DomainRecord>, RegistryError>> {
        let found = self.table.load().domains.get(host).map(|record| {
            match self.verified_domains.contains(host) {
                true => DomainRecord {
                    state: DomainState::Verified,
                    ..record.clone()
                },
                false => record.clone(),
            }
        });
        Box::pin(async move { Ok(found) })
    }

    fn domain_verified<'a>(
        &'a self,
        host: &'a str,
        sandbox: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        let checked = self
            .table
            .load()
            .domains
            .get(host)
            .is_some_and(|record| &*record.sandbox == sandbox && record.token() == Some(token));
        if checked {
            self.verified_domains.insert(host.into());
        }
        Box::pin(async { Ok(()) })
    }

    fn start_reported(&self, id: &str) {
        let id = id.to_ascii_lowercase();
        if let Some(record) = self.table.load().sandboxes.get(id.as_str()) {
            if !record.is_running() {
                let started = Arc::new(record.with_state("started"));
                self.started.insert(id.into(), started);
            }
        }
    }

    fn api_key<'a>(
        &'a self,
        sha256: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<Option<Principal>, RegistryError>> {
        let found = self.table.load().api_keys.get(sha256).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn ssh_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<TokenGrant>, RegistryError>> {
        let now = crate::base::clock::now_unix();
        // A hash-keyed map lookup: equal hashes only for the equal token, and no raw token kept.
        let found = self
            .table
            .load()
            .ssh_tokens
            .get(&super::sha256(token))
            .filter(|(_, expires)| expires.is_none_or(|e| e > now))
            .map(|(id, expires)| TokenGrant {
                sandbox: id.clone(),
                lifetime: Lifetime::until_unix(*expires),
            });
        Box::pin(async move { Ok(found) })
    }

    fn signed_preview<'a>(
        &'a self,
        token: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<Option<TokenGrant>, RegistryError>> {
        let now = crate::base::clock::now_unix();
        let found = self
            .table
            .load()
            .signed
            .get(&(Box::from(token), port))
            .filter(|(_, expires)| expires.is_none_or(|e| e > now))
            .map(|(id, expires)| TokenGrant {
                sandbox: id.clone(),
                lifetime: Lifetime::until_unix(*expires),
            });
        Box::pin(async move { Ok(found) })
    }
}

/// Every problem of the static registry's lists (runners, sandboxes, credentials), each
/// message starting with its key path (`registry.sandboxes[2].runner: …`).
pub fn check(config: &RegistryConfig) -> Vec<String> {
    build_tables(config).err().unwrap_or_default()
}

fn build_tables(config: &RegistryConfig) -> Result<Tables, Vec<String>> {
    let mut problems = Vec::new();
    let sandboxes = build_table(config, &mut problems);
    let api_keys = build_api_keys(config, &mut problems);
    let signed = build_signed(config, &mut problems);
    let ssh_tokens = build_ssh_tokens(config, &mut problems);
    let domains = build_domains(config, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Tables {
        sandboxes,
        api_keys,
        signed,
        ssh_tokens,
        domains,
    })
}

/// `[[registry.domains]]`: each checked (errors name the entry and the key), hosts unique,
/// sandboxes listed.
fn build_domains(
    config: &RegistryConfig,
    problems: &mut Vec<String>,
) -> HashMap<Box<str>, DomainRecord> {
    let mut domains: HashMap<Box<str>, DomainRecord> = HashMap::new();
    for (i, d) in config.domains.iter().enumerate() {
        let at = format!("registry.domains[{i}]");
        // The host first: the most telling problem of an entry.
        let record = check_host(&d.host)
            .and_then(|_| {
                parse_state(
                    d.state.as_deref(),
                    d.verification.as_deref(),
                    d.token.as_deref(),
                )
            })
            .and_then(|state| {
                DomainRecord::new(&d.host, &d.sandbox, d.port, d.path_prefix.as_deref(), state)
            });
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                problems.push(format!("{at}.{e}"));
                continue;
            }
        };
        let listed = |s: &SandboxEntry| s.id.eq_ignore_ascii_case(&record.sandbox);
        if !config.sandboxes.iter().any(listed) {
            problems.push(format!(
                "{at}.sandbox: no [[registry.sandboxes]] has the id {:?}",
                d.sandbox
            ));
            continue;
        }
        if domains.contains_key(&record.host) {
            problems.push(format!(
                "{at}.host: {:?} is listed twice; a host maps to one sandbox",
                record.host
            ));
            continue;
        }
        domains.insert(record.host.clone(), record);
    }
    domains
}

/// A 64-hex-digit SHA-256, or `what` when it is not one.
fn hex_sha256(hex_hash: &str, what: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut out).map_err(|_| what.to_string())?;
    Ok(out)
}

fn build_api_keys(
    config: &RegistryConfig,
    problems: &mut Vec<String>,
) -> HashMap<[u8; 32], Principal> {
    let mut api_keys = HashMap::new();
    for (i, k) in config.api_keys.iter().enumerate() {
        let at = format!("registry.api_keys[{i}]");
        let hash = match (&k.key, &k.key_sha256) {
            (Some(key), None) if !key.is_empty() => Ok(super::sha256(key)),
            (None, Some(hex_hash)) => {
                hex_sha256(hex_hash, &format!("{at}.key_sha256: must be 64 hex digits"))
            }
            _ => Err(format!("{at}: set exactly one of key or key_sha256")),
        };
        let hash = match hash {
            Ok(hash) => hash,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        if k.organization.is_empty() {
            problems.push(format!("{at}.organization: is required"));
            continue;
        }
        let principal = Principal {
            organization: k.organization.as_str().into(),
        };
        api_keys.insert(hash, principal);
    }
    api_keys
}

fn build_signed(config: &RegistryConfig, problems: &mut Vec<String>) -> SignedTable {
    let mut signed = HashMap::new();
    for (i, s) in config.signed_previews.iter().enumerate() {
        let at = format!("registry.signed_previews[{i}]");
        let well_formed = s.token.len() == 16
            && s.token
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !well_formed {
            problems.push(format!("{at}.token: must be 16 characters [a-z0-9]"));
            continue;
        }
        if s.port == 0 {
            problems.push(format!("{at}.port: must be 1..65535"));
            continue;
        }
        signed.insert(
            (s.token.as_str().into(), s.port),
            (s.sandbox.to_ascii_lowercase().into(), s.expires_at),
        );
    }
    signed
}

type SshTokens = HashMap<[u8; 32], (Box<str>, Option<u64>)>;

fn build_ssh_tokens(config: &RegistryConfig, problems: &mut Vec<String>) -> SshTokens {
    let mut ssh_tokens = HashMap::new();
    for (i, t) in config.ssh_tokens.iter().enumerate() {
        let at = format!("registry.ssh_tokens[{i}]");
        let hash = match (&t.token, &t.token_sha256) {
            (Some(token), None) if !token.is_empty() => Ok(super::sha256(token)),
            (None, Some(hex_hash)) => hex_sha256(
                hex_hash,
                &format!("{at}.token_sha256: must be 64 hex digits"),
            ),
            _ => Err(format!("{at}: set exactly one of token or token_sha256")),
        };
        let hash = match hash {
            Ok(hash) => hash,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        if t.sandbox.is_empty() {
            problems.push(format!("{at}.sandbox: is required"));
            continue;
        }
        ssh_tokens.insert(hash, (t.sandbox.to_ascii_lowercase().into(), t.expires_at));
    }
    ssh_tokens
}

/// `upstream_host` and `upstream_hosts` of one entry; errors name the sandbox and the key.
fn upstream_hosts(s: &crate::config::SandboxEntry) -> Result<super::UpstreamHosts, String> {
    let mut ports = Vec::with_capacity(s.upstream_hosts.len());
    for (port, template) in &s.upstream_hosts {
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                format!(
                    "sandbox {}: upstream_hosts key {port:?} is not a port",
                    s.id
                )
            })?;
        ports.push((port, template.as_str()));
    }
    super::UpstreamHosts::new(&s.id, s.upstream_host.as_deref(), ports)
        .map_err(|e| format!("sandbox {}: {e}", s.id))
}

/// The runners built, by id, and every runner id listed (a sandbox on a runner that failed is
/// not also reported as naming an unknown runner).
struct Runners<'a> {
    built: HashMap<&'a str, Arc<RunnerRecord>>,
    ids: Vec<&'a str>,
}

fn build_runners<'a>(config: &'a RegistryConfig, problems: &mut Vec<String>) -> Runners<'a> {
    let mut runners = Runners {
        built: HashMap::new(),
        ids: Vec::new(),
    };
    for (i, r) in config.runners.iter().enumerate() {
        let at = format!("registry.runners[{i}]");
        if let Some(first) = runners.ids.iter().position(|id| *id == r.id) {
            problems.push(format!(
                "{at}.id: duplicate runner id {:?} (registry.runners[{first}] has it too); \
                 runner ids must be unique",
                r.id
            ));
            continue;
        }
        runners.ids.push(&r.id);
        match runner_record(r, &at) {
            Ok(record) => {
                runners.built.insert(&r.id, Arc::new(record));
            }
            Err(e) => problems.push(e),
        }
    }
    runners
}

fn runner_record(r: &crate::config::RunnerEntry, at: &str) -> Result<RunnerRecord, String> {
    let mut record = RunnerRecord::new(&r.id, &r.url, &r.api_key)
        .map_err(|e| match e.contains("api_key") {
            true => format!("{at}.api_key: {e}"),
            false if !r.url.contains("://") => {
                format!("{at}.url: {e}: write \"http://{}\"", r.url)
            }
            false => format!("{at}.url: {e}"),
        })?
        .with_protocol(r.protocol);
    if let Some(endpoint) = &r.ssh_endpoint {
        if endpoint
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(format!(
                "{at}.ssh_endpoint: runner {}: ssh_endpoint {endpoint:?} must be host:port",
                r.id
            ));
        }
        record.ssh_endpoint = Some(endpoint.as_str().into());
    }
    Ok(record)
}

fn build_table(config: &RegistryConfig, problems: &mut Vec<String>) -> Table {
    let runners = build_runners(config, problems);
    let mut table = Table::new();
    let mut first_of: HashMap<String, usize> = HashMap::new();
    for (i, s) in config.sandboxes.iter().enumerate() {
        let at = format!("registry.sandboxes[{i}]");
        let id = s.id.to_ascii_lowercase();
        if let Some(first) = first_of.get(&id) {
            problems.push(format!(
                "{at}.id: duplicate sandbox id {:?} (registry.sandboxes[{first}] has it too); \
                 sandbox ids must be unique",
                s.id
            ));
            continue;
        }
        first_of.insert(id.clone(), i);
        match sandbox_record(s, &at, &runners) {
            Ok(Some(record)) => {
                table.insert(id.into(), Arc::new(record));
            }
            Ok(None) => {}
            Err(e) => problems.push(e),
        }
    }
    table
}

/// One sandbox entry as a record; `None` when its runner failed (reported there).
fn sandbox_record(
    s: &SandboxEntry,
    at: &str,
    runners: &Runners<'_>,
) -> Result<Option<SandboxRecord>, String> {
    if s.id.is_empty()
        || !s
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{at}.id: sandbox id {:?} must be [A-Za-z0-9_-]+",
            s.id
        ));
    }
    let upstream = match (&s.runner, &s.address) {
        (Some(runner), None) => match runners.built.get(runner.as_str()) {
            Some(record) => Upstream::Runner(record.clone()),
            None if runners.ids.contains(&runner.as_str()) => return Ok(None),
            None => return Err(unknown_runner(at, runner, &runners.ids)),
        },
        (None, Some(address)) => {
            if address.is_empty() || address.contains(['/', ' ', '@']) {
                return Err(format!(
                    "{at}.address: sandbox {}: address {address:?} is not a host",
                    s.id
                ));
            }
            Upstream::Direct {
                address: address.as_str().into(),
            }
        }
        _ => {
            return Err(format!(
                "{at}: sandbox {}: set exactly one of runner or address",
                s.id
            ))
        }
    };
    let record = SandboxRecord::new(&s.id, upstream, s.public, &s.state, s.auth_token.as_deref())
        .with_organization(s.organization.as_deref())
        .with_ssh_port(s.ssh_port)
        .with_cors(s.cors)
        .with_ports(port_policy(s).map_err(|e| format!("{at}.port_access: {e}"))?)
        .with_scoped_tokens(scoped_tokens(s).map_err(|e| format!("{at}.preview_tokens: {e}"))?)
        .with_identity(s.identity)
        .with_wake(s.wake)
        .with_upstream_hosts(upstream_hosts(s).map_err(|e| format!("{at}: {e}"))?);
    Ok(Some(record))
}

fn unknown_runner(at: &str, runner: &str, known: &[&str]) -> String {
    let fix = match known {
        [] => "no [[registry.runners]] is defined; add one with this id".to_string(),
        _ => format!("known runners: {}", known.join(", ")),
    };
    format!("{at}.runner: unknown runner {runner:?}; {fix}")
}

/// `ports` and `port_access` of one `[[registry.sandboxes]]` entry; errors name the key.
fn port_policy(s: &SandboxEntry) -> Result<PortPolicy, String> {
    let mut entries = Vec::with_capacity(s.port_access.len());
    for (port, access) in &s.port_access {
        let key = format!("sandbox {}: port_access {port:?}", s.id);
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{key}: not a port (1..65535)"))?;
        check_port(port).map_err(|e| format!("{key}: {e}"))?;
        entries.push((port, *access));
    }
    PortPolicy::new(s.ports, entries).map_err(|e| format!("sandbox {}: port_access: {e}", s.id))
}

/// `preview_tokens` of one `[[registry.sandboxes]]` entry; errors name the key.
fn scoped_tokens(s: &SandboxEntry) -> Result<Vec<ScopedToken>, String> {
    let mut tokens = Vec::with_capacity(s.preview_tokens.len());
    for (i, t) in s.preview_tokens.iter().enumerate() {
        let key = format!("sandbox {}: preview_tokens[{i}]", s.id);
        let hash = match (&t.token, &t.token_sha256) {
            (Some(token), None) if !token.is_empty() => super::sha256(token),
            (None, Some(hex_hash)) => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(hex_hash, &mut out)
                    .map_err(|_| format!("{key}: token_sha256 must be 64 hex digits"))?;
                out
            }
            _ => return Err(format!("{key}: set exactly one of token or token_sha256")),
        };
        tokens.push(
            ScopedToken::new(hash, t.ports.iter().copied())
                .map_err(|e| format!("{key}: ports: {e}"))?,
        );
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(toml: &str) -> Result<StaticRegistry, String> {
        let config = crate::config::Config::from_toml_str(toml).map_err(|e| e.to_string())?;
        StaticRegistry::from_config(&config.registry)
    }

    #[test]
    fn upstream_host_templates_are_checked_at_load_naming_the_sandbox() {
        let entry = |extra: &str| {
            format!("[[registry.sandboxes]]\nid = \"sbx\"\naddress = \"10.0.0.9\"\n{extra}\n")
        };
        let ok = registry(&entry(
            "identity = true\nupstream_host = \"localhost:${PORT}\"\nupstream_hosts = { \"8080\" = \"${SANDBOX}.internal\" }",
        ))
        .unwrap();
        let record = ok.get("sbx").unwrap();
        assert!(record.identity);
        assert_eq!(
            record.upstream_hosts.for_port(8080).unwrap(),
            "sbx.internal"
        );
        for (extra, expected) in [
            (
                "upstream_host = \"${HOST}\"",
                "sandbox sbx: upstream host \"${HOST}\"",
            ),
            (
                "upstream_host = \"a/b\"",
                "sandbox sbx: upstream host \"a/b\"",
            ),
            (
                "upstream_hosts = { \"web\" = \"x\" }",
                "sandbox sbx: upstream_hosts key \"web\"",
            ),
        ] {
            let error = registry(&entry(extra)).err().unwrap_or_default();
            assert!(error.contains(expected), "{extra}: {error}");
        }
    }

    #[tokio::test]
    async fn ssh_tokens_by_value_or_hash_with_expiry() {
        let hash = hex::encode(super::super::sha256("hashed-token"));
        let r = registry(&format!(
            r#"
[[registry.runners]]
id = "r1"
url = "http://10.0.0.5:3003"
api_key = "k"

[[registry.sandboxes]]
id = "Via-Runner"
runner = "r1"

[[registry.sandboxes]]
id = "direct"
address = "10.0.0.9"
ssh_port = 2022

[[registry.ssh_tokens]]
token = "plain-token"
sandbox = "Via-Runner"

[[registry.ssh_tokens]]
token_sha256 = "{hash}"
sandbox = "direct"

[[registry.ssh_tokens]]
token = "expired-token"
sandbox = "direct"
expires_at = 1
"#
        ))
        .unwrap();
        assert_eq!(
            r.ssh_token("plain-token")
                .await
                .unwrap()
                .map(|g| g.sandbox)
                .as_deref(),
            Some("via-runner")
        );
        assert_eq!(
            r.ssh_token("hashed-token")
                .await
                .unwrap()
                .map(|g| g.sandbox)
                .as_deref(),
            Some("direct")
        );
        assert_eq!(r.ssh_token("expired-token").await.unwrap(), None);
        assert_eq!(r.ssh_token("nope").await.unwrap(), None);
        let runner = r.get("via-runner").unwrap();
        assert_eq!(runner.ssh_target().as_deref(), Some("10.0.0.5:2220"));
        let direct = r.get("direct").unwrap();
        assert_eq!(direct.ssh_target().as_deref(), Some("10.0.0.9:2022"));
    }

    #[test]
    fn ssh_token_entries_are_validated() {
        let bad = r#"
[[registry.ssh_tokens]]
token = "t"
token_sha256 = "00"
sandbox = "x"
"#;
        assert!(registry(bad).err().unwrap().contains("exactly one"));
        let bad_endpoint = r#"
[[registry.runners]]
id = "r1"
url = "http://10.0.0.5:3003"
api_key = "k"
ssh_endpoint = "no-port"
"#;
        assert!(registry(bad_endpoint).err().unwrap().contains("host:port"));
    }

    #[test]
    fn port_policies_and_scoped_tokens_are_read_and_checked() {
        use crate::registry::{PortRule, TokenCheck};
        let r = registry(
            r#"
[[registry.sandboxes]]
id = "sbx"
address = "10.0.0.9"
public = true
ports = "declared"
port_access = { "3000" = "public", "8080" = "private" }
preview_tokens = [{ token = "scoped", ports = [3000] }]
"#,
        )
        .unwrap();
        let s = r.get("sbx").unwrap();
        assert_eq!(s.port_rule(Some(3000)), PortRule::Public);
        assert_eq!(s.port_rule(Some(8080)), PortRule::Private);
        assert_eq!(s.port_rule(Some(5000)), PortRule::NotExposed);
        assert_eq!(s.check_token("scoped", Some(3000)), TokenCheck::ThisPort);
        assert_eq!(s.check_token("scoped", Some(8080)), TokenCheck::Invalid);
        let entry = |extra: &str| {
            format!("[[registry.sandboxes]]\nid = \"sbx\"\naddress = \"h\"\n{extra}\n")
        };
        let cases = [
            (
                r#"port_access = { "2280" = "public" }"#,
                "port_access \"2280\": port 2280 is reserved",
            ),
            (
                r#"port_access = { "x" = "public" }"#,
                "port_access \"x\": not a port",
            ),
            (r#"port_access = { "0" = "public" }"#, "port_access \"0\""),
            (r#"port_access = { "1" = "open" }"#, "port_access"),
            (r#"ports = "some""#, "ports"),
            (
                r#"preview_tokens = [{ token = "t", ports = [] }]"#,
                "preview_tokens[0]: ports",
            ),
            (
                r#"preview_tokens = [{ ports = [1] }]"#,
                "preview_tokens[0]: set exactly one",
            ),
        ];
        for (extra, expected) in cases {
            let err = registry(&entry(extra)).err().unwrap();
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }
}
