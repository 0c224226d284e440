//! Client-metadata invalidations shared by replicas over Redis pub/sub.
//!
//! [`publish_invalidation`] is called wherever this replica evicts a client
//! (after a write on an `invalidates_client` route, and from the admin
//! endpoints); it never delays the caller. [`ClusterSync`] is a background
//! service that keeps one subscription to the channel and applies what the
//! other replicas publish to the live state's client cache. Pub/sub delivers
//! nothing that was sent while a replica was not subscribed: a replica whose
//! subscription was lost therefore drops its whole client cache once, right
//! after subscribing again (`portcullis_cluster_resubscriptions_total`).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures_util::StreamExt;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::edge::throttle::LogThrottle;
use crate::proxy::state::GatewayState;

/// How often the subscriber checks whether a reload replaced `[cluster]`.
const CONFIG_CHECK: Duration = Duration::from_millis(500);
/// Backoff between subscription attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A subscription attempt (connect, AUTH, SUBSCRIBE) may take this long.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One message on the channel.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Invalidation {
    /// The publishing replica (it has evicted already).
    #[serde(rename = "o")]
    pub origin: String,
    /// The client id or record id; `None`: every client.
    #[serde(rename = "c")]
    pub client: Option<String>,
    /// Compare ids ignoring case (the route's `ids_case_insensitive`).
    #[serde(rename = "i", default)]
    pub case_insensitive: bool,
}

/// Tell the other replicas to evict `client` (`None`: every client). Runs in
/// the background; failures are counted and logged, never waited for.
pub fn publish_invalidation(cluster: &Arc<Cluster>, client: Option<&str>, case_insensitive: bool) {
    let message = Invalidation {
        origin: cluster.replica().to_string(),
        client: client.map(str::to_string),
        case_insensitive,
    };
    let Ok(text) = serde_json::to_string(&message) else {
        return;
    };
    let cluster = cluster.clone();
    tokio::spawn(async move {
        if cluster.publish(&text).await.is_ok() {
            cluster
                .metrics
                .invalidations
                .with_label_values(&["sent"])
                .inc();
        }
    });
}

/// The background service that applies other replicas' invalidations.
pub struct ClusterSync {
    pub state: Arc<ArcSwap<GatewayState>>,
}

#[async_trait]
impl BackgroundService for ClusterSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let cluster = self.state.load().quotas.cluster().cloned();
            let Some(cluster) = cluster else {
                // No [cluster]: look again after a reload.
                tokio::select! {
                    _ = tokio::time::sleep(CONFIG_CHECK) => continue,
                    _ = shutdown.changed() => return,
                }
            };
            tokio::select! {
                _ = self.follow(&cluster) => {}
                _ = shutdown.changed() => {
                    cluster.metrics.subscribed.set(0);
                    return;
                }
            }
        }
    }
}

impl ClusterSync {
    /// Keep `cluster`'s channel subscribed until a reload replaces it.
    async fn follow(&self, cluster: &Arc<Cluster>) {
        static LOST: LogThrottle = LogThrottle::new(Duration::from_secs(10));
        let mut backoff = MIN_BACKOFF;
        let mut was_subscribed = false;
        loop {
            if !self.is_current(cluster) {
                return;
            }
            let pubsub = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
                let mut pubsub = cluster.client().get_async_pubsub().await?;
                pubsub.subscribe(cluster.channel()).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            let mut pubsub = match pubsub {
                Ok(Ok(p)) => p,
                failure => {
                    cluster
                        .metrics
                        .redis_errors
                        .with_label_values(&["subscribe"])
                        .inc();
                    let error = match failure {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    crate::warn_throttled!(LOST, error = %error, "cannot subscribe to the invalidation channel; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = MIN_BACKOFF;
            cluster.metrics.subscribed.set(1);
            if was_subscribed {
                // Messages published while we were away are lost: forget
                // every client once, now that new ones reach us again.
                cluster.metrics.resubscriptions.inc();
                if let Some(dir) = &self.state.load().clients {
                    dir.invalidate_all();
                }
                tracing::info!("invalidation channel subscribed again; client cache dropped once");
            }
            was_subscribed = true;
            let mut messages = pubsub.on_message();
            let mut check = tokio::time::interval(CONFIG_CHECK);
            loop {
                tokio::select! {
                    msg = messages.next() => match msg {
                        Some(msg) => self.apply(cluster, msg.get_payload_bytes()).await,
                        None => break,
                    },
                    _ = check.tick() => {
                        if !self.is_current(cluster) {
                            cluster.metrics.subscribed.set(0);
                            return;
                        }
                    }
                }
            }
            cluster.metrics.subscribed.set(0);
            cluster
                .metrics
                .redis_errors
                .with_label_values(&["subscribe"])
                .inc();
            crate::warn_throttled!(LOST, "invalidation channel lost; subscribing again");
        }
    }

    fn is_current(&self, cluster: &Arc<Cluster>) -> bool {
        self.state
            .load()
            .quotas
            .cluster()
            .is_some_and(|c| Arc::ptr_eq(c, cluster))
    }

    /// Evict what another replica invalidated.
    async fn apply(&self, cluster: &Cluster, payload: &[u8]) {
        let Ok(message) = serde_json::from_slice::<Invalidation>(payload) else {
            tracing::debug!("ignoring a malformed message on the invalidation channel");
            return;
        };
        if message.origin == cluster.replica() {
            return;
        }
        cluster
            .metrics
            .invalidations
            .with_label_values(&["received"])
            .inc();
        let state = self.state.load_full();
        let Some(dir) = &state.clients else { return };
        match &message.client {
            Some(id) => {
                let evicted = dir.invalidate(id, message.case_insensitive).await;
                tracing::debug!(client = %id, evicted, "client metadata invalidated by another replica");
            }
            None => dir.invalidate_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_unknown_fields_are_tolerated() {
        let m = Invalidation {
            origin: "r1".into(),
            client: Some("abc".into()),
            case_insensitive: true,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Invalidation>(&text).unwrap(), m);
        let all: Invalidation = serde_json::from_str(r#"{"o":"r2","c":null,"x":1}"#).unwrap();
        assert_eq!(all.client, None);
        assert!(!all.case_insensitive);
    }
}
