//! RabbitMQ clients (lapin): a producer that publishes persistent messages
//! and, unless acks is 0, waits for the publisher confirm; and a group
//! member that consumes with a prefetch and acknowledges after or before
//! processing (or consumes with auto-ack).

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};

use super::{connect, Nodes};
use crate::driver::{
    Completion, Delivery, DriverError, Member, MemberSetup, Producer, ProducerSetup, Route,
};
use crate::history::value_of;
use crate::plan::{Acks, CommitPolicy};

/// Persistent (delivery mode 2): written to disk by durable queues.
const PERSISTENT: u8 = 2;

/// A producer on one connection and channel, made again after any error
/// (the next node in turn). With confirms (acks 1 or all): an ack is
/// `Ok`, a nack is `Fail` (RabbitMQ says it did not take the message; the
/// checker holds it to that), a message returned as unroutable (no such
/// queue) is `Fail`; a timeout or a lost channel is unknown. Without
/// confirms (acks 0) a publish the client wrote is `Ok` with no proof.
/// The client never resends by itself.
pub struct RabbitProducer {
    link: std::sync::Arc<Link>,
    timeout: Duration,
}

/// A producer's connection and channel, shared with the task that opens
/// them again.
struct Link {
    nodes: Nodes,
    /// The node to try first (producers spread over the nodes).
    first: usize,
    confirms: bool,
    channel: tokio::sync::Mutex<Option<(Connection, Channel)>>,
    /// One publish at a time writes to the channel. lapin numbers a
    /// publish for its confirm and then queues its frames, two steps
    /// another thread's publish can come between: the broker then numbers
    /// them the other way round, and each confirm (ack or nack) is given
    /// to the other message (found by the matrix: a nacked message stored,
    /// and an acknowledged one lost; docs/rabbitmq.md).
    publishing: tokio::sync::Mutex<()>,
}

impl Link {
    /// The open channel, or a new one (with confirms) when there is none.
    async fn channel(&self) -> Result<Channel, DriverError> {
        let mut guard = self.channel.lock().await;
        if let Some((c, ch)) = guard.as_ref() {
            if c.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        if let Some((c, _)) = guard.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), c.close(200, "reopen")).await;
        }
        let conn = connect(&self.nodes.amqp, self.first).await?;
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| DriverError::refused("open a channel", e))?;
        if self.confirms {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| DriverError::refused("confirm.select", e))?;
        }
        *guard = Some((conn, ch.clone()));
        Ok(ch)
    }
}

impl RabbitProducer {
    pub fn new(nodes: Nodes, setup: &ProducerSetup) -> RabbitProducer {
        let first = setup.index as usize % nodes.amqp.len().max(1);
        RabbitProducer {
            link: std::sync::Arc::new(Link {
                nodes,
                first,
                confirms: setup.spec.acks != Acks::None,
                channel: tokio::sync::Mutex::new(None),
                publishing: tokio::sync::Mutex::new(()),
            }),
            timeout: setup.spec.timeout,
        }
    }

    /// The channel. Opening one runs in a task of its own: a send that
    /// gives up waiting does not cancel it (sends queue behind the one
    /// that opens it, and cancelling it with each would never let a
    /// connection finish).
    async fn channel(&self) -> Result<Channel, DriverError> {
        let link = self.link.clone();
        tokio::spawn(async move { link.channel().await })
            .await
            .map_err(|e| DriverError::refused("open a channel", e))?
    }
}

impl Producer for RabbitProducer {
    fn retries_internally(&self) -> bool {
        false
    }

    fn send<'a>(
        &'a self,
        queue: &'a str,
        _value: &'a str,
        payload: Vec<u8>,
        _route: &'a Route,
    ) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            let ch = match tokio::time::timeout(self.timeout, self.channel()).await {
                Ok(Ok(ch)) => ch,
                // Nothing left the client.
                Ok(Err(e)) => return Completion::Fail(format!("no channel: {e}")),
                Err(_) => return Completion::Fail(format!("no channel within {:?}", self.timeout)),
            };
            let written = self.link.publishing.lock().await;
            let publish = ch.basic_publish(
                "",
                queue,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                BasicProperties::default().with_delivery_mode(PERSISTENT),
            );
            let confirm = match tokio::time::timeout(self.timeout, publish).await {
                Ok(Ok(c)) => c,
                // The frame may have gone out before the channel broke.
                Ok(Err(e)) => return Completion::Info(format!("publish: {e}")),
                Err(_) => {
                    return Completion::Info(format!(
                        "publish not written within {:?}",
                        self.timeout
                    ))
                }
            };
            // Numbered and queued: the next publish may go.
            drop(written);
            if !self.link.confirms {
                return Completion::Ok {
                    partition: 0,
                    position: -1,
                };
            }
            match tokio::time::timeout(self.timeout, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => Completion::Ok {
                    partition: 0,
                    position: -1,
                },
                Ok(Ok(Confirmation::Ack(Some(_)))) => {
                    Completion::Fail(format!("returned unroutable: no queue {queue}"))
                }
                Ok(Ok(Confirmation::Nack(_))) => Completion::Fail("nacked by the broker".into()),
                Ok(Ok(Confirmation::NotRequested)) => {
                    Completion::Info("no confirm was requested".into())
                }
                Ok(Err(e)) => Completion::Info(format!("confirm: {e}")),
                Err(_) => Completion::Info(format!("no confirm within {:?}", self.timeout)),
            }
        })
    }
}

