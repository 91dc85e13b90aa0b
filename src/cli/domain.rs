//! `sandgate domain add|verify|rm|list`: custom domains in the registry. The Redis backend is
//! written for real; the static backend's domains live in the config file (`add` prints the
//! block to append); the Daytona control plane owns its domains.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::admin::{invalid, Admin, AdminError};
use crate::config::registry::Backend;
use crate::config::Config;
use crate::registry::domains::{
    challenge_name, check_host, new_token, DomainRecord, DomainState, TxtOutcome, TxtVerifier,
    Verification,
};
use crate::registry::redis::backend::{
    domain_key, domains_index_key, parse_domain, Fields, DOMAIN_VERIFIED_LUA,
};

/// KEYS[1] = a domain hash, ARGV = its fields and values: written only if the hash is absent.
const CREATE_IF_ABSENT_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
";
use crate::registry::redis::{Invalidation, RedisHandle};

type Result<T> = std::result::Result<T, AdminError>;

/// How a new domain proves it belongs to its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerifyBy {
    /// A DNS TXT record `_sandgate-challenge.<host>` holding a token (printed by `add`).
    Dns,
    /// The control plane marks it verified (`state verified` in the registry).
    ControlPlane,
    /// Verified at once: the operator vouches for the name.
    None,
}

#[derive(Subcommand, Debug)]
pub enum DomainCommand {
    /// Map a host name to a sandbox's port (pending until verified, unless --verify none).
    Add {
        host: String,
        #[arg(long)]
        sandbox: String,
        #[arg(long)]
        port: u16,
        /// Prepended to every request's path, e.g. /app.
        #[arg(long)]
        path_prefix: Option<String>,
        #[arg(long, value_enum, default_value = "dns")]
        verify: VerifyBy,
    },
    /// Check the domain's TXT record now (with `domains.dns_resolver`) and mark it verified.
    Verify { host: String },
    /// Remove a domain (every proxy forgets it at once).
    Rm { host: String },
    /// The domains, their verification and their certificate.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: &Config, file: &str, command: DomainCommand) -> Result<String> {
    match config.registry.backend {
        Backend::Redis => redis(config, command).await,
        Backend::Static => static_backend(config, file, command).await,
        Backend::Daytona => invalid(
            "registry.backend = \"daytona\": the control plane owns custom domains (sandgate \
             reads them from GET /preview/domains/{host}); add, verify and remove them there",
        ),
    }
}

/// The record `add` creates: never a name under a preview domain (those are `<port>-<id>`
/// hosts, routed by their name whatever the registry holds).
fn new_record(
    config: &Config,
    host: &str,
    sandbox: &str,
    port: u16,
    path_prefix: Option<&str>,
    verify: VerifyBy,
) -> Result<DomainRecord> {
    let state = match verify {
        VerifyBy::Dns => DomainState::Pending(Verification::DnsTxt {
            token: new_token().into(),
        }),
        VerifyBy::ControlPlane => DomainState::Pending(Verification::ControlPlane),
        VerifyBy::None => DomainState::Verified,
    };
    let record = DomainRecord::new(host, sandbox, port, path_prefix, state).map_err(|e| {
        let what = match e.field {
            "host" => "host".to_string(),
            flag => format!("--{}", flag.replace('_', "-")),
        };
        AdminError::Invalid(format!("{what}: {}", e.reason))
    })?;
    if let Some(domain) = preview_domain_of(&record.host, &config.proxy.domains) {
        return invalid(format!(
            "host: {} is under the preview domain {domain} (proxy.domains): preview hosts \
             are routed by their name, not as custom domains",
            record.host
        ));
    }
    Ok(record)
}

/// The preview domain (`proxy.domains`, `*.` allowed) that `host` is or is under.
fn preview_domain_of<'a>(host: &str, domains: &'a [String]) -> Option<&'a str> {
    domains
        .iter()
        .map(|d| d.trim_start_matches("*.").trim_end_matches('.'))
        .find(|d| {
            host.eq_ignore_ascii_case(d)
                || host.len().checked_sub(d.len() + 1).is_some_and(|at| {
                    host.as_bytes()[at] == b'.' && host[at + 1..].eq_ignore_ascii_case(d)
                })
        })
}

/// What to do next for a new or pending domain.
fn next_step(record: &DomainRecord) -> String {
    match &record.state {
        DomainState::Verified => format!("{} is verified: it routes now", record.host),
        DomainState::Pending(Verification::DnsTxt { token }) => format!(
            "create the DNS record: {} TXT \"{token}\"\nthe proxy checks it by itself \
             (every domains.verify_interval); `sandgate domain verify {}` checks it now",
            challenge_name(&record.host),
            record.host
        ),
        DomainState::Pending(Verification::ControlPlane) => format!(
            "{} stays pending until the control plane sets its state to verified",
            record.host
        ),
    }
}

