//! One ACME order for one name with instant-acme: new order, the challenge of the configured
//! kind, finalize with a fresh key, download the chain. Transient failures (the CA's 5xx, a
//! dropped connection, a nonce rejected more often than instant-acme retries) are retried a few
//! times with backoff; every failure carries the reason the metrics count it under.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier,
    NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};

use super::challenge::{ChallengeGuard, Challenges};
use super::dns_hook::{record_name, DnsHook, PublishedRecords};
use super::storage::Storage;
use crate::config::{AcmeConfig, ChallengeKind};

/// Why an order failed: the `reason` label of `sandgate_acme_order_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The CA could not validate the challenge (unreachable, wrong answer, CAA).
    Challenge,
    /// The CA's own rate limit.
    RateLimited,
    /// The CA could not be reached.
    Network,
    /// The CA refused or answered something unexpected.
    CaError,
    /// The certificate could not be stored.
    Storage,
    /// The order did not finish within `acme.order_timeout`.
    Timeout,
    /// `acme.dns01.hook` failed (exit status, timeout, not runnable).
    DnsHook,
}

impl FailureReason {
    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Challenge => "challenge",
            FailureReason::RateLimited => "rate_limited",
            FailureReason::Network => "network",
            FailureReason::CaError => "ca_error",
            FailureReason::Storage => "storage",
            FailureReason::Timeout => "timeout",
            FailureReason::DnsHook => "dns_hook",
        }
    }
}

#[derive(Debug, Clone)]
pub struct OrderFailure {
    pub reason: FailureReason,
    pub detail: String,
    /// Worth trying the same step again at once (after a short pause).
    pub transient: bool,
}

impl OrderFailure {
    pub fn new(reason: FailureReason, detail: impl Into<String>) -> OrderFailure {
        OrderFailure {
            reason,
            detail: detail.into(),
            transient: false,
        }
    }

    /// `reason: detail`, as logs and `AcmeError` show it.
    pub fn describe(&self) -> String {
        format!("{}: {}", self.reason.label(), self.detail)
    }
}

const PROBLEM: &str = "urn:ietf:params:acme:error:";

impl From<instant_acme::Error> for OrderFailure {
    fn from(e: instant_acme::Error) -> OrderFailure {
        use instant_acme::Error;
        let detail = e.to_string();
        let (reason, transient) = match &e {
            Error::Api(problem) => {
                let kind = problem
                    .r#type
                    .as_deref()
                    .and_then(|t| t.strip_prefix(PROBLEM))
                    .unwrap_or("");
                let server_error = problem.status.is_some_and(|s| s >= 500);
                match kind {
                    "rateLimited" => (FailureReason::RateLimited, false),
                    "badNonce" => (FailureReason::CaError, true),
                    "connection" | "dns" | "incorrectResponse" | "unauthorized" | "tls" | "caa" => {
                        (FailureReason::Challenge, false)
                    }
                    _ => (FailureReason::CaError, server_error),
                }
            }
            Error::Timeout(_) => (FailureReason::Timeout, false),
            Error::Http(_) | Error::Hyper(_) | Error::Other(_) => (FailureReason::Network, true),
            _ => (FailureReason::CaError, false),
        };
        OrderFailure {
            reason,
            detail,
            transient,
        }
    }
}

/// Attempts of one step when it fails transiently (the first included).
const ATTEMPTS: u32 = 5;

fn pause_before(attempt: u32) -> Duration {
    Duration::from_millis(200 << attempt.min(5))
}

/// Runs `$step` (an expression yielding `Result<_, impl Into<OrderFailure>>`) again while it
/// fails transiently, at most [`ATTEMPTS`] times.
macro_rules! retrying {
    ($what:literal, $step:expr) => {{
        let mut attempt = 1;
        loop {
            match $step.map_err(OrderFailure::from) {
                Err(e) if e.transient && attempt < ATTEMPTS => {
                    tracing::debug!(step = $what, attempt, error = %e.detail, "ACME step failed; retrying");
                    tokio::time::sleep(pause_before(attempt)).await;
                    attempt += 1;
                }
                other => break other,
            }
        }
    }};
}

