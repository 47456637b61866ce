//! The only module that talks to NATS: connection, streams, durable consumers, acks, parking,
//! review alerts and plain publishing.
//!
//! **Architecture invariant:** no other module names an `async_nats` type. Actors receive
//! [`Delivery`] values and tell them how to end (ack, retry later, park).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

use crate::config::{DeliveryConfig, StreamsConfig};

pub mod audit;
pub use audit::{records_of, AuditBlock};
pub mod connect;
pub mod parked;
pub mod scan;
pub mod status;
pub use parked::{
    JobMessage, StoredJob, JOB_HEADER, ORIGINAL_SUBJECT_HEADER, REPLAY_OF_HEADER, REPLAY_PREFIX,
};
pub mod flood;
pub mod kv;
pub mod limits;
pub mod pull;

pub const EVENTS_STREAM: &str = "HMS_EVENTS";
pub const PARKED_STREAM: &str = "HMS_SYNC_PARKED";
pub const REVIEW_SUBJECT: &str = "hitl.review.requested";

/// What kind of NATS failure an error is: what retry code matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusErrorKind {
    /// No connection to a server right now (it reconnects by itself).
    NotConnected,
    /// No answer in time.
    Timeout,
    /// The stream does not exist.
    StreamMissing,
    /// The consumer does not exist.
    ConsumerMissing,
    /// A server limit refused it: a stream's `max_bytes` or `max_msgs`, storage full, the
    /// number of consumers or streams, the message size.
    LimitReached,
    /// The server refused our credentials or our permissions.
    Authorization,
    /// A pull request's idle heartbeats stopped coming (twice in a row): the pull is gone
    /// (server restart, lame-duck shutdown, leader change) and must be re-created.
    MissedHeartbeat,
    /// Anything else.
    Other,
}

impl BusErrorKind {
    /// The kind as a metric label (`limit_reached`, `not_connected`, ...).
    pub fn label(self) -> &'static str {
        match self {
            BusErrorKind::NotConnected => "not_connected",
            BusErrorKind::Timeout => "timeout",
            BusErrorKind::StreamMissing => "stream_missing",
            BusErrorKind::ConsumerMissing => "consumer_missing",
            BusErrorKind::LimitReached => "limit_reached",
            BusErrorKind::Authorization => "authorization",
            BusErrorKind::MissedHeartbeat => "missed_heartbeat",
            BusErrorKind::Other => "other",
        }
    }

    /// Classifies a NATS error by its text: JetStream API errors carry their error code
    /// (`... (code 404, error code 10059)`), client errors name what happened.
    pub fn of(message: &str) -> BusErrorKind {
        let m = message.to_ascii_lowercase();
        let code = |c: u32| m.contains(&format!("error code {c})"));
        if code(10059) || m.contains("stream not found") {
            BusErrorKind::StreamMissing
        } else if code(10014) || m.contains("consumer not found") {
            BusErrorKind::ConsumerMissing
        } else if [10002, 10023, 10026, 10027, 10047, 10053, 10054, 10077]
            .into_iter()
            .any(code)
            || m.contains("maximum")
            || m.contains("exceeded")
            || m.contains("insufficient")
        {
            BusErrorKind::LimitReached
        } else if m.contains("authorization") || m.contains("permissions violation") {
            BusErrorKind::Authorization
        } else if m.contains("timed out") || m.contains("timeout") {
            BusErrorKind::Timeout
        } else if m.contains("not connected")
            || m.contains("disconnected")
            || m.contains("broken pipe")
            || m.contains("connection closed")
            || m.contains("no responders")
        {
            BusErrorKind::NotConnected
        } else {
            BusErrorKind::Other
        }
    }
}

/// A NATS failure: its kind, what we were doing, and what NATS said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("NATS: {context}: {message}")]
pub struct BusError {
    pub kind: BusErrorKind,
    pub context: String,
    pub message: String,
}

