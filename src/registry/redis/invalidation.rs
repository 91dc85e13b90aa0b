//! Cache invalidation over Redis pub/sub: the messages on `[redis] invalidation_channel` and
//! the subscriber that applies them. The subscriber knows nothing of the proxy: the composition
//! root hands it a callback that applies a message to the live resolver.

use std::sync::Arc;

use super::conn::{RedisFailure, RedisHandle};
use crate::registry::domains::CustomDomains;
use crate::registry::Resolver;

/// A message on `[redis] invalidation_channel`.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalidation<'a> {
    Sandbox(&'a str),
    Signed(&'a str),
    /// A custom domain's record was added, verified or removed.
    Domain(&'a str),
    All,
    /// Not a message: the subscription was (re)made, so messages may have been missed. Every
    /// entry is read again before use, but kept as the stale-if-error fallback: a resubscription
    /// after a Redis node died must not fail every cached sandbox while Redis fails.
    Missed,
}

impl<'a> Invalidation<'a> {
    /// `sandbox:<id>`, `signed:<token>`, `domain:<host>`, `all`; anything else (including
    /// `runner:<id>`, whose sandboxes are not indexed) means everything, the safe answer.
    pub fn parse(message: &'a str) -> Invalidation<'a> {
        if let Some(id) = message.strip_prefix("sandbox:") {
            Invalidation::Sandbox(id)
        } else if let Some(token) = message.strip_prefix("signed:") {
            Invalidation::Signed(token)
        } else if let Some(host) = message.strip_prefix("domain:") {
            Invalidation::Domain(host)
        } else {
            Invalidation::All
        }
    }

    pub fn message(&self) -> String {
        match self {
            Invalidation::Sandbox(id) => format!("sandbox:{id}"),
            Invalidation::Signed(token) => format!("signed:{token}"),
            Invalidation::Domain(host) => format!("domain:{host}"),
            Invalidation::All | Invalidation::Missed => "all".into(),
        }
    }

    /// Applies the message to the sandbox cache and, when custom domains are on, theirs.
    pub fn apply(&self, resolver: &Resolver, domains: Option<&CustomDomains>) {
        match self {
            Invalidation::Sandbox(id) => resolver.invalidate(Some(id)),
            Invalidation::Signed(token) => resolver.invalidate_signed(token),
            Invalidation::Domain(host) => {
                if let Some(domains) = domains {
                    domains.forget(host);
                }
            }
            Invalidation::All => {
                resolver.invalidate(None);
                if let Some(domains) = domains {
                    domains.forget_all();
                }
            }
            Invalidation::Missed => {
                resolver.expire_all();
                if let Some(domains) = domains {
                    domains.expire_all();
                }
            }
        }
    }
}

/// Keeps a dedicated pub/sub connection subscribed to the invalidation channel and hands every
/// message to `apply` (the composition root's callback: it applies the message to the live
/// resolver, and answers `false` once that resolver is gone). After each (re)subscription
/// everything is invalidated, since messages may have been missed while disconnected. On
/// Sentinel the subscription follows the master (see [`RedisHandle::master_moves`]). Ends when
/// `stop` fires or `apply` answers `false`.
pub async fn run_subscriber(
    redis: Arc<RedisHandle>,
    apply: impl Fn(&Invalidation<'_>) -> bool + Send + Sync + 'static,
    stop: tokio_util::sync::CancellationToken,
) {
    use futures_util::StreamExt;
    let channel = redis.config().invalidation_channel.clone();
    let timeout = redis.config().timeout;
    let mut backoff = std::time::Duration::from_millis(50);
    let mut failing = false;
    let mut master_moves = redis.master_moves();
    while !stop.is_cancelled() {
        let subscribe = async {
            let client = redis.pubsub_client().await?;
            let address = client.get_connection_info().addr().to_string();
            let mut pubsub = redis.timed(client.get_async_pubsub()).await?;
            redis.timed(pubsub.subscribe(&channel)).await?;
            Ok::<_, RedisFailure>((pubsub, address))
        };
        match subscribe.await {
            Ok((pubsub, address)) => {
                if !apply(&Invalidation::Missed) {
                    return;
                }
                tracing::info!(%channel, "subscribed to cache invalidations");
                failing = false;
                backoff = std::time::Duration::from_millis(50);
                let (mut sink, mut messages) = pubsub.split();
                let mut ping = tokio::time::interval(std::time::Duration::from_secs(10));
                ping.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = moved_from(&mut master_moves, &address) => {
                            tracing::info!(%channel, from = %address, "redis master moved; resubscribing");
                            break;
                        }
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let Ok(text) = message.get_payload::<String>() else { continue };
                            let invalidation = Invalidation::parse(&text);
                            tracing::debug!(?invalidation, "cache invalidation");
                            if !apply(&invalidation) {
                                return;
                            }
                        }
                        _ = ping.tick() => {
                            // A half-open socket never ends the stream; a missed ping does.
                            let pong = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                tracing::warn!(%channel, "invalidation subscription lost; reconnecting");
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot subscribe to cache invalidations; retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
    }
}

/// Sentinel: resolves once the master is known to be elsewhere than `address` (the one
/// subscribed to); publishes go to the master, so the subscription must follow it. Never
/// resolves in the other modes.
async fn moved_from(moves: &mut Option<tokio::sync::watch::Receiver<String>>, address: &str) {
    let Some(moves) = moves else {
        return std::future::pending().await;
    };
    let moved = moves
        .wait_for(|now| !now.is_empty() && now != address)
        .await
        .is_ok();
    if !moved {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_messages_round_trip() {
        for m in [
            Invalidation::Sandbox("a"),
            Invalidation::Signed("t"),
            Invalidation::Domain("app.example.com"),
            Invalidation::All,
        ] {
            assert_eq!(Invalidation::parse(&m.message()), m);
        }
        assert_eq!(Invalidation::parse("runner:r1"), Invalidation::All);
    }
}
