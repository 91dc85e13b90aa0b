//! The shared Redis L2 of the `daytona` backend: Daytona's own `proxy:*` keys and envelope, so
//! the Daytona API's deletions (on archive or a public-flag change) invalidate it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::api::bad_data;
use crate::config::RedisConfig;
use std::collections::BTreeMap;

use crate::registry::{
    CorsMode, PortAccess, PortPolicy, PortsMode, RegistryError, RunnerRecord, SandboxRecord,
    Upstream,
};

/// Daytona's proxy keeps runner info 2 minutes and the public flag 1 hour (its
/// `get_sandbox_target.go`); the API deletes both keys when they change.
const L2_RUNNER_TTL_SECS: u64 = 120;
const L2_PUBLIC_TTL_SECS: u64 = 3600;
/// Port of a runner's SSH endpoint (contract §8).
const RUNNER_SSH_PORT: u16 = 2220;

/// Daytona's Redis cache envelope: `{"value": ...}`.
#[derive(Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    pub(crate) value: T,
}

/// Daytona's `RunnerInfo` (`apiUrl` holds the runner's proxy URL, `apiKey` its key). Daytona's
/// proxy ignores unknown fields, so ours ride along; values it wrote lack them.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct L2RunnerInfo {
    pub(crate) api_url: String,
    pub(crate) api_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) organization_id: Option<String>,
    /// Entries Daytona wrote lack it: `managed`.
    #[serde(default, skip_serializing_if = "is_managed")]
    pub(crate) cors: CorsMode,
    /// The port policy (from the sandbox's labels); entries Daytona wrote lack it: `all`.
    #[serde(default, skip_serializing_if = "is_all")]
    pub(crate) ports: PortsMode,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) port_access: BTreeMap<u16, PortAccess>,
    /// The `sandgate.io/identity` label.
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) identity: bool,
    /// The `sandgate.io/upstream-host[.<port>]` labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) upstream_host: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub(crate) upstream_hosts: std::collections::BTreeMap<u16, String>,
    /// Always `true` in the entries we write: the fields above were read from the labels.
    /// Daytona's proxy (and a sandgate from before port policies) writes entries without it,
    /// whose port policy is unknown: they are not used, or a label's declared or private port
    /// would open to anyone.
    #[serde(default)]
    pub(crate) labels: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_managed(mode: &CorsMode) -> bool {
    *mode == CorsMode::Managed
}

fn is_all(mode: &PortsMode) -> bool {
    *mode == PortsMode::All
}

pub(crate) fn record_from(
    id: &str,
    info: &L2RunnerInfo,
    public: bool,
    state: &str,
) -> Result<SandboxRecord, RegistryError> {
    let runner_id = info.id.as_deref().unwrap_or("daytona-runner");
    let mut runner = RunnerRecord::new(runner_id, &info.api_url, &info.api_key)
        .map_err(|e| bad_data(format!("runner of {id}"), e))?;
    runner.ssh_endpoint = info
        .domain
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d}:{RUNNER_SSH_PORT}").into());
    let upstream = Upstream::Runner(Arc::new(runner));
    let access = info.port_access.iter().map(|(port, rule)| (*port, *rule));
    let ports = PortPolicy::new(info.ports, access)
        .map_err(|e| bad_data(format!("port policy of {id}"), e))?;
    Ok(SandboxRecord::new(id, upstream, public, state, None)
        .with_organization(info.organization_id.as_deref())
        .with_cors(info.cors)
        .with_ports(ports)
        .with_identity(info.identity)
        .with_upstream_hosts(upstream_hosts(id, info)))
}

/// A label that is no valid template is ignored (the app gets the proxy's default `Host`),
/// with a warning, as a bad CORS label is.
fn upstream_hosts(id: &str, info: &L2RunnerInfo) -> crate::registry::UpstreamHosts {
    let ports = info.upstream_hosts.iter().map(|(p, t)| (*p, t.as_str()));
    crate::registry::UpstreamHosts::new(id, info.upstream_host.as_deref(), ports).unwrap_or_else(
        |why| {
            tracing::warn!(sandbox = id, %why, "ignoring the upstream-host labels");
            crate::registry::UpstreamHosts::default()
        },
    )
}