impl BusError {
    /// Whether trying again later may help (no connection, no answer, a limit that may lift).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            BusErrorKind::NotConnected | BusErrorKind::Timeout | BusErrorKind::LimitReached
        )
    }
}

pub(crate) fn err(context: impl Into<String>) -> impl FnOnce(String) -> BusError {
    let context = context.into();
    move |message| BusError {
        kind: BusErrorKind::of(&message),
        context,
        message,
    }
}

/// A connection to NATS and its JetStream context.
#[derive(Clone)]
pub struct Bus {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    /// Replicas of the streams and the bucket this process creates (`nats.replicas`).
    pub(crate) replicas: usize,
    /// Keeps the client the event callback reaches weakly (see [`Bus::connect_with`]).
    pub(crate) _own: Arc<std::sync::OnceLock<async_nats::Client>>,
    /// How many times the connection was re-established.
    pub(crate) reconnects: tokio::sync::watch::Receiver<u64>,
}

/// What a connector needs to own its durable consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub name: String,
    /// Where a consumer created now starts: events published at or after this time.
    pub start_from: time::OffsetDateTime,
    pub description: String,
    pub topic: String,
    pub metadata: HashMap<String, String>,
    /// Events of the connector are ordered by key: one instance at a time receives them (the
    /// consumer's pinned-client priority group, [`PIN_GROUP`]).
    pub pinned: bool,
}

/// The priority group every instance pulls a pinned (keyed) connector's consumer in.
pub const PIN_GROUP: &str = "hms-sync";
/// The header nats-server adds to a delivery for the client holding the pin.
pub const PIN_HEADER: &str = "Nats-Pin-Id";

impl Bus {
    /// Connects to `url` (a comma-separated list of seed URLs) without credentials or TLS
    /// settings; see [`Bus::connect_with`].
    pub async fn connect(url: &str) -> Result<Bus, BusError> {
        Bus::connect_with(&crate::config::NatsConnect::plain(url)).await
    }

