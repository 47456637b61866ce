//! Audit actor: receives one record per attempt, seals it into its hash chain and stores it on
//! `HMS_AUDIT` in batches, never holding a delivery up.
//!
//! Records are sealed (chained) only when a batch is about to be stored, so that when the audit
//! stream is unavailable for long and the in-memory backlog overflows, the oldest unsealed
//! records are dropped and replaced by one sealed `gap` record saying how many and when: the
//! chain stays verifiable and the loss is on record.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;

use crate::audit::{AuditRecord, Chainer};
use crate::bus::{AuditEntry, Bus};

/// Records kept in memory while `HMS_AUDIT` is unavailable; beyond it the oldest are dropped.
pub const MAX_BACKLOG: usize = 100_000;
/// Largest batch stored at once.
pub const BATCH: usize = 512;
/// How long a record may wait for its batch to fill.
pub const LINGER: Duration = Duration::from_millis(50);

/// Messages to the audit actor.
pub enum AuditMsg {
    /// One attempt (or accepted webhook): the consumer whose chain it belongs to, and the record.
    Record {
        consumer: String,
        record: AuditRecord,
    },
    /// Store what is buffered (timer, or after a batch ended).
    Flush,
    /// A store finished: how many of the batch are stored.
    Stored {
        batch: Vec<AuditEntry>,
        stored: usize,
        error: Option<String>,
    },
}

/// Where one consumer's records go: its subject and its chain in this run.
struct Route {
    subject: Arc<str>,
    chain: Arc<str>,
}

pub struct AuditActor;

pub struct AuditArgs {
    pub bus: Bus,
    /// Distinguishes this process run's chains from others (several instances, restarts).
    pub run_id: String,
}

pub struct AuditState {
    bus: Bus,
    run_id: String,
    chainer: Chainer,
    /// Subject and chain of each consumer seen, built once.
    routes: HashMap<String, Arc<Route>>,
    /// Unsealed records.
    backlog: VecDeque<(Arc<Route>, AuditRecord)>,
    /// Size of the sealed batch being stored (0: none).
    in_flight: usize,
    /// A sealed batch to be stored again after a failure.
    retry_batch: Option<Vec<AuditEntry>>,
    dropped: u64,
    dropped_since: Option<String>,
    flush_scheduled: bool,
    failures_in_a_row: u32,
    pending: metrics::Gauge,
}