/// The ACME account: the stored one for this directory, else a new one, stored unless another
/// replica stored its own first (then that one is used).
pub async fn account(config: &AcmeConfig, storage: &Storage) -> Result<Account, OrderFailure> {
    let id = account_id(&config.directory_url);
    if let Some(account) = stored_account(config, storage, &id).await? {
        return Ok(account);
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let new_account = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = retrying!(
        "new-account",
        builder(config)?
            .create(&new_account, config.directory_url.clone(), None)
            .await
    )?;
    let json = serde_json::to_vec(&credentials)
        .map_err(|e| OrderFailure::new(FailureReason::Storage, e.to_string()))?;
    let stored = storage
        .store_account_once(&id, &json)
        .await
        .map_err(|e| OrderFailure::new(FailureReason::Storage, e.to_string()))?;
    if stored {
        tracing::info!(account = account.id(), "ACME account created");
        return Ok(account);
    }
    stored_account(config, storage, &id)
        .await?
        .ok_or_else(|| OrderFailure::new(FailureReason::Storage, "the stored account vanished"))
}

async fn stored_account(
    config: &AcmeConfig,
    storage: &Storage,
    id: &str,
) -> Result<Option<Account>, OrderFailure> {
    let unusable = |e: String| OrderFailure::new(FailureReason::Storage, e);
    let Some(json) = storage
        .load_account(id)
        .await
        .map_err(|e| unusable(e.to_string()))?
    else {
        return Ok(None);
    };
    let account = retrying!(
        "account",
        builder(config)?
            .from_credentials(
                serde_json::from_slice::<AccountCredentials>(&json)
                    .map_err(|e| unusable(format!("stored ACME account: {e}")))?
            )
            .await
    )?;
    Ok(Some(account))
}

/// Accounts are stored per directory: the first 16 hex digits of the URL's SHA-256.
fn account_id(directory_url: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(directory_url.as_bytes());
    hex::encode(&digest[..8])
}

fn builder(config: &AcmeConfig) -> Result<AccountBuilder, OrderFailure> {
    let built = match &config.ca_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    built.map_err(|e| {
        OrderFailure::new(
            FailureReason::Network,
            format!("ACME HTTP client (acme.ca_root?): {e}"),
        )
    })
}

/// How an order proves we hold the name.
pub enum Proof<'a> {
    /// Our own listeners answer (`acme.challenge`), through `challenges`.
    Listener(ChallengeKind, &'a Arc<Challenges>),
    /// The hook publishes a TXT record (wildcards).
    Dns(&'a Arc<DnsHook>),
}

/// An order's open challenges, closed when it is dropped.
enum Opened {
    Listener(ChallengeGuard),
    Dns(PublishedRecords),
}

impl Opened {
    fn new(proof: &Proof<'_>) -> Opened {
        match proof {
            Proof::Listener(_, challenges) => {
                Opened::Listener(ChallengeGuard::new((*challenges).clone()))
            }
            Proof::Dns(hook) => Opened::Dns(PublishedRecords::new((*hook).clone())),
        }
    }
}

/// Orders a certificate for `name`; returns the PEM to store (private key, then the chain).
pub async fn order_certificate(
    account: &Account,
    name: &str,
    proof: Proof<'_>,
    poll_limit: Duration,
) -> Result<String, OrderFailure> {
    let identifiers = [Identifier::Dns(name.to_owned())];
    let mut order = retrying!(
        "new-order",
        account.new_order(&NewOrder::new(&identifiers)).await
    )?;
    let mut guard = Opened::new(&proof);
    let mut readied = HashSet::new();
    retrying!(
        "challenges",
        open_challenges(&mut order, name, &proof, &mut guard, &mut readied).await
    )?;
    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(poll_limit);
    let status = retrying!("poll-ready", order.poll_ready(&polling).await)?;
    if status != OrderStatus::Ready {
        return Err(OrderFailure::new(
            FailureReason::Challenge,
            challenge_error(&mut order).await,
        ));
    }
    drop(guard);
    let key = KeyPair::generate().map_err(|e| crypto_failure(&e))?;
    let mut params =
        CertificateParams::new(vec![name.to_owned()]).map_err(|e| crypto_failure(&e))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| crypto_failure(&e))?;
    retrying!("finalize", order.finalize_csr(csr.der()).await)?;
    let chain = retrying!("certificate", order.poll_certificate(&polling).await)?;
    tracing::debug!(host = name, "ACME certificate downloaded");
    Ok(format!("{}{chain}", key.serialize_pem()))
}

fn crypto_failure(e: &rcgen::Error) -> OrderFailure {
    OrderFailure::new(FailureReason::CaError, format!("certificate key: {e}"))
}

/// Answers every pending authorization's challenge and tells the CA it is ready. Safe to run
/// again after a transient failure: authorizations already told are skipped.
async fn open_challenges(
    order: &mut Order,
    name: &str,
    proof: &Proof<'_>,
    opened: &mut Opened,
    readied: &mut HashSet<String>,
) -> Result<(), OrderFailure> {
    let challenge_type = match proof {
        Proof::Listener(ChallengeKind::TlsAlpn01, _) => ChallengeType::TlsAlpn01,
        Proof::Listener(ChallengeKind::Http01, _) => ChallengeType::Http01,
        Proof::Dns(_) => ChallengeType::Dns01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            status => {
                return Err(OrderFailure::new(
                    FailureReason::Challenge,
                    format!("the authorization for {name} is {status:?}"),
                ))
            }
        }
        let url = authorization.url().to_owned();
        if readied.contains(&url) {
            continue;
        }
        let mut challenge = authorization
            .challenge(challenge_type.clone())
            .ok_or_else(|| {
                OrderFailure::new(
                    FailureReason::CaError,
                    format!("the CA offers no {challenge_type:?} challenge for {name}"),
                )
            })?;
        let key_authorization = challenge.key_authorization();
        match opened {
            Opened::Listener(guard) if challenge_type == ChallengeType::TlsAlpn01 => guard
                .open_alpn(name, key_authorization.digest().as_ref())
                .map_err(|e| OrderFailure::new(FailureReason::CaError, e))?,
            Opened::Listener(guard) => {
                guard.open_http(&challenge.token, key_authorization.as_str())
            }
            Opened::Dns(records) => {
                records
                    .publish(record_name(name), key_authorization.dns_value())
                    .await?
            }
        }
        challenge.set_ready().await?;
        readied.insert(url);
    }
    Ok(())
}