    /// Replicas of what this process creates (`nats.replicas`).
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Changes whenever the connection to NATS is re-established (a server restarted, went
    /// into lame-duck mode, or the network came back).
    pub fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reconnects.clone()
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Makes sure `HMS_EVENTS` captures every topic in `topics` (keeping subjects it already has)
    /// and that `HMS_SYNC_PARKED` exists.
    pub async fn ensure_streams(
        &self,
        topics: &[String],
        cfg: &StreamsConfig,
    ) -> Result<(), BusError> {
        let mut wanted: BTreeSet<String> = topics.iter().cloned().collect();
        wanted.insert(format!("{REPLAY_PREFIX}>"));
        let events_wanted = stream::Config {
            name: EVENTS_STREAM.into(),
            description: Some("hms-sync: events that outbound connectors deliver".into()),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(cfg.events_max_age_hours * 3600),
            duplicate_window: Duration::from_secs(cfg.duplicate_window_sec),
            num_replicas: self.replicas,
            max_consumers: cfg.max_consumers,
            ..Default::default()
        };
        match self.js.get_stream(EVENTS_STREAM).await {
            Ok(mut s) => {
                let info = s
                    .info()
                    .await
                    .map_err(|e| err("stream info HMS_EVENTS")(e.to_string()))?;
                warn_differences(&info.config, &events_wanted);
                let mut config = info.config.clone();
                let mut all: BTreeSet<String> = config.subjects.iter().cloned().collect();
                all.extend(wanted);
                let subjects = minimal_cover(&all);
                let limit_differs = config.max_consumers != cfg.max_consumers;
                if subjects != config.subjects || limit_differs {
                    if limit_differs {
                        tracing::info!(
                            "HMS_EVENTS: max_consumers {} -> {}",
                            config.max_consumers,
                            cfg.max_consumers
                        );
                    }
                    config.subjects = subjects;
                    config.max_consumers = cfg.max_consumers;
                    self.js
                        .update_stream(config)
                        .await
                        .map_err(|e| err("update stream HMS_EVENTS")(e.to_string()))?;
                }
            }
            Err(_) => {
                let subjects = minimal_cover(&wanted);
                self.js
                    .get_or_create_stream(stream::Config {
                        subjects,
                        ..events_wanted
                    })
                    .await
                    .map_err(|e| err("create stream HMS_EVENTS")(e.to_string()))?;
            }
        }
        let parked_subjects = vec!["sync.parked.>".to_string(), "sync.resolved.>".to_string()];
        let parked_wanted = stream::Config {
            name: PARKED_STREAM.into(),
            description: Some("hms-sync: parked jobs waiting for human review".into()),
            subjects: parked_subjects.clone(),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: Duration::from_secs(cfg.duplicate_window_sec),
            num_replicas: self.replicas,
            ..Default::default()
        };
        let existed = self.js.get_stream(PARKED_STREAM).await.is_ok();
        let mut parked = self
            .js
            .get_or_create_stream(parked_wanted.clone())
            .await
            .map_err(|e| err("create stream HMS_SYNC_PARKED")(e.to_string()))?;
        let info = parked
            .info()
            .await
            .map_err(|e| err("stream info HMS_SYNC_PARKED")(e.to_string()))?;
        if existed {
            warn_differences(&info.config, &parked_wanted);
        }
        if info.config.subjects != parked_subjects {
            let mut config = info.config.clone();
            config.subjects = parked_subjects;
            self.js
                .update_stream(config)
                .await
                .map_err(|e| err("update stream HMS_SYNC_PARKED")(e.to_string()))?;
        }
        Ok(())
    }

    /// Creates the connector's durable consumer, or updates it in place (its position is kept),
    /// and subscribes to it.
    pub async fn open_consumer(
        &self,
        spec: &ConsumerSpec,
        delivery: &DeliveryConfig,
    ) -> Result<EventSource, BusError> {
        self.ensure_consumer(spec, delivery).await?;
        let puller = pull::Puller::open(
            &self.client,
            &self.js,
            pull::PullSpec {
                stream: EVENTS_STREAM.to_string(),
                consumer: spec.name.clone(),
                max_batch: delivery.pull_batch.max(1),
                expires: delivery.pull_expires(spec.pinned),
                heartbeat: delivery.heartbeat(spec.pinned),
                pinned: spec.pinned,
            },
        )
        .await?;
        Ok(EventSource { puller })
    }

    /// Creates the connector's durable consumer, or updates it in place (filter, description,
    /// metadata; its deliver policy and position are kept). Clears an inactivity threshold set
    /// by [`Bus::retire_consumer`].
    pub async fn ensure_consumer(
        &self,
        spec: &ConsumerSpec,
        delivery: &DeliveryConfig,
    ) -> Result<consumer::PullConsumer, BusError> {
        let e = |m: String| err(format!("consumer {}", spec.name))(m);
        let stream = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|x| e(x.to_string()))?;
        // An existing consumer keeps its deliver policy (and so its position); a new one starts
        // at `start_from` (when the runtime started), so nothing published during start-up is
        // missed.
        let deliver_policy = match stream.consumer_info(&spec.name).await {
            Ok(info) => info.config.deliver_policy,
            Err(_) => consumer::DeliverPolicy::ByStartTime {
                start_time: spec.start_from,
            },
        };
        let config = consumer::pull::Config {
            durable_name: Some(spec.name.clone()),
            description: Some(spec.description.clone()),
            deliver_policy,
            // Its trigger topic, plus the replays of its parked jobs (unless the topic covers them).
            filter_subject: String::new(),
            filter_subjects: {
                let replay = format!("{REPLAY_PREFIX}{}", spec.name);
                if covers(&spec.topic, &replay) {
                    vec![spec.topic.clone()]
                } else {
                    vec![spec.topic.clone(), replay]
                }
            },
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: delivery.ack_wait(),
            max_deliver: -1,
            max_ack_pending: delivery.max_ack_pending,
            metadata: spec.metadata.clone(),
            priority_policy: if spec.pinned {
                consumer::PriorityPolicy::PinnedClient
            } else {
                consumer::PriorityPolicy::None
            },
            priority_groups: if spec.pinned {
                vec![PIN_GROUP.to_string()]
            } else {
                vec![]
            },
            priority_timeout: if spec.pinned {
                delivery.pin_timeout()
            } else {
                Duration::ZERO
            },
            ..Default::default()
        };
        stream
            .create_consumer(config)
            .await
            .map_err(|x| e(x.to_string()))
    }

