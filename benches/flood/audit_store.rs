//! `audit-store`: what storing one audit record costs, by way of storing.
//!
//! JetStream publish with `Nats-Msg-Id`, without it, plain publish; in CPU of nats-server and
//! of the publisher.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use crate::procfs::{pid_cpu, threads_cpu, uptime_line};
use crate::scenarios::start_nats;

/// Stores `n` audit-sized records (450 bytes) on a fresh stream three ways, in batches of 512
/// as the audit actor does, twice each: (1) JetStream publish with `Nats-Msg-Id`, every ack
/// awaited (hms-sync's careful store); (2) the same without the id; (3) plain publishes, then a
/// flush (what hms-sync sends between a batch's first and last acked record). Prints the CPU
/// of nats-server and of this publisher per record.
pub async fn audit_store(n: u64) -> Result<(), String> {
    let nats = start_nats().await?;
    let client = async_nats::connect(nats.url())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let js = jetstream::new(client.clone());
    let body = Bytes::from(vec![b'x'; 450]);
    eprintln!(
        "audit-store: {n} records per way, batches of 512 ({})",
        uptime_line()
    );
    println!(
        "\n{:<22} {:>8} {:>14} {:>14} {:>12}",
        "way", "wall s", "nats-server us", "publisher us", "total us"
    );
    let modes = ["acked + Nats-Msg-Id", "acked", "plain"];
    for (round, mode) in modes.iter().chain(modes.iter()).enumerate() {
        let name = format!("AUDIT{round}");
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("audit{round}.>")],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create stream: {e}"))?;
        let subject = format!("audit{round}.consumer");
        let (s0, c0, t0) = (pid_cpu(nats.pid()), threads_cpu("fl-sys"), Instant::now());
        let mut i = 0;
        while i < n {
            let end = (i + 512).min(n);
            if *mode == "plain" {
                for _ in i..end {
                    client
                        .publish(subject.clone(), body.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                client.flush().await.map_err(|e| e.to_string())?;
            } else {
                let mut acks = Vec::with_capacity(512);
                for k in i..end {
                    let ack = if *mode == "acked" {
                        js.publish(subject.clone(), body.clone()).await
                    } else {
                        let mut h = async_nats::HeaderMap::new();
                        h.insert("Nats-Msg-Id", format!("chain/run:{k}").as_str());
                        js.publish_with_headers(subject.clone(), h, body.clone())
                            .await
                    };
                    acks.push(ack.map_err(|e| e.to_string())?);
                }
                for a in acks {
                    a.await.map_err(|e| e.to_string())?;
                }
            }
            i = end;
        }
        let mut st = js.get_stream(&name).await.map_err(|e| e.to_string())?;
        while st.info().await.map_err(|e| e.to_string())?.state.messages < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (server, publisher) = (
            (pid_cpu(nats.pid()) - s0) / n as f64 * 1e6,
            (threads_cpu("fl-sys") - c0) / n as f64 * 1e6,
        );
        println!(
            "{mode:<22} {:>8.2} {server:>14.1} {publisher:>14.1} {:>12.1}",
            t0.elapsed().as_secs_f64(),
            server + publisher
        );
    }
    Ok(())
}
