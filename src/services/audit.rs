//! Audit actor: receives one record per attempt (and per accepted webhook), seals it into its
//! hash chain and stores it on `HMS_AUDIT` in batches, never holding a delivery up.
//!
//! Records are sealed (chained) only when a batch is about to be stored. Every record a caller
//! hands over is counted in a [`Ledger`] shared by every incarnation of the actor, per
//! consumer: accepted, lost on the way (no actor to take it), and covered (stored, or declared
//! lost in a stored `gap` record). Whatever is never stored (the in-memory backlog overflowed
//! while `HMS_AUDIT` was unavailable, or the actor was killed with records in memory) is
//! declared in one sealed `gap` record per consumer (how many, since, until, why): the chain
//! still verifies and the loss is on record.
//!
//! Chains are `<consumer>/<run>`, `run` new for every incarnation of the actor, so a restarted
//! actor never has to guess where its predecessor's chains ended.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;

use super::slot::ActorSlot;
use crate::audit::{AuditRecord, Chainer};
use crate::bus::audit::MAX_BLOCK_BYTES;
use crate::bus::{AuditBlock, Bus};
use crate::clock::now_rfc3339;

/// Records kept in memory while `HMS_AUDIT` is unavailable; beyond it the oldest are dropped.
pub const MAX_BACKLOG: usize = 100_000;
/// Largest batch stored at once.
pub const BATCH: usize = 512;
/// How long a record may wait for its batch to fill.
pub const LINGER: Duration = Duration::from_millis(50);

/// What one consumer's records came to, across incarnations of the audit actor.
#[derive(Debug, Default)]
pub struct Account {
    /// Handed to an audit actor's mailbox.
    accepted: AtomicU64,
    /// Could not be handed over (no audit actor at that moment).
    lost: AtomicU64,
    /// Stored on `HMS_AUDIT`, or declared lost in a stored `gap` record.
    covered: AtomicU64,
}

impl Account {
    /// Records neither stored nor declared lost yet.
    fn outstanding(&self) -> u64 {
        (self.accepted.load(SeqCst) + self.lost.load(SeqCst))
            .saturating_sub(self.covered.load(SeqCst))
    }
}

/// Every consumer's [`Account`]; outlives the actor. Also counts the stores under way, so a
/// new actor can wait for its predecessor's last store before it reckons what was lost.
#[derive(Debug, Default)]
pub struct Ledger {
    accounts: Mutex<HashMap<String, Arc<Account>>>,
    stores: AtomicU64,
    stored: tokio::sync::Notify,
    /// Whether new work is held back because `HMS_AUDIT` refuses records (see [`HoldBack`]).
    hold: HoldBack,
}

/// While `HMS_AUDIT` refuses writes because a limit is reached (its `max_bytes` with discard
/// new, JetStream storage full, permissions), or has been unavailable with [`HOLD_BACK_AT`]
/// records waiting, pumps start no new deliveries and webhooks are answered 503: the events
/// stay on JetStream (unacked, unpulled) instead of piling up as records that would overflow
/// the backlog into a gap. Deliveries under way finish; their records wait in memory.
#[derive(Debug)]
pub struct HoldBack(tokio::sync::watch::Sender<bool>);

impl Default for HoldBack {
    fn default() -> Self {
        HoldBack(tokio::sync::watch::channel(false).0)
    }
}

/// Records waiting, with `HMS_AUDIT` unavailable, at which new work is held back.
pub const HOLD_BACK_AT: usize = 10_000;

/// How long a new audit actor waits for its predecessor's store before reckoning the loss.
const PREDECESSOR_STORE_WAIT: Duration = Duration::from_secs(10);

impl Ledger {
    fn account(&self, consumer: &str) -> Arc<Account> {
        let mut map = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(consumer.to_string()).or_default().clone()
    }