    /// An undeployed connector's consumer: the server deletes it after `grace` without a
    /// subscriber (a redeploy within `grace` resumes where it stopped). No-op when it is gone.
    pub async fn retire_consumer(&self, name: &str, grace: Duration) -> Result<bool, BusError> {
        let e = |m: String| err(format!("consumer {name}"))(m);
        let stream = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|x| e(x.to_string()))?;
        let Ok(info) = stream.consumer_info(name).await else {
            return Ok(false);
        };
        let mut config = info.config.clone();
        config.inactive_threshold = grace;
        stream
            .create_consumer(config)
            .await
            .map_err(|x| e(x.to_string()))?;
        Ok(true)
    }

    /// Deletes a connector's consumer at once (its position is lost). False when it was gone.
    pub async fn delete_consumer(&self, name: &str) -> Result<bool, BusError> {
        let stream = match self.js.get_stream(EVENTS_STREAM).await {
            Ok(s) => s,
            Err(_) => return Ok(false),
        };
        if stream.consumer_info(name).await.is_err() {
            return Ok(false);
        }
        stream
            .delete_consumer(name)
            .await
            .map(|_| true)
            .map_err(|x| err(format!("delete consumer {name}"))(x.to_string()))
    }

    /// Numbers for `status`: (pending, ack pending, redelivered).
    pub async fn consumer_stats(&self, name: &str) -> Result<ConsumerStats, BusError> {
        let stream = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| err("stream HMS_EVENTS")(e.to_string()))?;
        let info = stream
            .consumer_info(name)
            .await
            .map_err(|e| err(format!("consumer {name}"))(e.to_string()))?;
        Ok(ConsumerStats::of(&info))
    }

    /// Whether the consumer exists.
    pub async fn consumer_exists(&self, name: &str) -> bool {
        match self.js.get_stream(EVENTS_STREAM).await {
            Ok(s) => s.consumer_info(name).await.is_ok(),
            Err(_) => false,
        }
    }

    /// The names of every consumer of `HMS_EVENTS` (one request per 1,024 names).
    pub async fn consumer_names(&self) -> Result<std::collections::HashSet<String>, BusError> {
        use futures::TryStreamExt;
        let stream = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| err("stream HMS_EVENTS")(e.to_string()))?;
        stream
            .consumer_names()
            .try_collect()
            .await
            .map_err(|e| err("consumer names of HMS_EVENTS")(e.to_string()))
    }

    /// The largest message the server takes (headers and body).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// Stores a parked job durably (JetStream ack awaited): `job` is its message (the record,
    /// or for a large job the record in a header and the event as the body). Returns its
    /// stream sequence.
    pub async fn park(
        &self,
        consumer: &str,
        dedup_id: &str,
        job: JobMessage,
    ) -> Result<u64, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", dedup_id);
        if let Some(record) = &job.header {
            headers.insert(JOB_HEADER, record.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(
                format!("sync.parked.{consumer}"),
                headers,
                Bytes::from(job.body),
            )
            .await
            .map_err(|e| err("park")(e.to_string()))?
            .await
            .map_err(|e| err("park")(e.to_string()))?;
        Ok(ack.sequence)
    }

    /// Publishes a review alert on `hitl.review.requested` (plain NATS, flushed).
    pub async fn review(&self, body: &[u8]) -> Result<(), BusError> {
        self.client
            .publish(REVIEW_SUBJECT, Bytes::copy_from_slice(body))
            .await
            .map_err(|e| err("review alert")(e.to_string()))?;
        self.client
            .flush()
            .await
            .map_err(|e| err("review alert")(e.to_string()))
    }

    /// Publishes an event. When a stream captures the subject the JetStream ack is awaited and
    /// its sequence returned; otherwise it is a plain publish (like `nats pub`) and `None`.
    pub async fn publish(
        &self,
        subject: &str,
        headers: &[(String, String)],
        data: Vec<u8>,
    ) -> Result<Option<(String, u64, bool)>, BusError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(k.as_str(), v.as_str());
        }
        match self
            .js
            .publish_with_headers(subject.to_string(), map.clone(), data.clone().into())
            .await
        {
            Ok(fut) => match fut.await {
                Ok(ack) => Ok(Some((ack.stream, ack.sequence, ack.duplicate))),
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                    self.plain_publish(subject, map, data).await
                }
                Err(e) => Err(err(format!("publish {subject}"))(e.to_string())),
            },
            Err(e) => Err(err(format!("publish {subject}"))(e.to_string())),
        }
    }

    /// Publishes an event that must be stored (an inbound webhook): awaits JetStream's ack,
    /// never falls back to a plain publish. A repeated `Nats-Msg-Id` within the stream's
    /// duplicate window is acknowledged with `duplicate: true` and stored once.
    pub async fn publish_stored(
        &self,
        subject: &str,
        headers: &[(String, String)],
        data: Bytes,
    ) -> Result<Stored, BusError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(k.as_str(), v.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(subject.to_string(), map, data)
            .await
            .map_err(|e| err(format!("publish {subject}"))(e.to_string()))?
            .await
            .map_err(|e| err(format!("publish {subject}"))(e.to_string()))?;
        Ok(Stored {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn plain_publish(
        &self,
        subject: &str,
        headers: HeaderMap,
        data: Vec<u8>,
    ) -> Result<Option<(String, u64, bool)>, BusError> {
        self.client
            .publish_with_headers(subject.to_string(), headers, data.into())
            .await
            .map_err(|e| err(format!("publish {subject}"))(e.to_string()))?;
        self.client
            .flush()
            .await
            .map_err(|e| err("flush")(e.to_string()))?;
        Ok(None)
    }

    /// Subscribes to a plain subject (used by tools and tests that watch review alerts).
    pub async fn subscribe(
        &self,
        subject: &str,
    ) -> Result<impl futures::Stream<Item = Bytes>, BusError> {
        let sub = self
            .client
            .subscribe(subject.to_string())
            .await
            .map_err(|e| err(format!("subscribe {subject}"))(e.to_string()))?;
        Ok(sub.map(|m| m.payload))
    }

    /// Drains the connection (flushes pending acks) before shutdown.
    pub async fn close(&self) {
        let _ = self.client.flush().await;
    }
}

/// JetStream's acknowledgement of a stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub stream: String,
    pub sequence: u64,
    /// The `Nats-Msg-Id` was seen within the duplicate window: not stored again.
    pub duplicate: bool,
}

/// Consumer numbers shown by `status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConsumerStats {
    pub pending: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
    pub description: String,
    /// Paused by an operator (nothing is delivered until it resumes).
    #[serde(skip)]
    pub paused: bool,
    /// A client holds the pin of its priority group (keyed connectors: that instance receives
    /// the events, the others wait on standby).
    #[serde(skip)]
    pub pinned: bool,
    /// The `Nats-Pin-Id` of the client holding the pin, if any.
    #[serde(skip)]
    pub pin_id: Option<String>,
}

