//! `Bus::flood`: a synthetic flood published with JetStream acks.
//!
//! A window of acks in flight, paced or as fast as the server takes them; the plan, payloads
//! and statistics are [`crate::flood`]'s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::Bus;
use crate::flood::{now_ns, FloodPlan, FloodReport, PublishStats};

/// Why a flood stopped before it published everything.
#[derive(Debug, thiserror::Error)]
pub enum FloodError {
    /// JetStream has no stream on the subject: nothing could ever be stored.
    #[error("no stream captures {0}: run `hms-sync up` with a connector on this topic first (it creates HMS_EVENTS), or create a stream for it")]
    NoStream(String),
}

/// How far a flood has come, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Events handed to the connection.
    pub sent: u64,
    /// Events JetStream acknowledged.
    pub acked: u64,
    /// Events that failed.
    pub errors: u64,
}

struct Pending {
    ack: PublishAckFuture,
    sent: Instant,
    _permit: OwnedSemaphorePermit,
}

/// What the ack collector and the publisher share.
#[derive(Default)]
struct Shared {
    stats: Mutex<PublishStats>,
    acked: AtomicU64,
    errors: AtomicU64,
    no_stream: AtomicBool,
}

impl Shared {
    fn failed(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Relaxed);
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failed(e);
    }
}

impl Bus {
    /// Publishes `plan.count` events, event `seq` being `payload(seq, sent_at_ns)`, with
    /// JetStream acks and at most `plan.window` of them outstanding; paced at `plan.rate`
    /// when given. `progress` is called about every 100 ms and once at the end. Failed
    /// events are counted in the report; a subject no stream captures ends the flood at once.
    pub async fn flood(
        &self,
        plan: &FloodPlan,
        mut payload: impl FnMut(u64, u64) -> Bytes,
        mut progress: impl FnMut(Progress),
    ) -> Result<FloodReport, FloodError> {
        let shared = Arc::new(Shared::default());
        let window = Arc::new(Semaphore::new(plan.window.max(1)));
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        let collector = {
            let shared = shared.clone();
            tokio::spawn(async move {
                // Acks come back in order: awaiting them in turn measures each one.
                while let Some(p) = rx.recv().await {
                    match p.ack.await {
                        Ok(_) => {
                            shared
                                .stats
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .acked(p.sent.elapsed());
                            shared.acked.fetch_add(1, Relaxed);
                        }
                        Err(e) => {
                            if e.kind() == PublishErrorKind::StreamNotFound {
                                shared.no_stream.store(true, Relaxed);
                            }
                            shared.failed(e);
                        }
                    }
                }
            })
        };
        let start = Instant::now();
        let mut last_progress = Instant::now();
        let mut sent = 0;
        let report = |shared: &Shared, sent: u64| Progress {
            sent,
            acked: shared.acked.load(Relaxed),
            errors: shared.errors.load(Relaxed),
        };
        for seq in 0..plan.count {
            if shared.no_stream.load(Relaxed) {
                break;
            }
            if let Some(due) = plan.due(seq) {
                let elapsed = start.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
            let Ok(permit) = window.clone().acquire_owned().await else {
                break;
            };
            let subject = plan.subject(seq).to_string();
            let body = payload(seq, now_ns());
            let at = Instant::now();
            match self.js.publish(subject, body).await {
                Ok(ack) => {
                    let _ = tx.send(Pending {
                        ack,
                        sent: at,
                        _permit: permit,
                    });
                }
                Err(e) => shared.failed(e),
            }
            sent += 1;
            if last_progress.elapsed() >= Duration::from_millis(100) {
                last_progress = Instant::now();
                progress(report(&shared, sent));
            }
        }
        drop(tx);
        let _ = collector.await;
        let elapsed = start.elapsed();
        progress(report(&shared, sent));
        if shared.no_stream.load(Relaxed) && shared.acked.load(Relaxed) == 0 {
            return Err(FloodError::NoStream(plan.subject(0).to_string()));
        }
        let stats = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        Ok(stats.report(plan, elapsed))
    }
}
