//! The `redis` registry backend. Key schema: `docs/redis.md`.
//!
//! A sandbox and its runner are read in one round trip (a Lua script) on a single node or
//! behind Sentinel; in Cluster mode the two hashes may live on different nodes, so it takes two.

use std::collections::HashMap;
use std::sync::Arc;

use redis::Value;

use super::conn::{RedisFailure, RedisHandle};
use crate::registry::domains::{parse_state, DomainRecord};
use crate::registry::link_uses::LinkUse;
use crate::registry::ports::{check_port, parse_port_list};
use crate::registry::signed_preview::{
    is_signed_token, link_member, link_uses_key, signed_preview_key, LINK_RECORDS_TTL_MS,
};
use crate::registry::{
    BoxFuture, CorsMode, Lifetime, PortAccess, PortPolicy, PortsMode, Principal, Registry,
    RegistryError, RunnerRecord, SandboxRecord, ScopedToken, TokenGrant, Upstream,
};

/// KEYS[1] = sandbox hash, ARGV[1] = key prefix.
/// → nil (unknown) | {sandbox type} | {"hash", fields} | {"hash", fields, runner type[, fields]}
const RESOLVE_LUA: &str = r"
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return false end
if t ~= 'hash' then return {t} end
local s = redis.call('HGETALL', KEYS[1])
local runner
for i = 1, #s, 2 do if s[i] == 'runner' then runner = s[i + 1] end end
if not runner then return {t, s} end
local rk = ARGV[1] .. 'runner:' .. runner
local rt = redis.call('TYPE', rk)['ok']
if rt ~= 'hash' then return {t, s, rt} end
return {t, s, rt, redis.call('HGETALL', rk)}
";

/// KEYS[1] = a domain hash, ARGV = the sandbox and token that were checked: `state` becomes
/// `verified` only if the hash exists, is pending by DNS and still names that sandbox and token
/// (a removed or re-added domain is never resurrected or verified by another owner's record).
pub const DOMAIN_VERIFIED_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local f = redis.call('HMGET', KEYS[1], 'state', 'verification', 'sandbox', 'token')
if (f[1] == false or f[1] == 'pending') and (f[2] == false or f[2] == 'dns')
   and f[3] == ARGV[1] and f[4] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'state', 'verified')
  return 1
end
return 0
";

/// `<prefix>domain:<host>`: a custom domain's hash.
pub fn domain_key(prefix: &str, host: &str) -> String {
    format!("{prefix}domain:{host}")
}

/// `<prefix>domains`: the set of every custom domain's host (for listing).
pub fn domains_index_key(prefix: &str) -> String {
    format!("{prefix}domains")
}

/// A domain hash (`sandbox port path_prefix state verification token`) as a record.
pub fn parse_domain(key: &str, host: &str, fields: &Fields) -> Result<DomainRecord, RegistryError> {
    let bad = |reason: String| RegistryError::BadData {
        key: key.to_string(),
        reason,
    };
    let field = |name: &str| fields.get(name).map(String::as_str);
    let sandbox = field("sandbox").ok_or_else(|| bad("no sandbox field".into()))?;
    let port = field("port")
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("port {:?} is not a port", field("port"))))?;
    let state = parse_state(field("state"), field("verification"), field("token"))
        .map_err(|e| bad(e.to_string()))?;
    let prefix = field("path_prefix").filter(|p| !p.is_empty());
    DomainRecord::new(host, sandbox, port, prefix, state).map_err(|e| bad(e.to_string()))
}

pub struct RedisRegistry {
    redis: Arc<RedisHandle>,
    prefix: String,
    resolve: redis::Script,
}

pub type Fields = HashMap<String, String>;

/// What Redis holds for a runner named by a sandbox.
enum RunnerData {
    Missing,
    WrongType(String),
    Hash(Fields),
}

impl RedisRegistry {
    pub fn new(redis: Arc<RedisHandle>) -> RedisRegistry {
        let prefix = redis.config().key_prefix.clone();
        RedisRegistry {
            redis,
            prefix,
            resolve: redis::Script::new(RESOLVE_LUA),
        }
    }