/// One incarnation of a group member: a consumer on the queue with the
/// plan's prefetch, on a connection of its own (the group is everyone
/// consuming the queue). Acknowledgement is per message (`basic.ack`,
/// which RabbitMQ does not confirm) and there is no committed position;
/// with `auto` the consumer uses auto-ack: a message is taken out of the
/// queue as it is sent to the member. Dropping the member closes its
/// connection: whatever it did not acknowledge goes back to the queue and
/// comes again, marked redelivered.
pub struct RabbitMember {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
    /// Delivery tag of each value delivered and not yet acknowledged.
    tags: HashMap<String, u64>,
    /// Auto-ack: the broker counts a message as done once sent.
    auto: bool,
    name: String,
    history: crate::history::History,
}

impl RabbitMember {
    pub fn new(
        nodes: &Nodes,
        setup: MemberSetup,
        prefetch: u16,
    ) -> Result<RabbitMember, DriverError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DriverError::refused("member runtime", e))?;
        // Members spread over the nodes by their name's number.
        let first = setup
            .name
            .trim_start_matches('c')
            .split('#')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        let auto = setup.spec.commit == CommitPolicy::Auto;
        let (name, history) = (setup.name.clone(), setup.history.clone());
        let (conn, channel, consumer) = rt.block_on(async {
            let conn = connect(&nodes.amqp, first).await?;
            let ch = conn
                .create_channel()
                .await
                .map_err(|e| DriverError::refused("open a channel", e))?;
            ch.basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| DriverError::refused("basic.qos", e))?;
            let consumer = ch
                .basic_consume(
                    &setup.topic,
                    &setup.name,
                    BasicConsumeOptions {
                        no_ack: auto,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| DriverError::refused(format!("consume {}", setup.topic), e))?;
            Ok::<_, DriverError>((conn, ch, consumer))
        })?;
        Ok(RabbitMember {
            rt,
            conn,
            channel,
            consumer,
            tags: HashMap::new(),
            auto,
            name,
            history,
        })
    }

    fn delivery(&mut self, d: lapin::message::Delivery) -> Delivery {
        let value = value_of(Some(&d.data));
        self.tags.insert(value.clone(), d.delivery_tag);
        Delivery {
            partition: 0,
            position: -1,
            value,
            redelivered: d.redelivered,
        }
    }
}

impl Member for RabbitMember {
    fn poll(&mut self, max: usize) -> Result<Vec<Delivery>, DriverError> {
        let mut got = Vec::new();
        // The first message within 300 ms, then what else arrives within
        // 50 ms of it (a batch, so a crash has one to land in).
        let mut wait = Duration::from_millis(300);
        while got.len() < max {
            let consumer = &mut self.consumer;
            // The timer is made inside the member's runtime.
            let next = self
                .rt
                .block_on(async { tokio::time::timeout(wait, consumer.next()).await });
            match next {
                Err(_) => break,
                Ok(None) => {
                    return Err(DriverError::refused(
                        "consume",
                        "the consumer was cancelled",
                    ))
                }
                Ok(Some(Err(e))) => return Err(DriverError::refused("consume", e)),
                Ok(Some(Ok(d))) => {
                    let d = self.delivery(d);
                    got.push(d);
                    wait = Duration::from_millis(50);
                }
            }
        }
        Ok(got)
    }

    fn commit(&mut self, batch: &[Delivery]) -> Result<Vec<(i32, i64)>, DriverError> {
        let tags: Vec<u64> = batch
            .iter()
            .filter_map(|d| self.tags.remove(&d.value))
            .collect();
        let Some(&last) = tags.iter().max() else {
            return Ok(Vec::new());
        };
        // Tags grow on a channel and earlier batches are acknowledged
        // already: one ack of everything up to the batch's last.
        self.rt
            .block_on(
                self.channel
                    .basic_ack(last, BasicAckOptions { multiple: true }),
            )
            .map_err(|e| DriverError::refused(format!("ack of {} messages", tags.len()), e))?;
        Ok(Vec::new())
    }
}

impl Drop for RabbitMember {
    fn drop(&mut self) {
        if self.auto {
            // With auto-ack the broker took out of the queue everything it
            // sent this member, including what the client holds and poll
            // never returned: those are gone with the member. Cancel the
            // consumer (the broker sends nothing after its cancel-ok), take
            // in what came before, and record each as acknowledged (the
            // broker's view), so the checker can tell them from losses.
            let (ch, consumer, tag) = (&self.channel, &mut self.consumer, &self.name);
            let held = self.rt.block_on(async {
                let mut held = Vec::new();
                if ch
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await
                    .is_err()
                {
                    return held;
                }
                while let Ok(Some(Ok(d))) =
                    tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
                {
                    held.push(value_of(Some(&d.data)));
                }
                held
            });
            for value in held {
                self.history.record(
                    &self.name,
                    crate::history::EventKind::Ack {
                        partition: 0,
                        offset: -1,
                        value: Some(value),
                    },
                );
            }
        }
        // Unacknowledged messages go back to the queue once the connection
        // is gone; closing it says so at once.
        let conn = &self.conn;
        let _ = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), conn.close(200, "member gone")).await
        });
    }
}