async fn redis(config: &Config, command: DomainCommand) -> Result<String> {
    let admin = Admin::new(config)?;
    match command {
        DomainCommand::Add {
            host,
            sandbox,
            port,
            path_prefix,
            verify,
        } => {
            let record = new_record(
                config,
                &host,
                &sandbox,
                port,
                path_prefix.as_deref(),
                verify,
            )?;
            let key = domain_key(&admin.prefix, &record.host);
            let exists: bool = admin.redis.query(redis::cmd("EXISTS").arg(&key)).await?;
            if exists {
                return invalid(format!(
                    "{} is already added; `sandgate domain rm {}` first",
                    record.host, record.host
                ));
            }
            // Created only if absent, in one step: two `add`s at once never merge their fields.
            let mut create = redis::cmd("EVAL");
            create.arg(CREATE_IF_ABSENT_LUA).arg(1).arg(&key);
            for (field, value) in stored_fields(&record) {
                create.arg(field).arg(value);
            }
            let mut pipe = admin.pipe();
            pipe.add_command(create).ignore();
            // Announced: a proxy may hold "no such domain" for this name.
            admin
                .write::<()>(pipe, Invalidation::Domain(&record.host))
                .await?;
            let stored = redis_record(&admin, &record.host).await?;
            if stored.sandbox != record.sandbox || stored.token() != record.token() {
                return invalid(format!(
                    "{} was added by another command at the same time; see `sandgate domain list`",
                    record.host
                ));
            }
            // The index is another key (another Cluster slot): its own write.
            let mut pipe = admin.pipe();
            pipe.sadd(domains_index_key(&admin.prefix), &*record.host)
                .ignore();
            admin.write_unannounced::<()>(pipe).await?;
            let sandbox_key = format!("{}sandbox:{}", admin.prefix, record.sandbox);
            let known: bool = admin
                .redis
                .query(redis::cmd("EXISTS").arg(&sandbox_key))
                .await?;
            let note = match known {
                true => String::new(),
                false => format!(
                    "\nnote: the registry has no sandbox {:?} yet: the domain answers 404 until it does",
                    record.sandbox
                ),
            };
            Ok(format!(
                "added {}\n{}{note}",
                record.host,
                next_step(&record)
            ))
        }
        DomainCommand::Verify { host } => {
            let record = redis_record(&admin, &host).await?;
            let token = pending_token(&record)?;
            check_txt(config, &record.host, token).await?;
            // Only the record that was checked: one replaced or removed meanwhile stays as is.
            let mut verify = redis::cmd("EVAL");
            verify
                .arg(DOMAIN_VERIFIED_LUA)
                .arg(1)
                .arg(domain_key(&admin.prefix, &record.host))
                .arg(&*record.sandbox)
                .arg(token);
            let mut pipe = admin.pipe();
            pipe.add_command(verify).ignore();
            admin
                .write::<()>(pipe, Invalidation::Domain(&record.host))
                .await?;
            let now = redis_record(&admin, &record.host).await?;
            if now.state != DomainState::Verified {
                return invalid(format!(
                    "{} changed while it was checked; run `sandgate domain verify` again",
                    record.host
                ));
            }
            Ok(format!("{}: the TXT record matches; verified", record.host))
        }
        DomainCommand::Rm { host } => {
            let host = checked_host(&host)?;
            let mut pipe = admin.pipe();
            pipe.del(domain_key(&admin.prefix, &host));
            let (removed,): (u32,) = admin.write(pipe, Invalidation::Domain(&host)).await?;
            let mut pipe = admin.pipe();
            pipe.srem(domains_index_key(&admin.prefix), &host).ignore();
            admin.write_unannounced::<()>(pipe).await?;
            if removed == 0 {
                return Err(AdminError::NotFound(format!("no domain {host}")));
            }
            Ok(format!("removed {host}"))
        }
        DomainCommand::List { json } => {
            let mut hosts: Vec<String> = admin
                .redis
                .query(redis::cmd("SMEMBERS").arg(domains_index_key(&admin.prefix)))
                .await?;
            hosts.sort();
            let mut records = Vec::with_capacity(hosts.len());
            for host in hosts {
                let key = domain_key(&admin.prefix, &host);
                let fields: Fields = admin.hgetall(&key).await?.into_iter().collect();
                if fields.is_empty() {
                    continue;
                }
                records.push(parse_domain(&key, &host, &fields).map_err(|e| e.to_string()));
            }
            listing(config, records, json).await
        }
    }
}

