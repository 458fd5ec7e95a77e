//! The final drain of a NATS stream: read it from sequence 1 with a fresh
//! consumer from the stream's leader, and confirm against a second stream
//! info that nothing moved meanwhile.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use super::connect;
use crate::history::{value_of, EventKind, History, Unreadable};

/// The stream's leader and last sequence, as stream info reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamView {
    leader: String,
    last: u64,
    first: u64,
}

impl StreamView {
    fn of(info: &stream::Info) -> StreamView {
        StreamView {
            leader: info
                .cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
                .unwrap_or_else(|| "none".into()),
            last: info.state.last_sequence,
            first: info.state.first_sequence,
        }
    }
}

/// What one read of the stream found.
enum StreamRead {
    /// The stream does not exist any more: it holds nothing.
    Gone(String),
    Read {
        view: StreamView,
        records: Vec<(i64, String)>,
        unreadable: Option<Unreadable>,
    },
}

/// Reads the stream from sequence 1 to its last sequence with a fresh
/// consumer, then asks for stream info again: when the leader or the last
/// sequence moved meanwhile, it reads again (only a confirmed read is
/// recorded). Returns {0: last sequence + 1}. A stream whose leader reports
/// sequences that the consumer does not deliver for the drain's patience
/// is unreadable from there (a finding, see `workload::drain`), not an
/// unfinished drain.
pub async fn drain(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    history: &History,
) -> Result<(BTreeMap<i32, i64>, Vec<Unreadable>), String> {
    let deadline = Instant::now() + timeout;
    let patience = crate::driver::patience(timeout);
    for attempt in 1.. {
        let (view, records, unreadable) =
            match read_stream(bootstrap, topic, timeout, deadline, patience).await? {
                StreamRead::Gone(why) => {
                    history.record("drain", EventKind::Note { message: why });
                    return Ok((BTreeMap::from([(0, 0)]), Vec::new()));
                }
                StreamRead::Read {
                    view,
                    records,
                    unreadable,
                } => (view, records, unreadable),
            };
        let now = stream_info(bootstrap, topic)
            .await
            .map(|i| StreamView::of(&i));
        match now {
            Ok(now) if now == view => {
                crate::driver::record_drained(history, 0, records);
                return Ok((
                    BTreeMap::from([(0, view.last as i64 + 1)]),
                    unreadable.into_iter().collect(),
                ));
            }
            other => {
                let why = match other {
                    Ok(now) => format!(
                        "stream leader {} last sequence {} became leader {} last sequence {}",
                        view.leader, view.last, now.leader, now.last
                    ),
                    Err(e) => format!("stream info after the read: {e}"),
                };
                history.record(
                    "drain",
                    EventKind::Note {
                        message: format!(
                            "drain attempt {attempt} not confirmed: {why}; reading again"
                        ),
                    },
                );
                if Instant::now() >= deadline {
                    return Err(format!("drain not confirmed before the timeout: {why}"));
                }
            }
        }
    }
    unreachable!("the attempts loop only ends by returning")
}

async fn stream_info(bootstrap: &str, topic: &str) -> Result<stream::Info, String> {
    let js = jetstream::new(connect(bootstrap).await.map_err(|e| e.to_string())?);
    let s = js.get_stream(topic).await.map_err(|e| e.to_string())?;
    s.get_info().await.map_err(|e| e.to_string())
}

/// The stream with the view of its leader, once it has one. Ok(Err(why)):
/// the stream does not exist any more.
async fn led_stream(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    deadline: Instant,
) -> Result<Result<(stream::Stream, StreamView), String>, String> {
    let mut last_error = String::new();
    // JetStream answering "stream not found" this long: the stream is gone.
    let gone_after = (timeout / 3).max(Duration::from_secs(10));
    let mut not_found_since: Option<Instant> = None;
    let mut leaderless = std::collections::BTreeSet::new();
    loop {
        if Instant::now() >= deadline {
            return Err(format!("stream info: {last_error}"));
        }
        match connect(bootstrap).await {
            Ok(c) => match jetstream::new(c).get_stream(topic).await {
                Ok(s) => match s.get_info().await {
                    // Without a stream leader the servers answer from their
                    // own replicas, which disagree after a power loss (seen:
                    // last sequence 85,876 from one, 97,821 from another):
                    // nothing certain can be read until there is a leader.
                    Ok(info) if info.cluster.as_ref().is_none_or(|c| c.leader.is_some()) => {
                        return Ok(Ok((s, StreamView::of(&info))))
                    }
                    Ok(info) => {
                        leaderless.insert(info.state.last_sequence);
                        last_error = format!(
                            "the stream has no leader (its replicas report last sequences {leaderless:?})"
                        );
                    }
                    Err(e) => last_error = e.to_string(),
                },
                Err(e) => {
                    last_error = e.to_string();
                    if last_error.contains("stream not found") {
                        let since = *not_found_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= gone_after {
                            return Ok(Err(format!(
                                "stream {topic} does not exist any more ({last_error} for {gone_after:?}): it holds nothing"
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            },
            Err(e) => last_error = e.to_string(),
        }
        not_found_since = None;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One read of the whole stream (see `drain`).
async fn read_stream(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    deadline: Instant,
    patience: Duration,
) -> Result<StreamRead, String> {
    let (stream, view) = match led_stream(bootstrap, topic, timeout, deadline).await? {
        Ok(found) => found,
        Err(gone) => return Ok(StreamRead::Gone(gone)),
    };
    let mut last_error = String::new();
    let last = view.last;
    let started = Instant::now();
    let unreadable = |from: u64, since: Instant, why: &str| Unreadable {
        partition: 0,
        from: from as i64,
        to: last as i64 + 1,
        waited_ms: since.elapsed().as_millis() as u64,
        reason: format!(
            "stream leader {} reports sequences {}..={}; {why}",
            view.leader, view.first, view.last
        ),
    };
    let consumer = loop {
        let made = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await;
        match made {
            Ok(c) => break c,
            Err(e) if last == 0 => return Err(format!("drain consumer: {e}")),
            Err(e) => last_error = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(format!("drain consumer: {last_error}"));
        }
        if started.elapsed() >= patience {
            let why = format!("no consumer could be created to read them ({last_error})");
            return Ok(StreamRead::Read {
                view: view.clone(),
                records: Vec::new(),
                unreadable: Some(unreadable(1, started, &why)),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut records = Vec::new();
    let mut next = 1u64;
    let mut stalled_since: Option<Instant> = None;
    while next <= last {
        if Instant::now() >= deadline {
            return Err(format!("drain timed out at sequence {next} of {last}"));
        }
        let since = *stalled_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= patience {
            // Reporting what it does not serve: name the range (the
            // confirmation in `drain` proves the stream stayed stable).
            let why = format!(
                "the consumer delivered nothing from {next}{}",
                if last_error.is_empty() {
                    String::new()
                } else {
                    format!(" ({last_error})")
                }
            );
            let unreadable = unreadable(next, since, &why);
            return Ok(StreamRead::Read {
                view,
                records,
                unreadable: Some(unreadable),
            });
        }
        let mut batch = match consumer
            .batch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
        {
            Ok(b) => b,
            Err(e) => {
                last_error = e.to_string();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while let Some(m) = batch.next().await {
            let Ok(m) = m else { break };
            let Ok(info) = m.info() else { continue };
            let seq = info.stream_sequence;
            records.push((seq as i64, value_of(Some(&m.payload))));
            if seq >= next {
                stalled_since = None;
            }
            next = next.max(seq + 1);
        }
    }
    Ok(StreamRead::Read {
        view,
        records,
        unreadable: None,
    })
}
