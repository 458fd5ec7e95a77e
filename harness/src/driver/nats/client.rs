//! JetStream clients: a publisher whose sends complete as `Completion`s,
//! and a member of a durable pull consumer (the group).

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::future::BoxFuture;
use futures::StreamExt;

use super::connect;
use crate::driver::{
    Completion, Delivery, DriverError, Member, MemberSetup, Producer, ProducerSetup, Route,
};
use crate::history::value_of;
use crate::plan::CommitPolicy;

/// A JetStream publisher. The client never resends by itself; with
/// idempotence on, the value id goes in the Nats-Msg-Id header, so
/// JetStream drops the copies the harness's own resends make.
pub struct NatsProducer {
    js: jetstream::Context,
    idempotent: bool,
    timeout: Duration,
}

impl NatsProducer {
    pub async fn new(bootstrap: &str, setup: &ProducerSetup) -> Result<NatsProducer, DriverError> {
        Ok(NatsProducer {
            js: jetstream::new(connect(bootstrap).await?),
            idempotent: setup.spec.idempotent,
            timeout: setup.spec.timeout,
        })
    }
}

impl Producer for NatsProducer {
    fn retries_internally(&self) -> bool {
        false
    }

    fn send<'a>(
        &'a self,
        subject: &'a str,
        value: &'a str,
        payload: Vec<u8>,
        _route: &'a Route,
    ) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            use async_nats::jetstream::context::PublishErrorKind as K;
            let definite = |k: K| matches!(k, K::StreamNotFound | K::MaxPayloadExceeded);
            let done = |e: String, sure: bool| {
                if sure {
                    Completion::Fail(e)
                } else {
                    Completion::Info(e)
                }
            };
            let sent = if self.idempotent {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", value);
                self.js
                    .publish_with_headers(subject.to_string(), headers, payload.into())
                    .await
            } else {
                self.js.publish(subject.to_string(), payload.into()).await
            };
            let ack = match sent {
                Ok(ack) => ack,
                Err(e) => return done(e.to_string(), definite(e.kind())),
            };
            match tokio::time::timeout(self.timeout, ack).await {
                Ok(Ok(a)) => Completion::Ok {
                    partition: 0,
                    position: a.sequence as i64,
                },
                Ok(Err(e)) => done(e.to_string(), definite(e.kind())),
                Err(_) => Completion::Info(format!("no JetStream ack within {:?}", self.timeout)),
            }
        })
    }
}

/// A member of the group's durable pull consumer: JetStream spreads
/// messages over the members and redelivers what is not acknowledged
/// within 5 s. Acknowledgement is per message and there is no committed
/// position, so `skipped` is not observed with NATS. With `auto` the
/// member acknowledges on receipt.
pub struct NatsMember {
    rt: tokio::runtime::Runtime,
    consumer: consumer::Consumer<consumer::pull::Config>,
    auto: bool,
    /// The last polled batch, for its acknowledgements.
    pending: Vec<(i64, jetstream::Message)>,
}

impl NatsMember {
    pub fn new(bootstrap: &str, setup: MemberSetup) -> Result<NatsMember, DriverError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DriverError::refused("consumer runtime", e))?;
        let consumer = rt.block_on(async {
            let js = jetstream::new(connect(bootstrap).await?);
            let stream = js
                .get_stream(&setup.topic)
                .await
                .map_err(|e| DriverError::refused(format!("stream {}", setup.topic), e))?;
            stream
                .get_or_create_consumer(
                    &setup.spec.group,
                    consumer::pull::Config {
                        durable_name: Some(setup.spec.group.clone()),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: Duration::from_secs(5),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| DriverError::refused(format!("consumer {}", setup.spec.group), e))
        })?;
        Ok(NatsMember {
            rt,
            consumer,
            auto: setup.spec.commit == CommitPolicy::Auto,
            pending: Vec::new(),
        })
    }
}

impl Member for NatsMember {
    fn poll(&mut self, max: usize) -> Result<Vec<Delivery>, DriverError> {
        let (consumer, auto) = (&self.consumer, self.auto);
        let got = self.rt.block_on(async {
            let mut messages = consumer
                .batch()
                .max_messages(max)
                .expires(Duration::from_millis(200))
                .messages()
                .await
                .map_err(|e| DriverError::refused("fetch", e))?;
            let mut got = Vec::new();
            while let Some(m) = messages.next().await {
                let Ok(m) = m else { break };
                let Ok((seq, delivered)) = m.info().map(|i| (i.stream_sequence, i.delivered))
                else {
                    continue;
                };
                if auto {
                    // Not confirmed: auto's acknowledgements are fire and
                    // forget, as a client's auto-commit is.
                    let _ = m.ack().await;
                }
                got.push((seq as i64, delivered, m));
            }
            Ok::<_, DriverError>(got)
        })?;
        let batch = got
            .iter()
            .map(|(seq, delivered, m)| Delivery {
                partition: 0,
                position: *seq,
                value: value_of(Some(&m.payload)),
                redelivered: *delivered > 1,
            })
            .collect();
        self.pending = got.into_iter().map(|(seq, _, m)| (seq, m)).collect();
        Ok(batch)
    }

    /// Acknowledges each message and waits for the server to confirm
    /// it (a plain ack is a publish that may still sit in the client when
    /// the member goes away: then the messages come again).
    fn commit(&mut self, batch: &[Delivery]) -> Result<Vec<(i32, i64)>, DriverError> {
        let pending = std::mem::take(&mut self.pending);
        let acks = pending
            .iter()
            .filter(|(seq, _)| batch.iter().any(|d| d.position == *seq))
            .map(|(seq, m)| async move { m.double_ack().await.map_err(|e| (*seq, e)) });
        let failed: Vec<String> = self
            .rt
            .block_on(futures::future::join_all(acks))
            .into_iter()
            .filter_map(|r| r.err().map(|(seq, e)| format!("sequence {seq}: {e}")))
            .collect();
        match failed.first() {
            Some(e) => Err(DriverError::refused(
                format!("ack of {} of {} messages", failed.len(), batch.len()),
                e,
            )),
            None => Ok(Vec::new()),
        }
    }
}