    pub fn handle(&self) -> &Arc<RedisHandle> {
        &self.redis
    }

    fn sandbox_key(&self, id: &str) -> String {
        format!("{}sandbox:{id}", self.prefix)
    }

    async fn fetch(&self, id: &str) -> Result<Option<(Fields, Option<RunnerData>)>, RegistryError> {
        let key = self.sandbox_key(id);
        if self.redis.is_cluster() {
            return self.fetch_cluster(&key).await;
        }
        let mut conn = self.redis.conn().await.map_err(|e| unavailable(&key, e))?;
        let mut invocation = self.resolve.key(&key);
        invocation.arg(&self.prefix);
        let value: Value = self
            .redis
            .timed(invocation.invoke_async(&mut conn))
            .await
            .map_err(|e| unavailable(&key, e))?;
        let bad = |reason: String| RegistryError::BadData {
            key: key.clone(),
            reason,
        };
        let items = match value {
            Value::Nil => return Ok(None),
            Value::Array(items) => items,
            other => return Err(bad(format!("unexpected script answer {other:?}"))),
        };
        let text = |i: usize| items.get(i).and_then(value_text);
        match text(0).as_deref() {
            Some("hash") => {}
            Some(t) => return Err(bad(format!("expected a hash, found a {t}"))),
            None => return Err(bad("unexpected script answer".into())),
        }
        let sandbox = items.get(1).map(pairs).unwrap_or_default();
        let runner = match text(2).as_deref() {
            None => None,
            Some("none") => Some(RunnerData::Missing),
            Some("hash") => Some(RunnerData::Hash(
                items.get(3).map(pairs).unwrap_or_default(),
            )),
            Some(t) => Some(RunnerData::WrongType(t.to_string())),
        };
        Ok(Some((sandbox, runner)))
    }

    async fn fetch_cluster(
        &self,
        key: &str,
    ) -> Result<Option<(Fields, Option<RunnerData>)>, RegistryError> {
        let sandbox: Fields = self.hgetall(key).await?;
        if sandbox.is_empty() {
            return Ok(None);
        }
        let runner = match sandbox.get("runner") {
            None => None,
            Some(r) => {
                let fields = self.hgetall(&format!("{}runner:{r}", self.prefix)).await?;
                Some(if fields.is_empty() {
                    RunnerData::Missing
                } else {
                    RunnerData::Hash(fields)
                })
            }
        };
        Ok(Some((sandbox, runner)))
    }

    async fn hgetall(&self, key: &str) -> Result<Fields, RegistryError> {
        self.redis
            .query(redis::cmd("HGETALL").arg(key))
            .await
            .map_err(|e| unavailable(key, e))
    }

    /// A string key and its remaining TTL, in one round trip (`GET` + `PTTL`).
    async fn get_with_ttl(&self, key: &str) -> Result<Option<TokenGrant>, RegistryError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let (value, pttl): (Option<String>, i64) = self
            .redis
            .pipe(&pipe)
            .await
            .map_err(|e| unavailable(key, e))?;
        let lifetime = match u64::try_from(pttl) {
            Ok(ms) => Lifetime::Remaining(std::time::Duration::from_millis(ms)),
            // -1: no expiry; -2: it expired between the two commands.
            Err(_) if pttl == -1 => Lifetime::Unlimited,
            Err(_) => return Ok(None),
        };
        Ok(value.map(|v| TokenGrant {
            sandbox: v.trim().to_ascii_lowercase().into_boxed_str(),
            lifetime,
        }))
    }

    async fn get_string(&self, key: &str) -> Result<Option<Box<str>>, RegistryError> {
        let value: Option<String> = self
            .redis
            .query(redis::cmd("GET").arg(key))
            .await
            .map_err(|e| unavailable(key, e))?;
        Ok(value.map(|v| v.trim().to_ascii_lowercase().into_boxed_str()))
    }
}