/// What the CA said about the failed challenge, for the error and the logs.
async fn challenge_error(order: &mut Order) -> String {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else {
            continue;
        };
        let problem = state.challenges.iter().find_map(|c| c.error.as_ref());
        if let Some(problem) = problem {
            return format!("the CA could not validate the challenge: {problem}");
        }
    }
    "the order became invalid (the CA could not validate the challenge)".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str, status: u16) -> instant_acme::Error {
        let json = serde_json::json!({
            "type": format!("{PROBLEM}{kind}"),
            "detail": "d",
            "status": status,
        });
        instant_acme::Error::Api(serde_json::from_value(json).unwrap())
    }

    #[test]
    fn failures_are_classified_by_reason() {
        // (error, reason, transient)
        let rows = [
            (
                problem("rateLimited", 429),
                FailureReason::RateLimited,
                false,
            ),
            (problem("badNonce", 400), FailureReason::CaError, true),
            (problem("connection", 400), FailureReason::Challenge, false),
            (
                problem("incorrectResponse", 403),
                FailureReason::Challenge,
                false,
            ),
            (
                problem("unauthorized", 403),
                FailureReason::Challenge,
                false,
            ),
            (problem("serverInternal", 500), FailureReason::CaError, true),
            (problem("malformed", 400), FailureReason::CaError, false),
            (
                instant_acme::Error::Timeout(None),
                FailureReason::Timeout,
                false,
            ),
            (
                instant_acme::Error::Other("connection refused".into()),
                FailureReason::Network,
                true,
            ),
            (instant_acme::Error::Crypto, FailureReason::CaError, false),
        ];
        for (error, reason, transient) in rows {
            let what = error.to_string();
            let failure = OrderFailure::from(error);
            assert_eq!(
                (failure.reason, failure.transient),
                (reason, transient),
                "{what}"
            );
        }
    }

    #[test]
    fn pauses_grow_and_stay_bounded() {
        let pauses: Vec<u64> = (1..8).map(|a| pause_before(a).as_millis() as u64).collect();
        assert_eq!(pauses, [400, 800, 1600, 3200, 6400, 6400, 6400]);
    }
}
