//! The `daytona` registry backend: a Daytona-compatible control-plane API (contract §7) is the
//! source of truth; optionally, Daytona's own `proxy:*` keys in a shared Redis act as an L2
//! cache ([`super::l2`]).

use std::sync::Arc;

use http::{HeaderValue, Method, StatusCode};

use super::api::{
    bad_data, segment, unexpected, DaytonaApi, DomainDto, RunnerDto, SandboxDto, SshDto,
};
use super::l2::{record_from, L2RunnerInfo, L2};
use crate::config::{DaytonaConfig, RedisConfig};
use crate::registry::domains::{is_dns_name, DomainRecord};
use crate::registry::{
    BearerVerdict, BoxFuture, Lifetime, Registry, RegistryError, SandboxRecord, TokenGrant,
};

pub struct DaytonaRegistry {
    api: DaytonaApi,
    l2: Option<L2>,
}

impl DaytonaRegistry {
    /// `redis`: the shared Redis for the L2 cache (`[daytona] l2_redis`), or `None`.
    pub fn new(
        config: &DaytonaConfig,
        redis: Option<&RedisConfig>,
    ) -> Result<DaytonaRegistry, String> {
        let l2 = redis.map(L2::new).transpose()?;
        Ok(DaytonaRegistry {
            api: DaytonaApi::new(config)?,
            l2,
        })
    }

    async fn sandbox_from_api(&self, id: &str) -> Result<Option<SandboxRecord>, RegistryError> {
        let runner_path = format!("/runners/by-sandbox/{id}");
        let public_path = format!("/preview/{id}/public");
        let sandbox_path = format!("/sandbox/{id}");
        let (runner, public, sandbox) = tokio::join!(
            self.api
                .call(Method::GET, &runner_path, "GET /runners/by-sandbox/{id}"),
            self.api
                .call(Method::GET, &public_path, "GET /preview/{id}/public"),
            self.api
                .call(Method::GET, &sandbox_path, "GET /sandbox/{id}"),
        );
        let runner = runner?;
        let runner: Option<RunnerDto> = match runner.status {
            StatusCode::OK => Some(
                serde_json::from_slice(&runner.body)
                    .map_err(|e| bad_data(format!("runners/by-sandbox/{id}"), e))?,
            ),
            StatusCode::NOT_FOUND => None,
            status => return Err(unexpected("GET /runners/by-sandbox/{id}", status)),
        };
        // 404 means private *or* unknown, and its body is not JSON: only the status counts.
        let public = match public?.status {
            StatusCode::OK => true,
            status if status.is_client_error() => false,
            status => return Err(unexpected("GET /preview/{id}/public", status)),
        };
        let sandbox = sandbox?;
        let sandbox: SandboxDto = match sandbox.status {
            StatusCode::OK => serde_json::from_slice(&sandbox.body)
                .map_err(|e| bad_data(format!("sandbox/{id}"), e))?,
            StatusCode::NOT_FOUND => return Ok(None),
            status => return Err(unexpected("GET /sandbox/{id}", status)),
        };
        let Some(runner) = runner else {
            return unplaced(id, public, &sandbox);
        };
        let url = runner
            .proxy_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .or(runner.api_url.as_deref())
            .ok_or_else(|| {
                bad_data(
                    format!("runners/by-sandbox/{id}"),
                    "neither proxyUrl nor apiUrl",
                )
            })?;
        let (ports, port_access) = sandbox.port_policy(id)?;
        let upstream_host = sandbox.upstream_hosts();
        let wake = sandbox.wake();
        let info = L2RunnerInfo {
            api_url: url.to_string(),
            api_key: runner.api_key,
            id: Some(runner.id),
            domain: runner.domain,
            cors: sandbox.cors(id),
            identity: sandbox.identity(),
            upstream_host: upstream_host.0,
            upstream_hosts: upstream_host.1,
            organization_id: sandbox.organization_id,
            ports,
            port_access,
            labels: true,
        };
        // Only the API's answer carries the wake label: the L2 holds running sandboxes only.
        let record = record_from(id, &info, public, &sandbox.state)?.with_wake(wake);
        if let Some(l2) = &self.l2 {
            l2.put(id, &info, public, record.is_running()).await;
        }
        Ok(Some(record))
    }
}

/// A sandbox without a runner: an archived one (its runner is released) can be woken, so it is
/// known, not running, and never forwarded to (a wake reads it again once it has a runner); a
/// running one without a runner is not usable: unknown.
fn unplaced(
    id: &str,
    public: bool,
    sandbox: &SandboxDto,
) -> Result<Option<SandboxRecord>, RegistryError> {
    if crate::registry::is_running_state(&sandbox.state) {
        return Ok(None);
    }
    let (mode, access) = sandbox.port_policy(id)?;
    let ports = crate::registry::PortPolicy::new(mode, access)
        .map_err(|e| bad_data(format!("port policy of {id}"), e))?;
    let nowhere = crate::registry::Upstream::Direct { address: "".into() };
    let record = SandboxRecord::new(id, nowhere, public, &sandbox.state, None)
        .with_organization(sandbox.organization_id.as_deref())
        .with_ports(ports)
        .with_cors(sandbox.cors(id))
        .with_identity(sandbox.identity())
        .with_wake(sandbox.wake());
    Ok(Some(record))
}