    /// Waits (bounded) until no store is under way.
    async fn stores_done(&self) {
        let wait = async {
            loop {
                let notified = self.stored.notified();
                if self.stores.load(SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(PREDECESSOR_STORE_WAIT, wait).await;
    }

    fn all(&self) -> Vec<(String, Arc<Account>)> {
        let map = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Where one consumer's records go; get it once ([`Auditor::route`]) and keep it.
#[derive(Debug, Clone)]
pub struct AuditRoute {
    consumer: Arc<str>,
    account: Arc<Account>,
}

/// Records handed over while no audit actor runs (it is being restarted); the next one takes
/// them. Bounded like the actor's backlog.
type Waiting = Arc<Mutex<VecDeque<(AuditRoute, AuditRecord)>>>;

/// The handle deliveries and the webhook edge record through; follows the actor's restarts.
/// Recording never waits. Cheap to clone.
#[derive(Clone, Default)]
pub struct Auditor {
    pub(super) actor: ActorSlot<AuditMsg>,
    pub(super) ledger: Arc<Ledger>,
    waiting: Waiting,
}

impl Auditor {
    /// The audit actor now (`None` while it restarts).
    pub fn actor(&self) -> Option<ActorRef<AuditMsg>> {
        self.actor.get()
    }

    /// The route of a consumer's records.
    pub fn route(&self, consumer: &str) -> AuditRoute {
        AuditRoute {
            consumer: consumer.into(),
            account: self.ledger.account(consumer),
        }
    }

    /// Hands one record over (never waits). While the actor is being restarted, records wait
    /// for the next one (at most [`MAX_BACKLOG`]; beyond, they are counted as lost and declared
    /// in a `gap` record).
    pub fn record(&self, route: &AuditRoute, record: AuditRecord) {
        let Some(actor) = self.actor.get() else {
            return self.wait(route, record);
        };
        // Counted before it is sent, so that `covered` never runs ahead of `accepted`.
        route.account.accepted.fetch_add(1, SeqCst);
        let msg = AuditMsg::Record {
            route: route.clone(),
            record,
        };
        if let Err(ractor::MessagingErr::SendErr(AuditMsg::Record { route, record })) =
            actor.send_message(msg)
        {
            route.account.accepted.fetch_sub(1, SeqCst);
            self.wait(&route, record);
        }
    }

    /// Keeps a record for the next actor. It is counted (accepted, or lost when too many
    /// wait) under the same lock under which a new actor reckons what its predecessor lost,
    /// so a record is either in that reckoning and among the waiting ones, or in neither.
    fn wait(&self, route: &AuditRoute, record: AuditRecord) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.len() >= MAX_BACKLOG {
            route.account.lost.fetch_add(1, SeqCst);
        } else {
            route.account.accepted.fetch_add(1, SeqCst);
            waiting.push_back((route.clone(), record));
        }
    }

    /// Takes the records that waited for an actor, with each account's outstanding and lost
    /// counts read at the same moment (see [`Auditor::wait`]).
    fn take_waiting_reckoned(&self) -> (VecDeque<(AuditRoute, AuditRecord)>, Vec<Reckoned>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let accounts = self
            .ledger
            .all()
            .into_iter()
            .map(|(consumer, a)| (consumer, a.outstanding(), a.lost.load(SeqCst)))
            .collect();
        (std::mem::take(&mut *waiting), accounts)
    }

    /// Whether new work is held back now (the audit trail refuses records; see [`HoldBack`]).
    pub fn holds_back(&self) -> bool {
        *self.ledger.hold.0.borrow()
    }

    /// Follows [`Auditor::holds_back`] (changes when it does).
    pub fn hold_back(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ledger.hold.0.subscribe()
    }

    /// Takes the records that waited for an actor.
    fn take_waiting(&self) -> VecDeque<(AuditRoute, AuditRecord)> {
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A consumer's (name, outstanding, lost) counts, read at one moment.
type Reckoned = (String, u64, u64);

/// Messages to the audit actor.
pub enum AuditMsg {
    /// One attempt (or accepted webhook), for the chain of its route's consumer.
    Record {
        route: AuditRoute,
        record: AuditRecord,
    },
    /// Store what is buffered (timer, or after a batch ended).
    Flush,
    /// A store finished: the blocks not stored (to store again), how many records are.
    Stored {
        unstored: Vec<Block>,
        stored: u64,
        error: Option<String>,
    },
    /// Shutdown: store everything held (one store at a time, as always), then reply.
    Drain(ractor::RpcReplyPort<()>),
}

/// A sealed record and how many of its consumer's records it covers (1; a gap: how many it
/// declares lost).
pub struct Sealed {
    chain: Arc<Chain>,
    n: u64,
    bytes: Vec<u8>,
    covers: u64,
}

/// Records of one chain stored as one message, with what they cover.
pub struct Block {
    block: AuditBlock,
    account: Arc<Account>,
    records: u64,
    covers: u64,
}

/// Groups sealed records into blocks: consecutive records of one chain, at most
/// [`MAX_BLOCK_BYTES`] each, in the order the chains first appear (each chain's records stay
/// in order).
fn blocks(batch: Vec<Sealed>) -> Vec<Block> {
    let mut out: Vec<(Arc<Chain>, Vec<Sealed>)> = Vec::new();
    for s in batch {
        let open = out.iter_mut().rev().find(|(c, recs)| {
            Arc::ptr_eq(c, &s.chain)
                && recs.iter().map(|r| r.bytes.len() + 1).sum::<usize>() + s.bytes.len()
                    <= MAX_BLOCK_BYTES
        });
        match open {
            Some((_, recs)) => recs.push(s),
            None => out.push((s.chain.clone(), vec![s])),
        }
    }
    out.into_iter()
        .filter_map(|(chain, recs)| {
            let (first, last) = (recs.first()?.n, recs.last()?.n);
            let mut bytes = Vec::with_capacity(recs.iter().map(|r| r.bytes.len() + 1).sum());
            for r in &recs {
                bytes.extend_from_slice(&r.bytes);
                bytes.push(b'\n');
            }
            Some(Block {
                block: AuditBlock {
                    subject: chain.subject.clone(),
                    chain: chain.chain.clone(),
                    first,
                    last,
                    bytes: Bytes::from(bytes),
                },
                account: chain.account.clone(),
                records: recs.len() as u64,
                covers: recs.iter().map(|r| r.covers).sum(),
            })
        })
        .collect()
}

/// Where one consumer's records go in this incarnation: its subject and its chain.
struct Chain {
    consumer: Arc<str>,
    subject: Arc<str>,
    chain: Arc<str>,
    account: Arc<Account>,
}

/// Records of a consumer declared lost, not yet sealed into a gap record.
struct Gap {
    count: u64,
    since: String,
    reason: &'static str,
}

pub struct AuditActor;

pub struct AuditArgs {
    pub bus: Bus,
    /// Distinguishes this incarnation's chains from others (instances, restarts).
    pub run_id: String,
    /// The handle callers record through (its ledger and its waiting records).
    pub auditor: Auditor,
}

pub struct AuditState {
    bus: Bus,
    run_id: String,
    auditor: Auditor,
    ledger: Arc<Ledger>,
    chainer: Chainer,
    /// Subject and chain of each consumer seen, built once.
    chains: HashMap<Arc<str>, Arc<Chain>>,
    /// Unsealed records.
    backlog: VecDeque<(Arc<Chain>, AuditRecord)>,
    /// Declared losses to seal first, per consumer.
    gaps: HashMap<Arc<str>, Gap>,
    /// `lost` of each account already declared (so each lost record is declared once).
    lost_seen: HashMap<Arc<str>, u64>,
    /// Records in the blocks being stored (0: none).
    in_flight: u64,
    /// Blocks to be stored again after a failure (before anything newer).
    retry: Vec<Block>,
    flush_scheduled: bool,
    failures_in_a_row: u32,
    pending: metrics::Gauge,
    /// Who waits for the drain at shutdown.
    draining: Option<ractor::RpcReplyPort<()>>,
    /// The last store failed because `HMS_AUDIT` refuses records (a limit, permissions).
    refused: bool,
    /// What the last failed store said.
    last_error: Option<String>,
}

impl AuditState {
    fn chain(&mut self, consumer: &Arc<str>, account: &Arc<Account>) -> Arc<Chain> {
        if let Some(c) = self.chains.get(consumer) {
            return c.clone();
        }
        let c = Arc::new(Chain {
            consumer: consumer.clone(),
            subject: format!("external.sync.{consumer}").into(),
            chain: format!("{consumer}/{}", self.run_id).into(),
            account: account.clone(),
        });
        self.chains.insert(consumer.clone(), c.clone());
        c
    }

    fn declare(&mut self, consumer: &Arc<str>, count: u64, reason: &'static str) {
        if count == 0 {
            return;
        }
        let gap = self.gaps.entry(consumer.clone()).or_insert_with(|| Gap {
            count: 0,
            since: now_rfc3339(),
            reason,
        });
        gap.count += count;
    }

    /// Puts one record in the backlog (dropping the oldest when it is full).
    fn take(&mut self, route: AuditRoute, record: AuditRecord) {
        if self.backlog.len() >= MAX_BACKLOG {
            if let Some((dropped, _)) = self.backlog.pop_front() {
                self.declare(
                    &dropped.consumer,
                    1,
                    "HMS_AUDIT was unavailable and the in-memory backlog was full",
                );
                metrics::counter!(crate::metrics::AUDIT_DROPPED_TOTAL).increment(1);
            }
        }
        let chain = self.chain(&route.consumer, &route.account);
        self.backlog.push_back((chain, record));
    }

    /// Records callers could not hand over since the last look become declared losses.
    fn declare_lost_sends(&mut self) {
        for (consumer, account) in self.ledger.all() {
            let lost = account.lost.load(SeqCst);
            let consumer: Arc<str> = consumer.into();
            let seen = self.lost_seen.entry(consumer.clone()).or_insert(0);
            if lost > *seen {
                let new = lost - *seen;
                *seen = lost;
                self.declare(&consumer, new, "no audit actor was running to take them");
            }
        }
    }
}

impl Actor for AuditActor {
    type Msg = AuditMsg;
    type State = AuditState;
    type Arguments = AuditArgs;

    async fn pre_start(
        &self,
        me: ActorRef<AuditMsg>,
        args: AuditArgs,
    ) -> Result<AuditState, ActorProcessingErr> {
        let mut st = AuditState {
            bus: args.bus,
            run_id: args.run_id,
            ledger: args.auditor.ledger.clone(),
            auditor: args.auditor,
            chainer: Chainer::default(),
            chains: HashMap::new(),
            backlog: VecDeque::new(),
            gaps: HashMap::new(),
            lost_seen: HashMap::new(),
            in_flight: 0,
            retry: Vec::new(),
            flush_scheduled: false,
            failures_in_a_row: 0,
            pending: metrics::gauge!(crate::metrics::AUDIT_PENDING),
            draining: None,
            refused: false,
            last_error: None,
        };
        // Whatever a predecessor was handed and did not store is lost with it: declare it,
        // once its last store is done (what that store confirms is not lost). Records that
        // waited for this actor are not lost either: they are taken first.
        st.ledger.stores_done().await;
        let (waiting, accounts) = st.auditor.take_waiting_reckoned();
        let mut waiting_per: HashMap<Arc<str>, u64> = HashMap::new();
        for (route, _) in &waiting {
            *waiting_per.entry(route.consumer.clone()).or_default() += 1;
        }
        for (consumer, outstanding, lost) in accounts {
            let consumer: Arc<str> = consumer.into();
            st.lost_seen.insert(consumer.clone(), lost);
            let missing =
                outstanding.saturating_sub(waiting_per.get(&consumer).copied().unwrap_or(0));
            if missing > 0 {
                tracing::warn!(
                    "audit: {missing} records of {consumer} were lost with the previous audit actor; a sealed gap record says so"
                );
                st.declare(
                    &consumer,
                    missing,
                    "the audit actor stopped with records not yet stored",
                );
            }
        }
        for (route, record) in waiting {
            st.take(route, record);
        }
        // Soon: what is declared, what was taken, and what waits until this actor is in its
        // slot.
        schedule(&me, &mut st, LINGER);
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<AuditMsg>,
        msg: AuditMsg,
        st: &mut AuditState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AuditMsg::Record { route, record } => {
                st.take(route, record);
                if st.backlog.len() >= BATCH {
                    flush(&me, st);
                } else {
                    schedule(&me, st, LINGER);
                }
            }
            AuditMsg::Flush => {
                st.flush_scheduled = false;
                flush(&me, st);
            }
            AuditMsg::Drain(reply) => {
                st.draining = Some(reply);
                flush(&me, st);
            }
            AuditMsg::Stored {
                unstored,
                stored,
                error,
            } => {
                metrics::counter!(crate::metrics::AUDIT_WRITTEN_TOTAL).increment(stored);
                st.in_flight = 0;
                if !unstored.is_empty() {
                    let kind = crate::bus::BusErrorKind::of(error.as_deref().unwrap_or(""));
                    metrics::counter!(crate::metrics::AUDIT_STORE_FAILURES_TOTAL, "reason" => kind.label())
                        .increment(1);
                    st.refused = matches!(
                        kind,
                        crate::bus::BusErrorKind::LimitReached
                            | crate::bus::BusErrorKind::Authorization
                    );
                    st.last_error = error.clone();
                    st.failures_in_a_row += 1;
                    if st.failures_in_a_row == 1 || st.failures_in_a_row % 20 == 0 {
                        let held: u64 = unstored.iter().map(|b| b.records).sum();
                        tracing::warn!(
                            "audit: HMS_AUDIT unavailable ({}); {} records waiting; deliveries go on",
                            error.unwrap_or_default(),
                            st.backlog.len() as u64 + held
                        );
                    }
                    st.retry = unstored;
                    let delay =
                        Duration::from_millis(100 * u64::from(st.failures_in_a_row.min(50)));
                    schedule(&me, st, delay);
                } else {
                    if st.failures_in_a_row > 0 {
                        tracing::info!("audit: HMS_AUDIT available again");
                    }
                    st.failures_in_a_row = 0;
                    st.refused = false;
                    if !st.backlog.is_empty() || !st.gaps.is_empty() {
                        flush(&me, st);
                    }
                }
            }
        }
        let waiting = st.backlog.len() as u64
            + st.retry.iter().map(|b| b.records).sum::<u64>()
            + st.in_flight;
        st.pending.set(waiting as f64);
        hold_back(st, waiting as usize);
        if waiting == 0 && st.gaps.is_empty() {
            if let Some(reply) = st.draining.take() {
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<AuditMsg>,
        st: &mut AuditState,
    ) -> Result<(), ActorProcessingErr> {
        // Last chance when stopped without a drain: after the store under way (so records
        // land in chain order), store what is left (bounded wait).
        st.ledger.stores_done().await;
        let mut all = std::mem::take(&mut st.retry);
        all.extend(blocks(seal(st, usize::MAX)));
        if !all.is_empty() {
            let list: Vec<AuditBlock> = all.iter().map(|b| b.block.clone()).collect();
            if let Ok((stored, _)) =
                tokio::time::timeout(Duration::from_secs(5), st.bus.store_audit(&list)).await
            {
                for (b, ok) in all.iter().zip(stored) {
                    if ok {
                        b.account.covered.fetch_add(b.covers, SeqCst);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Holds new work back, or lets it go again, as the audit trail refuses records or takes them
/// again (see [`HoldBack`]); each change is logged, counted and published for reviewers.
fn hold_back(st: &mut AuditState, waiting: usize) {
    let hold = st.failures_in_a_row > 0 && (st.refused || waiting >= HOLD_BACK_AT);
    if !st
        .ledger
        .hold
        .0
        .send_if_modified(|h| std::mem::replace(h, hold) != hold)
    {
        return;
    }
    metrics::gauge!(crate::metrics::AUDIT_HOLDING_BACK).set(if hold { 1.0 } else { 0.0 });
    let error = st.last_error.clone().unwrap_or_default();
    let alert = if hold {
        tracing::error!(
            "audit: HMS_AUDIT refuses records ({error}); {waiting} wait in memory; no new deliveries start and webhooks are answered 503 until it takes them again (events stay on JetStream)"
        );
        json!({"kind": "audit.blocked", "error": error, "waiting": waiting, "at": now_rfc3339()})
    } else {
        tracing::info!("audit: HMS_AUDIT takes records again; deliveries and webhooks resume");
        json!({"kind": "audit.resumed", "at": now_rfc3339()})
    };
    let bus = st.bus.clone();
    tokio::spawn(async move {
        let _ = bus.review(alert.to_string().as_bytes()).await;
    });
}

fn schedule(me: &ActorRef<AuditMsg>, st: &mut AuditState, after: Duration) {
    if !st.flush_scheduled {
        st.flush_scheduled = true;
        me.send_after(after, || AuditMsg::Flush);
    }
}

/// Seals up to `max` backlog records, after one `gap` record per consumer with declared losses.
fn seal(st: &mut AuditState, max: usize) -> Vec<Sealed> {
    st.declare_lost_sends();
    // Records that waited while this actor was not yet in its slot.
    for (route, record) in st.auditor.take_waiting() {
        st.take(route, record);
    }
    let mut batch = Vec::with_capacity(st.backlog.len().min(max) + st.gaps.len());
    let gaps: Vec<(Arc<str>, Gap)> = st.gaps.drain().collect();
    for (consumer, gap) in gaps {
        let account = st.ledger.account(&consumer);
        let chain = st.chain(&consumer, &account);
        let record = json!({
            "kind": "gap",
            "dropped": gap.count,
            "since": gap.since,
            "until": now_rfc3339(),
            "reason": gap.reason,
        });
        batch.push(pack(
            &mut st.chainer,
            &chain,
            AuditRecord::Other(record),
            gap.count,
        ));
    }
    while batch.len() < max {
        let Some((chain, record)) = st.backlog.pop_front() else {
            break;
        };
        batch.push(pack(&mut st.chainer, &chain, record, 1));
    }
    batch
}

/// Seals one record into its chain.
fn pack(chainer: &mut Chainer, chain: &Arc<Chain>, record: AuditRecord, covers: u64) -> Sealed {
    let (n, bytes) = chainer.seal_bytes(&chain.chain, record);
    Sealed {
        chain: chain.clone(),
        n,
        bytes,
        covers,
    }
}

/// Starts storing the next blocks in the background, unless a store is under way. Blocks
/// that failed go first, so each chain lands in order.
fn flush(me: &ActorRef<AuditMsg>, st: &mut AuditState) {
    if st.in_flight > 0 {
        return;
    }
    let list = if st.retry.is_empty() {
        blocks(seal(st, BATCH))
    } else {
        std::mem::take(&mut st.retry)
    };
    if list.is_empty() {
        return;
    }
    st.in_flight = list.iter().map(|b| b.records).sum();
    let (bus, me, ledger) = (st.bus.clone(), me.clone(), st.ledger.clone());
    ledger.stores.fetch_add(1, SeqCst);
    tokio::spawn(async move {
        let blocks: Vec<AuditBlock> = list.iter().map(|b| b.block.clone()).collect();
        let (stored, error) = bus.store_audit(&blocks).await;
        // Counted here, not by the actor: it holds even when the actor died meanwhile.
        let mut records = 0;
        let mut unstored = Vec::new();
        for (b, ok) in list.into_iter().zip(stored) {
            if ok {
                b.account.covered.fetch_add(b.covers, SeqCst);
                records += b.records;
            } else {
                unstored.push(b);
            }
        }
        ledger.stores.fetch_sub(1, SeqCst);
        ledger.stored.notify_waiters();
        let _ = me.send_message(AuditMsg::Stored {
            unstored,
            stored: records,
            error: error.map(|e| e.to_string()),
        });
    });
}
