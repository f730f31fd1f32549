//! The gateway's local MQTT bus (the sensors' broker): each function's topic triggers are
//! subscribed; a message on one is delivered as a POST to `/` with its topic in the
//! `fleet-topic` header; a 2xx answer is published on the trigger's reply topic, when it has
//! one. A message the function cannot take — queue full, too large, timed out, failed — is
//! published unchanged on `fleet/dead-letter/<function>`, so nothing accepted vanishes.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Event, TopicRoute};

/// The dead-letter topic of a function.
pub fn dead_letter_topic(function: &str) -> String {
    format!(
        "{}dead-letter/{function}",
        protocol::function::RESERVED_TOPIC_PREFIX
    )
}

/// Runs the bus client until `cancel`, following the set of topic triggers in `routes`.
pub(super) async fn run(
    host: String,
    port: u16,
    device: String,
    mut routes: watch::Receiver<Vec<TopicRoute>>,
    cancel: CancellationToken,
) {
    let mut opts = MqttOptions::new(format!("fleet-functions-{device}"), host, port);
    opts.set_clean_session(true);
    opts.set_keep_alive(Duration::from_secs(15));
    let max = protocol::limits::MAX_FUNCTION_BODY_BYTES as usize + 4096;
    opts.set_max_packet_size(max, max);
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let mut subscribed: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = client.try_disconnect();
                return;
            }
            changed = routes.changed() => {
                if changed.is_err() {
                    return;
                }
                let want: BTreeSet<String> =
                    routes.borrow().iter().map(|r| r.filter.clone()).collect();
                for t in subscribed.difference(&want) {
                    let _ = client.try_unsubscribe(t.clone());
                }
                for t in want.difference(&subscribed) {
                    let _ = client.try_subscribe(t.clone(), QoS::AtLeastOnce);
                }
                subscribed = want;
            }
            ev = eventloop.poll() => match ev {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!("function bus connected");
                    subscribed = routes.borrow().iter().map(|r| r.filter.clone()).collect();
                    for t in &subscribed {
                        let _ = client.try_subscribe(t.clone(), QoS::AtLeastOnce);
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let matched: Vec<TopicRoute> = routes
                        .borrow()
                        .iter()
                        .filter(|r| protocol::function::topic_matches(&r.filter, &p.topic))
                        .cloned()
                        .collect();
                    for r in matched {
                        tokio::spawn(deliver(client.clone(), r, p.topic.clone(), p.payload.clone()));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "function bus connection");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

async fn deliver(client: AsyncClient, r: TopicRoute, topic: String, payload: Bytes) {
    let name = r.pool.name().to_string();
    let outcome = if payload.len() as u64 > r.pool.max_body_bytes() {
        Err("message larger than the function's max_body_bytes".to_string())
    } else {
        let ev = Event::post("/", payload.clone(), Some(("fleet-topic", topic.clone())));
        match r.pool.invoke(ev).await {
            Ok(reply) if (200..300).contains(&reply.status) => {
                if let Some(reply_topic) = &r.reply {
                    let _ = client
                        .publish(
                            reply_topic.clone(),
                            QoS::AtLeastOnce,
                            false,
                            reply.body.to_vec(),
                        )
                        .await;
                }
                Ok(())
            }
            Ok(reply) => Err(format!("answered {}", reply.status)),
            Err(e) => Err(e.to_string()),
        }
    };
    if let Err(why) = outcome {
        tracing::warn!(function = %name, %topic, %why, "message sent to the dead-letter topic");
        let _ = client
            .publish(
                dead_letter_topic(&name),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .await;
    }
}