impl ConsumerStats {
    /// The numbers of a consumer's info, as the server gave them.
    pub fn of(info: &consumer::Info) -> ConsumerStats {
        ConsumerStats {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
            description: info.config.description.clone().unwrap_or_default(),
            paused: info.paused,
            pinned: info
                .priority_groups
                .iter()
                .any(|g| g.pinned_client_id.is_some()),
            pin_id: info
                .priority_groups
                .iter()
                .find_map(|g| g.pinned_client_id.clone()),
        }
    }
}

/// What differs between an existing stream's settings and those hms-sync would create it
/// with (replicas, storage, retention, age limit, duplicate window): empty when nothing does.
pub fn stream_differences(have: &stream::Config, want: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    if have.num_replicas.max(1) != want.num_replicas.max(1) {
        out.push(format!(
            "replicas {} (nats.replicas: {})",
            have.num_replicas.max(1),
            want.num_replicas.max(1)
        ));
    }
    if have.storage != want.storage {
        out.push(format!(
            "storage {:?} (hms-sync creates {:?})",
            have.storage, want.storage
        ));
    }
    if have.retention != want.retention {
        out.push(format!(
            "retention {:?} (hms-sync creates {:?})",
            have.retention, want.retention
        ));
    }
    if have.max_age != want.max_age {
        out.push(format!(
            "max age {} s (hms-sync creates {} s)",
            have.max_age.as_secs(),
            want.max_age.as_secs()
        ));
    }
    if have.duplicate_window != want.duplicate_window {
        out.push(format!(
            "duplicate window {} s (hms-sync creates {} s)",
            have.duplicate_window.as_secs(),
            want.duplicate_window.as_secs()
        ));
    }
    out
}