impl Actor for AuditActor {
    type Msg = AuditMsg;
    type State = AuditState;
    type Arguments = AuditArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<AuditMsg>,
        args: AuditArgs,
    ) -> Result<AuditState, ActorProcessingErr> {
        Ok(AuditState {
            bus: args.bus,
            run_id: args.run_id,
            chainer: Chainer::default(),
            routes: HashMap::new(),
            backlog: VecDeque::new(),
            in_flight: 0,
            retry_batch: None,
            dropped: 0,
            dropped_since: None,
            flush_scheduled: false,
            failures_in_a_row: 0,
            pending: metrics::gauge!(crate::metrics::AUDIT_PENDING),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<AuditMsg>,
        msg: AuditMsg,
        st: &mut AuditState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AuditMsg::Record { consumer, record } => {
                if st.backlog.len() >= MAX_BACKLOG {
                    st.backlog.pop_front();
                    if st.dropped == 0 {
                        st.dropped_since = Some(crate::delivery::now_rfc3339());
                    }
                    st.dropped += 1;
                    metrics::counter!(crate::metrics::AUDIT_DROPPED_TOTAL).increment(1);
                }
                let route = match st.routes.get(&consumer) {
                    Some(r) => r.clone(),
                    None => {
                        let r = Arc::new(Route {
                            subject: format!("external.sync.{consumer}").into(),
                            chain: format!("{consumer}/{}", st.run_id).into(),
                        });
                        st.routes.insert(consumer, r.clone());
                        r
                    }
                };
                st.backlog.push_back((route, record));
                if st.backlog.len() >= BATCH {
                    flush(&me, st);
                } else if !st.flush_scheduled {
                    st.flush_scheduled = true;
                    me.send_after(LINGER, || AuditMsg::Flush);
                }
            }
            AuditMsg::Flush => {
                st.flush_scheduled = false;
                flush(&me, st);
            }
            AuditMsg::Stored {
                batch,
                stored,
                error,
            } => {
                metrics::counter!(crate::metrics::AUDIT_WRITTEN_TOTAL).increment(stored as u64);
                st.in_flight = 0;
                if stored < batch.len() {
                    st.failures_in_a_row += 1;
                    if st.failures_in_a_row == 1 || st.failures_in_a_row % 20 == 0 {
                        tracing::warn!(
                            "audit: HMS_AUDIT unavailable ({}); {} records waiting; deliveries go on",
                            error.unwrap_or_default(),
                            st.backlog.len() + batch.len() - stored
                        );
                    }
                    st.retry_batch = Some(batch.into_iter().skip(stored).collect());
                    let delay =
                        Duration::from_millis(100 * u64::from(st.failures_in_a_row.min(50)));
                    if !st.flush_scheduled {
                        st.flush_scheduled = true;
                        me.send_after(delay, || AuditMsg::Flush);
                    }
                } else {
                    if st.failures_in_a_row > 0 {
                        tracing::info!("audit: HMS_AUDIT available again");
                    }
                    st.failures_in_a_row = 0;
                    if !st.backlog.is_empty() {
                        flush(&me, st);
                    }
                }
            }
        }
        let waiting = st.backlog.len() + st.retry_batch.as_ref().map_or(0, Vec::len) + st.in_flight;
        st.pending.set(waiting as f64);
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<AuditMsg>,
        st: &mut AuditState,
    ) -> Result<(), ActorProcessingErr> {
        // Last chance on shutdown: store what is left (bounded wait).
        let mut batch = st.retry_batch.take().unwrap_or_default();
        batch.extend(seal(st, usize::MAX));
        if !batch.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(5), st.bus.store_audit(&batch, true))
                .await;
        }
        Ok(())
    }
}

/// Seals up to `max` backlog records (plus a `gap` record first when some were dropped).
fn seal(st: &mut AuditState, max: usize) -> Vec<AuditEntry> {
    let mut batch = Vec::with_capacity(st.backlog.len().min(max));
    if st.dropped > 0 {
        if let Some(route) = st.backlog.front().map(|(r, _)| r.clone()) {
            let gap = json!({
                "kind": "gap",
                "dropped": st.dropped,
                "since": st.dropped_since,
                "until": crate::delivery::now_rfc3339(),
                "reason": "HMS_AUDIT was unavailable and the in-memory backlog was full",
            });
            batch.push(pack(&mut st.chainer, &route, AuditRecord::Other(gap)));
            st.dropped = 0;
            st.dropped_since = None;
        }
    }
    while batch.len() < max {
        let Some((route, record)) = st.backlog.pop_front() else {
            break;
        };
        batch.push(pack(&mut st.chainer, &route, record));
    }
    batch
}

/// Seals one record into its chain and gives what is stored.
fn pack(chainer: &mut Chainer, route: &Route, record: AuditRecord) -> AuditEntry {
    let (n, bytes) = chainer.seal_bytes(&route.chain, record);
    AuditEntry {
        subject: route.subject.clone(),
        chain: route.chain.clone(),
        n,
        bytes: Bytes::from(bytes),
    }
}

/// Starts storing the next batch in the background, unless one is in flight.
fn flush(me: &ActorRef<AuditMsg>, st: &mut AuditState) {
    if st.in_flight > 0 {
        return;
    }
    // A batch stored again after a failure is stored the careful way (every record confirmed).
    let (batch, careful) = match st.retry_batch.take() {
        Some(b) if !b.is_empty() => (b, true),
        _ => (seal(st, BATCH), false),
    };
    if batch.is_empty() {
        return;
    }
    st.in_flight = batch.len();
    let (bus, me) = (st.bus.clone(), me.clone());
    tokio::spawn(async move {
        let (stored, error) = match bus.store_audit(&batch, careful).await {
            Ok(n) => (n, None),
            Err((n, e)) => (n, Some(e.to_string())),
        };
        let _ = me.send_message(AuditMsg::Stored {
            batch,
            stored,
            error,
        });
    });
}
