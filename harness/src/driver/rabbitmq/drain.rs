//! The final drain of a queue: consume it whole without acknowledging
//! anything, until nothing more comes and the queue says it has no message
//! ready (every message it holds is then out to the drain, unacknowledged),
//! then close the connection, which puts every message back. The read is
//! confirmed by that count; any error starts it again from the beginning.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use super::{connect, Nodes};
use crate::history::{value_of, History};

/// How long nothing must arrive before the drain asks the queue whether
/// anything is left.
const QUIET: Duration = Duration::from_millis(500);

/// One read of the whole queue: the values, in delivery order.
async fn read(nodes: &Nodes, queue: &str, deadline: Instant) -> Result<Vec<String>, String> {
    let conn = connect(&nodes.amqp, 0).await.map_err(|e| e.to_string())?;
    let result = async {
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| format!("open a channel: {e}"))?;
        let probe = conn
            .create_channel()
            .await
            .map_err(|e| format!("open a channel: {e}"))?;
        // No prefetch limit: the broker sends everything it holds.
        ch.basic_qos(0, BasicQosOptions::default())
            .await
            .map_err(|e| format!("basic.qos: {e}"))?;
        let mut consumer = ch
            .basic_consume(
                queue,
                "unlost-drain",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consume {queue}: {e}"))?;
        let mut values = Vec::new();
        loop {
            if Instant::now() >= deadline {
                return Err(format!("{} messages read, and more kept coming", values.len()));
            }
            match tokio::time::timeout(QUIET, consumer.next()).await {
                Ok(Some(Ok(d))) => values.push(value_of(Some(&d.data))),
                Ok(Some(Err(e))) => return Err(format!("consume {queue}: {e}")),
                Ok(None) => return Err(format!("the drain's consumer on {queue} was cancelled")),
                Err(_) => {
                    let q = probe
                        .queue_declare(
                            queue,
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await
                        .map_err(|e| format!("queue {queue}: {e}"))?;
                    if q.message_count() == 0 {
                        return Ok(values);
                    }
                }
            }
        }
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
    Err(format!("no complete read of queue {queue} within {timeout:?}: {last}"))
}