async fn redis_record(admin: &Admin, host: &str) -> Result<DomainRecord> {
    let host = checked_host(host)?;
    let key = domain_key(&admin.prefix, &host);
    let fields: Fields = admin.hgetall(&key).await?.into_iter().collect();
    if fields.is_empty() {
        return Err(AdminError::NotFound(format!("no domain {host}")));
    }
    parse_domain(&key, &host, &fields).map_err(|e| AdminError::Invalid(e.to_string()))
}

fn checked_host(host: &str) -> Result<String> {
    check_host(host).map_err(|e| AdminError::Invalid(e.to_string()))
}

/// The hash fields of a record (`docs/domains.md`).
fn stored_fields(record: &DomainRecord) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("sandbox", record.sandbox.to_string()),
        ("port", record.port.to_string()),
        ("state", record.state_name().to_string()),
    ];
    if let Some(prefix) = &record.path_prefix {
        fields.push(("path_prefix", prefix.to_string()));
    }
    if let Some(verification) = record.verification_name() {
        fields.push(("verification", verification.to_string()));
    }
    if let Some(token) = record.token() {
        fields.push(("token", token.to_string()));
    }
    fields
}

/// The token a `verify` checks; other states say why there is nothing to check.
fn pending_token(record: &DomainRecord) -> Result<&str> {
    match &record.state {
        DomainState::Pending(Verification::DnsTxt { token }) => Ok(token),
        DomainState::Verified => invalid(format!("{} is already verified", record.host)),
        DomainState::Pending(Verification::ControlPlane) => invalid(format!(
            "{} is verified by the control plane (its state field), not by DNS",
            record.host
        )),
    }
}

async fn check_txt(config: &Config, host: &str, token: &str) -> Result<()> {
    let verifier = TxtVerifier::new(&config.domains).map_err(AdminError::Invalid)?;
    let name = challenge_name(host);
    match verifier.check(host, token).await {
        TxtOutcome::Verified => Ok(()),
        TxtOutcome::Absent => invalid(format!(
            "{name} has no TXT record yet; create {name} TXT \"{token}\""
        )),
        TxtOutcome::Mismatch(found) => {
            invalid(format!("{name} TXT holds {found:?}, not \"{token}\""))
        }
        TxtOutcome::Error(e) => invalid(format!("{name}: the DNS lookup failed: {e}")),
    }
}

async fn static_backend(config: &Config, file: &str, command: DomainCommand) -> Result<String> {
    match command {
        DomainCommand::Add {
            host,
            sandbox,
            port,
            path_prefix,
            verify,
        } => {
            let record = new_record(
                config,
                &host,
                &sandbox,
                port,
                path_prefix.as_deref(),
                verify,
            )?;
            Ok(format!(
                "# the static registry's domains live in {file}: append this block and reload \
                 (sandgate reload)\n{}\n# {}",
                toml_block(&record),
                next_step(&record).replace('\n', "\n# ")
            ))
        }
        DomainCommand::Verify { host } => {
            let host = checked_host(&host)?;
            let record = static_records(config)
                .into_iter()
                .filter_map(|r| r.ok())
                .find(|r| *r.host == *host)
                .ok_or_else(|| AdminError::NotFound(format!("{file} lists no domain {host}")))?;
            let token = pending_token(&record)?;
            check_txt(config, &record.host, token).await?;
            Ok(format!(
                "{host}: the TXT record matches; the proxy verifies it at its next lookup \
                 (to keep it verified across reloads, set state = \"verified\" in {file})"
            ))
        }
        DomainCommand::Rm { host } => invalid(format!(
            "the static registry's domains live in {file}: remove the [[registry.domains]] \
             block with host = {host:?} there and reload"
        )),
        DomainCommand::List { json } => listing(config, static_records(config), json).await,
    }
}

fn static_records(config: &Config) -> Vec<std::result::Result<DomainRecord, String>> {
    config
        .registry
        .domains
        .iter()
        .enumerate()
        .map(|(i, d)| {
            crate::registry::domains::parse_state(
                d.state.as_deref(),
                d.verification.as_deref(),
                d.token.as_deref(),
            )
            .and_then(|state| {
                DomainRecord::new(&d.host, &d.sandbox, d.port, d.path_prefix.as_deref(), state)
            })
            .map_err(|e| format!("registry.domains[{i}].{e}"))
        })
        .collect()
}