/// One warning line when an existing stream's settings differ from what hms-sync would
/// create: the stream is left as it is.
pub(crate) fn warn_differences(have: &stream::Config, want: &stream::Config) {
    static WARNED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let diff = stream_differences(have, want);
    let first = WARNED
        .lock()
        .map(|mut w| w.insert(have.name.clone()))
        .unwrap_or(true);
    if !diff.is_empty() && first {
        tracing::warn!(
            "stream {} exists with other settings, left as it is: {}",
            have.name,
            diff.join(", ")
        );
    }
}

/// Subjects with every subject covered by a wildcard of another removed.
pub fn minimal_cover(subjects: &BTreeSet<String>) -> Vec<String> {
    subjects
        .iter()
        .filter(|s| !subjects.iter().any(|o| o != *s && covers(o, s)))
        .cloned()
        .collect()
}

/// Whether NATS subject pattern `pattern` matches every subject `sub` matches.
pub fn covers(pattern: &str, sub: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = sub.split('.').collect();
    for (i, pt) in p.iter().enumerate() {
        if *pt == ">" {
            return s.len() > i;
        }
        match s.get(i) {
            None => return false,
            Some(st) if *pt == "*" && *st != ">" => {}
            Some(st) if pt == st => {}
            _ => return false,
        }
    }
    p.len() == s.len()
}

/// A pull subscription on a connector's durable consumer, by credit ([`pull`]): it asks for
/// no more events than the pump says it can start.
pub struct EventSource {
    puller: pull::Puller,
}

impl EventSource {
    /// Asks for events when `free` of the pump's `slots` delivery slots are not yet covered by
    /// what was asked for (never more than `free`, but for the one request a pinned consumer
    /// keeps while busy).
    pub async fn want(&mut self, free: usize, slots: usize) -> Result<(), BusError> {
        self.puller.want(free, slots).await
    }

    /// Events asked for and not yet received.
    pub fn outstanding(&self) -> usize {
        self.puller.outstanding()
    }

    /// Closes the subscription: the server sends nothing more to it; what it sent before
    /// still arrives, then [`EventSource::next`] says `None`.
    pub async fn close(&mut self) {
        self.puller.close().await
    }

    /// The next delivery; `None` when the subscription ended. Errors are worth logging; the
    /// subscription keeps going after transient ones (missed heartbeats: the pump re-creates
    /// it). Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        self.puller.next().await
    }
}

/// One delivery of one event to one connector.
pub struct Delivery {
    msg: jetstream::Message,
    pub subject: String,
    pub stream_sequence: u64,
    /// JetStream's delivery count: 1 on the first attempt.
    pub delivered: u32,
    pub published: time::OffsetDateTime,
    /// `Nats-Msg-Id`, when the publisher set one.
    pub msg_id: Option<String>,
}