/// A Redis error answer (e.g. WRONGTYPE) means the data is wrong; anything else, unreachable.
fn unavailable(key: &str, e: RedisFailure) -> RegistryError {
    match e {
        RedisFailure::Unavailable(m) => RegistryError::Unavailable(m),
        RedisFailure::Command(reason) => RegistryError::BadData {
            key: key.to_string(),
            reason,
        },
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn pairs(v: &Value) -> Fields {
    let Value::Array(items) = v else {
        return Fields::new();
    };
    items
        .chunks_exact(2)
        .filter_map(|kv| Some((value_text(&kv[0])?, value_text(&kv[1])?)))
        .collect()
}

/// Turns the stored hashes into a record; every malformed field is a `BadData` naming it.
fn parse(
    prefix: &str,
    id: &str,
    sandbox: &Fields,
    runner: Option<RunnerData>,
) -> Result<SandboxRecord, RegistryError> {
    let key = format!("{prefix}sandbox:{id}");
    let bad = |reason: String| RegistryError::BadData {
        key: key.clone(),
        reason,
    };
    let upstream = match (sandbox.get("runner"), sandbox.get("address"), runner) {
        (Some(runner_id), None, Some(data)) => {
            let runner_key = format!("{prefix}runner:{runner_id}");
            let fields = match data {
                RunnerData::Hash(f) => f,
                RunnerData::Missing => return Err(bad(format!("runner {runner_id:?} not found"))),
                RunnerData::WrongType(t) => {
                    return Err(bad(format!("{runner_key} is a {t}, not a hash")))
                }
            };
            let field = |name: &str| {
                fields
                    .get(name)
                    .ok_or_else(|| bad(format!("{runner_key} has no {name:?} field")))
            };
            let mut record =
                RunnerRecord::new(runner_id, field("url")?, field("api_key")?).map_err(&bad)?;
            record.ssh_endpoint = fields.get("ssh_endpoint").map(|s| s.as_str().into());
            if let Some(protocol) = fields.get("protocol") {
                record.protocol = protocol.parse().map_err(&bad)?;
            }
            Upstream::Runner(Arc::new(record))
        }
        (None, Some(address), _) => {
            if address.is_empty() || address.contains(['/', ' ', '@']) {
                return Err(bad(format!("address {address:?} is not a host")));
            }
            Upstream::Direct {
                address: address.as_str().into(),
            }
        }
        _ => return Err(bad("set exactly one of the fields runner or address".into())),
    };
    let public = match sandbox.get("public").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(bad(format!("public must be true or false, not {other:?}"))),
    };
    let state = sandbox.get("state").map_or("started", String::as_str);
    let cors = match sandbox.get("cors") {
        None => CorsMode::Managed,
        Some(mode) => mode.parse().map_err(&bad)?,
    };
    let identity = match sandbox.get("identity").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(bad(format!(
                "identity must be true or false, not {other:?}"
            )))
        }
    };
    let wake = match sandbox.get("wake").map(String::as_str) {
        None | Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => return Err(bad(format!("wake must be true or false, not {other:?}"))),
    };
    let mut record = SandboxRecord::new(id, upstream, public, state, None)
        .with_organization(sandbox.get("organization").map(String::as_str))
        .with_cors(cors)
        .with_identity(identity)
        .with_wake(wake)
        .with_upstream_hosts(upstream_hosts(id, sandbox).map_err(&bad)?);
    if let Some(hex_hash) = sandbox.get("auth_token_sha256") {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hex_hash, &mut hash)
            .map_err(|_| bad("auth_token_sha256 must be 64 hex digits".into()))?;
        record.auth_token_sha256 = Some(hash);
    }
    let (ports, tokens) = parse_ports(id, sandbox).map_err(bad)?;
    Ok(record.with_ports(ports).with_scoped_tokens(tokens))
}