/// The shared Redis L2: Daytona's own keys and envelope, so the Daytona API's deletions (on
/// archive or a public-flag change) invalidate it. Any Redis failure falls through to the API.
pub(crate) struct L2 {
    redis: redis::aio::ConnectionManager,
    timeout: Duration,
    /// Set while Redis fails, so an outage is logged once, not per request.
    down: AtomicBool,
}

impl L2 {
    pub(crate) fn new(config: &RedisConfig) -> Result<L2, String> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("redis.url is not usable: {e}"))?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1);
        // Lazy: Redis may be down at start; the proxy then works from the API alone.
        let redis = redis::aio::ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| format!("redis: {e}"))?;
        Ok(L2 {
            redis,
            timeout: config.timeout,
            down: AtomicBool::new(false),
        })
    }

    fn runner_key(id: &str) -> String {
        format!("proxy:sandbox-runner-info:{id}")
    }

    fn public_key(id: &str) -> String {
        format!("proxy:sandbox-public:{id}")
    }

    /// Both keys present and well-formed → a record. Daytona's keys carry no state; only
    /// running sandboxes are written by us, and Daytona's proxy never checks state either, so a
    /// hit is taken as `started` (the runner answers if it is not).
    pub(crate) async fn get(&self, id: &str) -> Option<SandboxRecord> {
        let mut redis = self.redis.clone();
        let mut mget = redis::cmd("MGET");
        mget.arg(Self::runner_key(id)).arg(Self::public_key(id));
        let query = mget.query_async::<Vec<Option<String>>>(&mut redis);
        let values = self.outcome(tokio::time::timeout(self.timeout, query).await)?;
        let (Some(Some(runner)), Some(Some(public))) = (values.first(), values.get(1)) else {
            return None;
        };
        let parsed = serde_json::from_str::<Envelope<L2RunnerInfo>>(runner).and_then(|r| {
            serde_json::from_str::<Envelope<bool>>(public).map(|p| (r.value, p.value))
        });
        let (info, public) = match parsed {
            Ok((info, _)) if !info.labels => {
                tracing::debug!(sandbox = id, "L2 entry without the labels; asking the API");
                return None;
            }
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(sandbox = id, error = %e, "unreadable L2 entry; asking the API");
                return None;
            }
        };
        match record_from(id, &info, public, "started") {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::debug!(sandbox = id, error = %e, "unusable L2 entry; asking the API");
                None
            }
        }
    }

    pub(crate) async fn put(&self, id: &str, info: &L2RunnerInfo, public: bool, running: bool) {
        let mut pipe = redis::pipe();
        if let Ok(public) = serde_json::to_string(&Envelope { value: public }) {
            pipe.cmd("SET")
                .arg(Self::public_key(id))
                .arg(public)
                .arg("EX")
                .arg(L2_PUBLIC_TTL_SECS)
                .ignore();
        }
        if running {
            if let Ok(info) = serde_json::to_string(&Envelope { value: info }) {
                pipe.cmd("SET")
                    .arg(Self::runner_key(id))
                    .arg(info)
                    .arg("EX")
                    .arg(L2_RUNNER_TTL_SECS)
                    .ignore();
            }
        }
        let mut redis = self.redis.clone();
        let write = pipe.query_async::<()>(&mut redis);
        let _ = self.outcome(tokio::time::timeout(self.timeout, write).await);
    }

    fn outcome<T>(
        &self,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        let error = match result {
            Ok(Ok(value)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis L2 reachable again");
                }
                return Some(value);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %error, "Redis L2 unavailable; using the Daytona API alone");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::CorsMode;

    #[test]
    fn l2_values_stay_compatible_with_daytona() {
        // What Daytona's proxy writes (RunnerInfo without our extra fields) must read back.
        let theirs = r#"{"value":{"apiUrl":"http://10.0.0.5:3003","apiKey":"k"}}"#;
        let info: Envelope<L2RunnerInfo> = serde_json::from_str(theirs).unwrap();
        let record = record_from("sbx", &info.value, false, "started").unwrap();
        assert_eq!(&*record.path_prefix, "/sandboxes/sbx/toolbox");
        let Upstream::Runner(runner) = &record.upstream else {
            panic!("runner mode expected")
        };
        assert_eq!(&*runner.authority, "10.0.0.5:3003");
        let public: Envelope<bool> = serde_json::from_str(r#"{"value":true}"#).unwrap();
        assert!(public.value);
        // What we write carries Daytona's two fields under Daytona's names.
        let ours = serde_json::to_value(Envelope { value: info.value }).unwrap();
        assert_eq!(ours["value"]["apiUrl"], "http://10.0.0.5:3003");
        assert_eq!(ours["value"]["apiKey"], "k");
        assert!(
            ours["value"].get("cors").is_none(),
            "managed is not written"
        );
        assert_eq!(record.cors, CorsMode::Managed, "absent: managed");
    }

    #[test]
    fn the_port_policy_is_kept_through_the_l2() {
        use crate::registry::PortRule;
        let info: L2RunnerInfo = serde_json::from_str(
            r#"{"apiUrl":"http://10.0.0.5:3003","apiKey":"k","ports":"declared","portAccess":{"3000":"private"}}"#,
        )
        .unwrap();
        let written = serde_json::to_value(&info).unwrap();
        assert_eq!(written["portAccess"]["3000"], "private");
        let record = record_from("sbx", &info, true, "started").unwrap();
        assert_eq!(record.port_rule(Some(3000)), PortRule::Private);
        assert_eq!(record.port_rule(Some(5000)), PortRule::NotExposed);
        let theirs: L2RunnerInfo =
            serde_json::from_str(r#"{"apiUrl":"http://10.0.0.5:3003","apiKey":"k"}"#).unwrap();
        let record = record_from("sbx", &theirs, true, "started").unwrap();
        assert_eq!(
            record.port_rule(Some(5000)),
            PortRule::Public,
            "absent: all"
        );
        assert!(serde_json::to_value(&theirs)
            .unwrap()
            .get("ports")
            .is_none());
    }

    #[test]
    fn identity_and_upstream_hosts_are_kept_through_the_l2() {
        let info: L2RunnerInfo = serde_json::from_str(
            r#"{"apiUrl":"http://10.0.0.5:3003","apiKey":"k","identity":true,
                "upstreamHost":"localhost:${PORT}","upstreamHosts":{"8080":"x.internal"}}"#,
        )
        .unwrap();
        let record = record_from("sbx", &info, false, "started").unwrap();
        assert!(record.identity);
        assert_eq!(
            record.upstream_hosts.for_port(3000).unwrap(),
            "localhost:3000"
        );
        assert_eq!(record.upstream_hosts.for_port(8080).unwrap(), "x.internal");
        let bad: L2RunnerInfo = serde_json::from_str(
            r#"{"apiUrl":"http://10.0.0.5:3003","apiKey":"k","upstreamHost":"${HOST}"}"#,
        )
        .unwrap();
        let record = record_from("sbx", &bad, false, "started").unwrap();
        assert!(
            record.upstream_hosts.is_empty(),
            "a bad template is ignored"
        );
        let ours = serde_json::to_value(&info).unwrap();
        assert_eq!(ours["upstreamHosts"]["8080"], "x.internal");
    }

    #[test]
    fn the_cors_mode_is_kept_through_the_l2() {
        let info: L2RunnerInfo = serde_json::from_str(
            r#"{"apiUrl":"http://10.0.0.5:3003","apiKey":"k","cors":"passthrough"}"#,
        )
        .unwrap();
        let record = record_from("sbx", &info, false, "started").unwrap();
        assert_eq!(record.cors, CorsMode::Passthrough, "kept through the L2");
    }
}