impl Delivery {
    pub(crate) fn new(msg: jetstream::Message) -> Result<Delivery, BusError> {
        let info = msg.info().map_err(|e| err("message info")(e.to_string()))?;
        let stream_sequence = info.stream_sequence;
        let delivered = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        let published = info.published;
        let msg_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_string());
        Ok(Delivery {
            subject: msg.subject.to_string(),
            stream_sequence,
            delivered,
            published,
            msg_id,
            msg,
        })
    }

    pub fn payload(&self) -> &[u8] {
        &self.msg.payload
    }

    /// Every header of the original event (name, value), for parked jobs.
    pub fn headers(&self) -> Vec<(String, String)> {
        header_pairs(self.msg.headers.as_ref())
    }

    /// The subject the event was first published on (a replayed event carries it in a header).
    pub fn original_subject(&self) -> String {
        if self.subject.starts_with(REPLAY_PREFIX) {
            if let Some(s) = self.header(ORIGINAL_SUBJECT_HEADER) {
                return s;
            }
        }
        self.subject.clone()
    }

    /// A header of the original event.
    pub fn header(&self, name: &str) -> Option<String> {
        self.msg
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    }

    /// Done: delivered, filtered out, or durably parked.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.msg.ack().await.map_err(|e| err("ack")(e.to_string()))
    }

    /// Try again after `delay` (JetStream holds the message; survives our crash).
    pub async fn retry_after(&self, delay: Duration) -> Result<(), BusError> {
        self.msg
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| err("nak")(e.to_string()))
    }

    /// Still working on it: resets JetStream's ack timer.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.msg
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| err("progress")(e.to_string()))
    }
}

/// Every (name, value) pair of a message's headers, a name once per value; none without
/// headers.
pub(crate) fn header_pairs(h: Option<&HeaderMap>) -> Vec<(String, String)> {
    h.map(|h| {
        h.iter()
            .flat_map(|(k, vs)| {
                vs.iter()
                    .map(move |v| (k.to_string(), v.as_str().to_string()))
            })
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_what_nats_said() {
        let cases = [
            (
                "stream not found (code 404, error code 10059)",
                BusErrorKind::StreamMissing,
            ),
            (
                "consumer not found (code 404, error code 10014)",
                BusErrorKind::ConsumerMissing,
            ),
            (
                "maximum consumers limit reached (code 400, error code 10026)",
                BusErrorKind::LimitReached,
            ),
            ("nats: maximum bytes exceeded", BusErrorKind::LimitReached),
            (
                "insufficient resources (code 503, error code 10023)",
                BusErrorKind::LimitReached,
            ),
            (
                "timed out: didn't receive ack in time",
                BusErrorKind::Timeout,
            ),
            ("broken pipe", BusErrorKind::NotConnected),
            ("no responders", BusErrorKind::NotConnected),
            ("authorization violation", BusErrorKind::Authorization),
            ("something else", BusErrorKind::Other),
        ];
        for (text, want) in cases {
            assert_eq!(BusErrorKind::of(text), want, "{text}");
        }
        assert!(err("x")("timed out".into()).is_transient());
        assert!(!err("x")("stream not found".into()).is_transient());
    }

    #[test]
    fn subject_cover() {
        let cases = [
            ("permit.*", "permit.updated", true),
            ("permit.>", "permit.updated.x", true),
            ("permit.>", "permit", false),
            ("permit.*", "permit.a.b", false),
            (">", "a", true),
            ("a.b", "a.b", true),
            ("a.*", "a.>", false),
            ("a.>", "a.*", true),
        ];
        for (p, s, want) in cases {
            assert_eq!(covers(p, s), want, "{p} {s}");
        }
        let set: BTreeSet<String> = ["permit.updated", "permit.*", "fee.created", "fee.created"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(minimal_cover(&set), ["fee.created", "permit.*"]);
    }
}