/// The port policy (`ports`, `port:<n>`) and the port-scoped tokens (`token:<sha256 hex>`) of
/// a sandbox hash. A reserved port's entry is ignored (reserved ports always need a
/// credential), with a warning; any other malformed field is an error naming it.
fn parse_ports(id: &str, sandbox: &Fields) -> Result<(PortPolicy, Vec<ScopedToken>), String> {
    let mode = match sandbox.get("ports") {
        None => PortsMode::All,
        Some(mode) => mode.parse().map_err(|e| format!("field ports: {e}"))?,
    };
    let mut entries = Vec::new();
    let mut tokens = Vec::new();
    for (field, value) in sandbox {
        if let Some(port) = field.strip_prefix("port:") {
            let access: PortAccess = value.parse().map_err(|e| format!("field {field}: {e}"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| format!("field {field}: {port:?} is not a port"))?;
            if crate::base::ports::is_reserved_port(port) {
                tracing::warn!(sandbox = id, field, "ignoring an entry for a reserved port");
                continue;
            }
            check_port(port).map_err(|e| format!("field {field}: {e}"))?;
            entries.push((port, access));
        } else if let Some(hex_hash) = field.strip_prefix("token:") {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(hex_hash, &mut hash)
                .map_err(|_| format!("field {field}: the name must be token:<64 hex digits>"))?;
            let ports = parse_port_list(value).map_err(|e| format!("field {field}: {e}"))?;
            tokens.push(ScopedToken::new(hash, ports).map_err(|e| format!("field {field}: {e}"))?);
        }
    }
    let policy = PortPolicy::new(mode, entries).map_err(|e| format!("port fields: {e}"))?;
    Ok((policy, tokens))
}

/// The fields `upstream_host` (every port) and `upstream_host:<port>` (one port).
fn upstream_hosts(id: &str, sandbox: &Fields) -> Result<crate::registry::UpstreamHosts, String> {
    let mut ports = Vec::new();
    for (name, template) in sandbox {
        if let Some(port) = name.strip_prefix("upstream_host:") {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("field {name:?}: {port:?} is not a port"))?;
            ports.push((port, template.as_str()));
        }
    }
    crate::registry::UpstreamHosts::new(id, sandbox.get("upstream_host").map(String::as_str), ports)
}

impl Registry for RedisRegistry {
    fn sandbox<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<SandboxRecord>>, RegistryError>> {
        Box::pin(async move {
            let Some((sandbox, runner)) = self.fetch(id).await? else {
                return Ok(None);
            };
            parse(&self.prefix, id, &sandbox, runner).map(|r| Some(Arc::new(r)))
        })
    }

    fn signed_preview<'a>(
        &'a self,
        token: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<Option<TokenGrant>, RegistryError>> {
        Box::pin(async move {
            if !is_signed_token(token) {
                return Ok(None);
            }
            self.get_with_ttl(&signed_preview_key(port, token)).await
        })
    }

    fn api_key<'a>(
        &'a self,
        sha256: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<Option<Principal>, RegistryError>> {
        Box::pin(async move {
            let key = format!("{}api-key:{}", self.prefix, hex::encode(sha256));
            Ok(self
                .get_string(&key)
                .await?
                .map(|organization| Principal { organization }))
        })
    }

    fn ssh_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<TokenGrant>, RegistryError>> {
        Box::pin(async move {
            let key = format!(
                "{}ssh-token:{}",
                self.prefix,
                hex::encode(crate::registry::sha256(token))
            );
            self.get_with_ttl(&key).await
        })
    }

    fn domain<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Option<DomainRecord>, RegistryError>> {
        Box::pin(async move {
            let key = domain_key(&self.prefix, host);
            let fields = self.hgetall(&key).await?;
            if fields.is_empty() {
                return Ok(None);
            }
            parse_domain(&key, host, &fields).map(Some)
        })
    }

