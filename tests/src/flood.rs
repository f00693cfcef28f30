//! A node's worth of abuse for the fleet link: signed events published as
//! fast as asked (the rate-limit test and the fleet benchmark).

use std::time::Duration;

use anyhow::Result;

/// Publishes `rate` signed events a second for `length` under `node`'s
/// name (QoS 0), numbered above anything the node itself sends. Returns
/// how many went out.
pub fn events(
    host: &str,
    port: u16,
    node: &str,
    key: &kedge_common::sign::SigningKey,
    rate: u64,
    length: Duration,
) -> impl FnOnce() -> Result<u64> + Send {
    use kedge_common::envelope;
    use kedge_common::sign::Purpose;
    use kedge_common::wire::{Event, Seq};
    let topic = format!("kedge/v1/nodes/{node}/events");
    // Signed up front: the flood measures the controller, not this signer.
    let mut seq = Seq::start(1 << 30);
    let total = rate * length.as_secs();
    let payloads: Vec<Vec<u8>> = (0..total)
        .map(|i| {
            let ev =
                Event { reason: "Flood".into(), message: format!("flood {i}"), seq: seq.take(), ..Default::default() };
            envelope::encode_signed(&ev, Purpose::Event, key).unwrap_or_default()
        })
        .collect();
    let (host, node) = (host.to_owned(), node.to_owned());
    move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let mut o = rumqttc::MqttOptions::new(format!("flood-{node}"), host, port);
            o.set_keep_alive(Duration::from_secs(30));
            let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 20_000);
            let poll = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            let start = tokio::time::Instant::now();
            let mut sent = 0u64;
            for (i, p) in payloads.into_iter().enumerate() {
                // 100 per 10 ms: the rate, evenly.
                if i % 100 == 0 {
                    tokio::time::sleep_until(start + Duration::from_millis(10 * (i as u64 / 100))).await;
                }
                if client.publish(topic.clone(), rumqttc::QoS::AtMostOnce, false, p).await.is_ok() {
                    sent += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = client.disconnect().await;
            poll.abort();
            Ok(sent)
        })
    }
}