impl Registry for DaytonaRegistry {
    fn sandbox<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<SandboxRecord>>, RegistryError>> {
        Box::pin(async move {
            let Some(id) = segment(id) else {
                return Ok(None);
            };
            if let Some(l2) = &self.l2 {
                if let Some(record) = l2.get(id).await {
                    return Ok(Some(Arc::new(record)));
                }
            }
            Ok(self.sandbox_from_api(id).await?.map(Arc::new))
        })
    }

    fn preview_token_valid<'a>(
        &'a self,
        sandbox: &'a SandboxRecord,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move {
            let (Some(id), Some(token)) = (segment(&sandbox.id), segment(token)) else {
                return Ok(false);
            };
            let what = "GET /preview/{id}/validate/{token}";
            let answer = self
                .api
                .call(
                    Method::GET,
                    &format!("/preview/{id}/validate/{token}"),
                    what,
                )
                .await?;
            match answer.status {
                StatusCode::OK => Ok(true),
                status if status.is_client_error() => Ok(false),
                status => Err(unexpected(what, status)),
            }
        })
    }

    fn signed_preview<'a>(
        &'a self,
        token: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<Option<TokenGrant>, RegistryError>> {
        Box::pin(async move {
            let Some(token) = segment(token) else {
                return Ok(None);
            };
            let what = "GET /preview/{token}/{port}/sandbox-id";
            let answer = self
                .api
                .call(
                    Method::GET,
                    &format!("/preview/{token}/{port}/sandbox-id"),
                    what,
                )
                .await?;
            match answer.status {
                StatusCode::OK => {
                    let text = std::str::from_utf8(&answer.body)
                        .map_err(|e| bad_data("preview/{token}/{port}/sandbox-id".into(), e))?;
                    let id = segment(text.trim()).ok_or_else(|| {
                        bad_data(
                            "preview/{token}/{port}/sandbox-id".into(),
                            "answer is not a sandbox id",
                        )
                    })?;
                    // The API does not say when the token expires.
                    Ok(Some(TokenGrant {
                        sandbox: id.into(),
                        lifetime: Lifetime::Unknown,
                    }))
                }
                status if status.is_client_error() => Ok(None),
                status => Err(unexpected(what, status)),
            }
        })
    }

    fn bearer_access<'a>(
        &'a self,
        sandbox_id: &'a str,
        bearer: &'a str,
        client_ip: std::net::IpAddr,
    ) -> BoxFuture<'a, Result<Option<BearerVerdict>, RegistryError>> {
        Box::pin(async move {
            let Some(id) = segment(sandbox_id) else {
                return Ok(Some(BearerVerdict::Denied));
            };
            let Ok(mut auth) = HeaderValue::try_from(format!("Bearer {bearer}")) else {
                return Ok(Some(BearerVerdict::Invalid));
            };
            auth.set_sensitive(true);
            let ip = HeaderValue::try_from(client_ip.to_string()).ok();
            let what = "GET /preview/{id}/access";
            let path = format!("/preview/{id}/access");
            let answer = self
                .api
                .call_as(Method::GET, &path, what, &auth, ip.as_ref())
                .await?;
            match answer.status.as_u16() {
                200..=299 => Ok(Some(BearerVerdict::Allowed)),
                401 => Ok(Some(BearerVerdict::Invalid)),
                403 | 404 => Ok(Some(BearerVerdict::Denied)),
                _ => Err(unexpected(what, answer.status)),
            }
        })
    }

    fn ssh_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<TokenGrant>, RegistryError>> {
        Box::pin(async move {
            let Some(token) = segment(token) else {
                return Ok(None);
            };
            let what = "GET /sandbox/ssh-access/validate";
            let answer = self
                .api
                .call(
                    Method::GET,
                    &format!("/sandbox/ssh-access/validate?token={token}"),
                    what,
                )
                .await?;
            match answer.status {
                StatusCode::OK => {
                    let dto: SshDto = serde_json::from_slice(&answer.body)
                        .map_err(|e| bad_data("sandbox/ssh-access/validate".into(), e))?;
                    Ok(dto
                        .valid
                        .then_some(dto.sandbox_id)
                        .flatten()
                        .filter(|id| segment(id).is_some())
                        // The API does not say when the token expires.
                        .map(|id| TokenGrant {
                            sandbox: id.into(),
                            lifetime: Lifetime::Unknown,
                        }))
                }
                status if status.is_client_error() => Ok(None),
                status => Err(unexpected(what, status)),
            }
        })
    }

    /// `GET /preview/domains/{host}`; 404: no such domain. The control plane verifies its
    /// domains itself, so `domain_verified` keeps the default no-op.
    fn domain<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Option<DomainRecord>, RegistryError>> {
        Box::pin(async move {
            // Interpolated into the path: only [a-z0-9.-] names pass.
            if !is_dns_name(host) {
                return Ok(None);
            }
            let what = "GET /preview/domains/{host}";
            let answer = self
                .api
                .call(Method::GET, &format!("/preview/domains/{host}"), what)
                .await?;
            match answer.status {
                StatusCode::OK => {
                    let dto: DomainDto = serde_json::from_slice(&answer.body)
                        .map_err(|e| bad_data(format!("preview/domains/{host}"), e))?;
                    let record = dto
                        .record()
                        .map_err(|e| bad_data(format!("preview/domains/{host}"), e))?;
                    if *record.host != *host {
                        return Err(bad_data(
                            format!("preview/domains/{host}"),
                            format!("the answer is for another host ({})", record.host),
                        ));
                    }
                    Ok(Some(record))
                }
                StatusCode::NOT_FOUND => Ok(None),
                status => Err(unexpected(what, status)),
            }
        })
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.api.ready())
    }
}