    fn domain_verified<'a>(
        &'a self,
        host: &'a str,
        sandbox: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move {
            let key = domain_key(&self.prefix, host);
            let mut eval = redis::cmd("EVAL");
            eval.arg(DOMAIN_VERIFIED_LUA)
                .arg(1)
                .arg(&key)
                .arg(sandbox)
                .arg(token);
            self.redis
                .query::<i64>(&eval)
                .await
                .map(drop)
                .map_err(|e| unavailable(&key, e))
        })
    }

    fn records_link_uses(&self) -> bool {
        true
    }

    fn record_link_uses<'a>(
        &'a self,
        uses: &'a [LinkUse],
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move {
            // One pipeline; on a Cluster one per use (each sandbox's hash has its own slot),
            // sent together: the cluster connection pipelines them per node.
            let per_pipe = if self.redis.is_cluster() {
                1
            } else {
                uses.len()
            };
            let pipes: Vec<redis::Pipeline> = uses
                .chunks(per_pipe.max(1))
                .map(|batch| {
                    let mut pipe = redis::pipe();
                    for used in batch {
                        let key = link_uses_key(&self.prefix, &used.sandbox);
                        let member = link_member(used.port, used.token_str());
                        pipe.hset(&key, member, used.at_ms).ignore();
                        pipe.pexpire(&key, LINK_RECORDS_TTL_MS as i64).ignore();
                    }
                    pipe
                })
                .collect();
            let writes = pipes.iter().map(|pipe| self.redis.pipe::<()>(pipe));
            for written in futures_util::future::join_all(writes).await {
                written.map_err(|e| unavailable("signed-link-uses", e))?;
            }
            Ok(())
        })
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.redis.ping())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn runner() -> Option<RunnerData> {
        Some(RunnerData::Hash(fields(&[
            ("url", "http://10.0.0.5:3003/"),
            ("api_key", "k"),
            ("ssh_endpoint", "10.0.0.5:2220"),
        ])))
    }

    #[test]
    fn a_full_record_parses() {
        let hash = hex::encode(crate::registry::sha256("tok"));
        let s = fields(&[
            ("runner", "r1"),
            ("public", "true"),
            ("state", "stopped"),
            ("organization", "org"),
            ("auth_token_sha256", &hash),
        ]);
        let record = parse("p:", "sbx", &s, runner()).unwrap();
        assert!(record.public && !record.is_running());
        assert!(record.token_matches("tok") && !record.token_matches("other"));
        assert_eq!(record.organization.as_deref(), Some("org"));
        assert_eq!(&*record.path_prefix, "/sandboxes/sbx/toolbox");
        let Upstream::Runner(r) = &record.upstream else {
            panic!("runner mode")
        };
        assert_eq!(r.ssh_endpoint.as_deref(), Some("10.0.0.5:2220"));
    }

    #[test]
    fn runner_protocol_is_read_and_checked() {
        let sandbox = fields(&[("runner", "r1")]);
        let with = |protocol: &str| {
            Some(RunnerData::Hash(fields(&[
                ("url", "http://10.0.0.5:3003"),
                ("api_key", "k"),
                ("protocol", protocol),
            ])))
        };
        let record = parse("p:", "sbx", &sandbox, with("h2c")).unwrap();
        let Upstream::Runner(r) = &record.upstream else {
            panic!("runner mode")
        };
        assert_eq!(r.protocol, crate::registry::Protocol::H2c);
        assert!(parse("p:", "sbx", &sandbox, with("h3")).is_err());
        let record = parse("p:", "sbx", &sandbox, runner()).unwrap();
        let Upstream::Runner(r) = &record.upstream else {
            panic!("runner mode")
        };
        assert_eq!(r.protocol, crate::registry::Protocol::Http1, "default");
    }

    #[test]
    fn identity_and_upstream_hosts_are_fields() {
        let s = fields(&[
            ("address", "10.0.0.7"),
            ("identity", "true"),
            ("upstream_host", "localhost:${PORT}"),
            ("upstream_host:8080", "${SANDBOX}.internal"),
        ]);
        let record = parse("p:", "sbx", &s, None).unwrap();
        assert!(record.identity);
        assert_eq!(
            record.upstream_hosts.for_port(3000).unwrap(),
            "localhost:3000"
        );
        assert_eq!(
            record.upstream_hosts.for_port(8080).unwrap(),
            "sbx.internal"
        );
        let plain = parse("p:", "sbx", &fields(&[("address", "h")]), None).unwrap();
        assert!(!plain.identity && plain.upstream_hosts.is_empty());
    }

    #[test]
    fn defaults_and_direct_mode() {
        let record = parse("p:", "sbx", &fields(&[("address", "10.0.0.7")]), None).unwrap();
        assert!(!record.public && record.is_running() && record.auth_token_sha256.is_none());
        assert_eq!(record.cors, CorsMode::Managed);
        assert_eq!(&*record.path_prefix, "");
        assert!(
            matches!(&record.upstream, Upstream::Direct { address } if &**address == "10.0.0.7")
        );
        let passthrough = fields(&[("address", "h"), ("cors", "passthrough")]);
        let record = parse("p:", "sbx", &passthrough, None).unwrap();
        assert_eq!(record.cors, CorsMode::Passthrough);
    }

    #[test]
    fn port_fields_parse_and_reserved_entries_are_ignored() {
        use crate::registry::{PortRule, TokenCheck};
        let token_field = format!("token:{}", hex::encode(crate::registry::sha256("scoped")));
        let s = fields(&[
            ("address", "h"),
            ("public", "true"),
            ("ports", "declared"),
            ("port:3000", "public"),
            ("port:8080", "private"),
            ("port:2280", "public"),
            (&token_field, "3000,3001"),
        ]);
        let record = parse("p:", "sbx", &s, None).unwrap();
        assert_eq!(record.port_rule(Some(3000)), PortRule::Public);
        assert_eq!(record.port_rule(Some(8080)), PortRule::Private);
        assert_eq!(record.port_rule(Some(2280)), PortRule::Private, "reserved");
        assert_eq!(record.port_rule(Some(5000)), PortRule::NotExposed);
        assert_eq!(
            record.check_token("scoped", Some(3001)),
            TokenCheck::ThisPort
        );
        assert_eq!(
            record.check_token("scoped", Some(8080)),
            TokenCheck::Invalid
        );
    }

    #[test]
    fn bad_records_name_the_problem() {
        let cases: Vec<(Fields, Option<RunnerData>, &str)> = vec![
            (fields(&[]), None, "exactly one"),
            (
                fields(&[("runner", "r1")]),
                Some(RunnerData::Missing),
                "not found",
            ),
            (
                fields(&[("runner", "r1")]),
                Some(RunnerData::WrongType("string".into())),
                "not a hash",
            ),
            (
                fields(&[("runner", "r1")]),
                Some(RunnerData::Hash(fields(&[("url", "http://h:1")]))),
                "api_key",
            ),
            (fields(&[("address", "a b")]), None, "not a host"),
            (
                fields(&[("address", "h"), ("public", "yes")]),
                None,
                "true or false",
            ),
            (
                fields(&[("address", "h"), ("auth_token_sha256", "abc")]),
                None,
                "hex",
            ),
            (
                fields(&[("address", "h"), ("cors", "Passthrough ")]),
                None,
                "managed",
            ),
            (
                fields(&[("address", "h"), ("ports", "some")]),
                None,
                "field ports: must be all or declared",
            ),
            (
                fields(&[("address", "h"), ("port:3000", "open")]),
                None,
                "field port:3000: must be public or private",
            ),
            (
                fields(&[("address", "h"), ("port:x", "public")]),
                None,
                "field port:x",
            ),
            (
                fields(&[("address", "h"), ("port:0", "public")]),
                None,
                "field port:0",
            ),
            (
                fields(&[("address", "h"), ("token:abc", "3000")]),
                None,
                "field token:abc",
            ),
            (
                fields(&[
                    ("address", "h"),
                    (&*format!("token:{}", "a".repeat(64)), "3000,x"),
                ]),
                None,
                "is not a port",
            ),
            (
                fields(&[("address", "h"), ("identity", "yes")]),
                None,
                "identity must be true or false",
            ),
            (
                fields(&[("address", "h"), ("upstream_host", "${HOST}")]),
                None,
                "only ${PORT} and ${SANDBOX}",
            ),
            (
                fields(&[("address", "h"), ("upstream_host:http", "x")]),
                None,
                "\"upstream_host:http\"",
            ),
        ];
        for (sandbox, runner, expect) in cases {
            match parse("p:", "sbx", &sandbox, runner) {
                Err(RegistryError::BadData { key, reason }) => {
                    assert_eq!(key, "p:sandbox:sbx");
                    assert!(reason.contains(expect), "{reason} / {expect}");
                }
                other => panic!("{sandbox:?}: {other:?}"),
            }
        }
    }
}
