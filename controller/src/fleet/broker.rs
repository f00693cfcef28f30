//! The embedded MQTT broker (rumqttd, MQTT 3.1.1 on one TCP listener). It
//! keeps retained messages and sessions in memory only: the controller
//! republishes every snapshot when it (re)connects, and agents republish
//! their presence and report (design.md §3).
//!
//! rumqttd's router runs on its own OS thread; the listener runs as a task
//! on the controller's runtime.

use std::net::SocketAddr;

use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// Starts the broker on `listen` (port 0: a free port) and returns the
/// address. The address is bound here first, so a port already in use is an
/// error at start-up, not a log line later. The listener is a task of
/// `tasks` and stops accepting when `stop` flips (the router thread lives on
/// until the process exits).
pub async fn start(
    listen: SocketAddr,
    max_payload: usize,
    tasks: &mut JoinSet<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr, BrokerError> {
    // rumqttd binds the address itself; check it is free so the error is ours.
    let probe =
        tokio::net::TcpListener::bind(listen).await.map_err(|source| BrokerError::Listen { addr: listen, source })?;
    let listen = probe.local_addr().map_err(|source| BrokerError::Listen { addr: listen, source })?;
    drop(probe);
    let router = Router::new(
        0,
        RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            // Per-topic in-memory history; retained messages are kept apart.
            max_segment_size: 256 * 1024,
            max_segment_count: 2,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
    );
    let router_tx = router.spawn();
    let settings = ServerSettings {
        name: "kedge".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 5000,
            // Room for the envelope around a payload at the cap; anything
            // larger is refused by the broker and never reaches an agent.
            max_payload_size: max_payload + 4096,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let mut server = Server::new(settings, router_tx, V4);
    tasks.spawn(async move {
        tokio::select! {
            r = server.start(LinkType::Remote) => if let Err(e) = r {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            },
            _ = stop.wait_for(|v| *v) => {}
        }
    });
    Ok(listen)
}
