//! The final drain of a queue: consume it whole without acknowledging
//! anything, until nothing more comes and the queue says it has no message
//! ready (every message it holds is then out to the drain, unacknowledged),
//! then close the connection, which puts every message back. The read is
//! confirmed by that count; any error starts it again from the beginning.
//! A consumer may hold only so many unacknowledged messages (a quorum queue
//! gives an unlimited prefetch 2,000), so while messages are still ready
//! the drain adds a consumer on a channel of its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};

use super::{connect, Nodes};
use crate::history::{value_of, History};

/// How long nothing must arrive before the drain asks the queue whether
/// anything is left.
const QUIET: Duration = Duration::from_millis(500);

/// A consumer on a channel of its own, with the largest prefetch.
async fn consume(conn: &Connection, queue: &str, n: usize) -> Result<(Channel, Consumer), String> {
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| format!("open a channel: {e}"))?;
    ch.basic_qos(u16::MAX, BasicQosOptions::default())
        .await
        .map_err(|e| format!("basic.qos: {e}"))?;
    let c = ch
        .basic_consume(
            queue,
            &format!("unlost-drain-{n}"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("consume {queue}: {e}"))?;
    Ok((ch, c))
}

/// How many messages the queue has ready (not out to a consumer).
async fn ready(probe: &Channel, queue: &str) -> Result<u32, String> {
    probe
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .map_err(|e| format!("queue {queue}: {e}"))
}

/// One read of the whole queue: the values, in delivery order.
async fn read(nodes: &Nodes, queue: &str, deadline: Instant) -> Result<Vec<String>, String> {
    let conn = connect(&nodes.amqp, 0).await.map_err(|e| e.to_string())?;
    let result = async {
        let probe = conn
            .create_channel()
            .await
            .map_err(|e| format!("open a channel: {e}"))?;
        let mut consumers = vec![consume(&conn, queue, 0).await?];
        let mut values = Vec::new();
        loop {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} messages read, and more kept coming",
                    values.len()
                ));
            }
            let next = {
                let mut any =
                    futures::stream::select_all(consumers.iter_mut().map(|(_, c)| c.by_ref()));
                tokio::time::timeout(QUIET, any.next()).await
            };
            match next {
                Ok(Some(Ok(d))) => values.push(value_of(Some(&d.data))),
                Ok(Some(Err(e))) => return Err(format!("consume {queue}: {e}")),
                Ok(None) => return Err(format!("the drain's consumer on {queue} was cancelled")),
                Err(_) if ready(&probe, queue).await? > 0 => {
                    // Messages are ready and nobody is given them: every
                    // consumer holds all it may.
                    let n = consumers.len();
                    consumers.push(consume(&conn, queue, n).await?);
                }
                Err(_) => break,
            }
        }
        // Nothing is ready: every message is out to the drain, some maybe
        // still on the way. A consumer's cancel-ok comes after everything
        // sent to it, and its stream ends there.
        for (n, (ch, c)) in consumers.iter_mut().enumerate() {
            ch.basic_cancel(&format!("unlost-drain-{n}"), BasicCancelOptions::default())
                .await
                .map_err(|e| format!("cancel the drain's consumer: {e}"))?;
            loop {
                match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
                    Ok(Some(Ok(d))) => values.push(value_of(Some(&d.data))),
                    Ok(None) => break,
                    Ok(Some(Err(e))) => return Err(format!("consume {queue}: {e}")),
                    Err(_) => {
                        return Err("the drain's consumer did not end after its cancel".into())
                    }
                }
            }
        }
        Ok(values)
    }
    .await;
    // Everything read goes back to the queue (nothing was acknowledged).
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "drained")).await;
    result
}

/// Reads the queue whole, retrying until `timeout`; records a `drain`
/// event per message (position -1) and returns the count read as the
/// queue's end.
pub fn drain(
    nodes: &Nodes,
    queue: &str,
    timeout: Duration,
    history: &History,
) -> Result<BTreeMap<i32, i64>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("drain runtime: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match rt.block_on(read(nodes, queue, deadline)) {
            Ok(values) => {
                let n = values.len() as i64;
                super::super::record_drained(
                    history,
                    0,
                    values.into_iter().map(|v| (-1, v)).collect(),
                );
                return Ok(BTreeMap::from([(0, n)]));
            }
            Err(e) => {
                last = e;
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    Err(format!(
        "no complete read of queue {queue} within {timeout:?}: {last}"
    ))
}