fn toml_block(record: &DomainRecord) -> String {
    let mut block = format!(
        "[[registry.domains]]\nhost = {:?}\nsandbox = {:?}\nport = {}\n",
        record.host, record.sandbox, record.port
    );
    if let Some(prefix) = &record.path_prefix {
        block.push_str(&format!("path_prefix = {prefix:?}\n"));
    }
    block.push_str(&format!("state = {:?}\n", record.state_name()));
    if let Some(verification) = record.verification_name() {
        block.push_str(&format!("verification = {verification:?}\n"));
    }
    if let Some(token) = record.token() {
        block.push_str(&format!("token = {token:?}\n"));
    }
    block.trim_end().to_string()
}

/// The list, as text (one line per domain, the TXT record to create under a dns-pending one)
/// or JSON.
async fn listing(
    config: &Config,
    records: Vec<std::result::Result<DomainRecord, String>>,
    as_json: bool,
) -> Result<String> {
    let storage = certificate_storage(config)?;
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        let row = match record {
            Ok(record) => {
                let certificate = certificate(config, &storage, &record.host).await;
                row(&record, certificate)
            }
            Err(problem) => json!({ "error": problem }),
        };
        rows.push(row);
    }
    if as_json {
        return Ok(Value::Array(rows).to_string());
    }
    Ok(text_table(&rows))
}

fn row(record: &DomainRecord, certificate: String) -> Value {
    json!({
        "host": record.host,
        "sandbox": record.sandbox,
        "port": record.port,
        "path_prefix": record.path_prefix,
        "state": record.state_name(),
        "verification": record.verification_name(),
        "txt_record": record.token().map(|token| json!({
            "name": challenge_name(&record.host),
            "value": token,
        })),
        "certificate": certificate,
    })
}

fn text_table(rows: &[Value]) -> String {
    let field = |row: &Value, name: &str| match &row[name] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = String::from("HOST\tSANDBOX\tPORT\tPREFIX\tSTATE\tCERTIFICATE");
    for row in rows {
        if let Some(problem) = row["error"].as_str() {
            out.push_str(&format!("\n! {problem}"));
            continue;
        }
        let state = match row["verification"].as_str() {
            Some(by) => format!("pending ({by})"),
            None => field(row, "state"),
        };
        out.push_str(&format!(
            "\n{}\t{}\t{}\t{}\t{state}\t{}",
            field(row, "host"),
            field(row, "sandbox"),
            field(row, "port"),
            field(row, "path_prefix"),
            field(row, "certificate"),
        ));
        if let Some(txt) = row["txt_record"].as_object() {
            let name = txt.get("name").and_then(Value::as_str).unwrap_or_default();
            let value = txt.get("value").and_then(Value::as_str).unwrap_or_default();
            out.push_str(&format!("\n  create: {name} TXT \"{value}\""));
        }
    }
    out
}

/// The Redis handle certificates are stored with (`acme.storage = "redis"`), if any.
fn certificate_storage(config: &Config) -> Result<Option<Arc<RedisHandle>>> {
    use crate::config::acme::CertStorageKind;
    if !config.acme.enabled || config.acme.storage != CertStorageKind::Redis {
        return Ok(None);
    }
    RedisHandle::new(&config.redis)
        .map(|handle| Some(Arc::new(handle)))
        .map_err(AdminError::Invalid)
}

async fn certificate(config: &Config, storage: &Option<Arc<RedisHandle>>, host: &str) -> String {
    if !config.acme.enabled {
        return "none (acme off)".into();
    }
    match crate::tls::acme::stored_certificate(&config.acme, storage.clone(), host).await {
        Ok(None) => "none".into(),
        Ok(Some(stored)) if stored.not_after <= SystemTime::now() => {
            format!("expired {}", iso(stored.not_after))
        }
        Ok(Some(stored)) => format!("valid until {}", iso(stored.not_after)),
        Err(e) => format!("unknown ({e})"),
    }
}

fn iso(at: SystemTime) -> String {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    super::admin::iso(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_hosts_are_not_custom_domains() {
        let domains = ["preview.example.com".to_string(), "*.dev.localhost".into()];
        let cases: [(&str, Option<&str>); 6] = [
            ("3000-sbx.preview.example.com", Some("preview.example.com")),
            ("preview.example.com", Some("preview.example.com")),
            ("a.b.dev.localhost", Some("dev.localhost")),
            ("xpreview.example.com", None),
            ("app.customer.com", None),
            ("example.com", None),
        ];
        for (host, expected) in cases {
            assert_eq!(preview_domain_of(host, &domains), expected, "{host}");
        }
    }
}
