//! Pulling a durable consumer by credit: the server is asked for no more events than the pump
//! can start now, so no event ever waits, fetched and untaken, in a client buffer while its
//! ack timer runs (which would have it redelivered to another worker meanwhile).
//!
//! A pull request (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`, answered on this source's
//! inbox) asks for `batch` events, expires after a while and carries an idle heartbeat. What was
//! asked for and not yet received is the *outstanding* credit; [`Credit::want`] tops it up to
//! the free delivery slots and never beyond. The server says when a request ends without
//! filling (408 timeout, 409, 423 pin mismatch, with `Nats-Pending-Messages`); a request whose
//! end is never told is written off after its expiry plus a grace, and the pump keeps any
//! event that still arrives beyond its slots alive with in-progress acks, so an error in this
//! accounting costs a little throughput, never a duplicate.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use super::{err, BusError, BusErrorKind, Delivery, PIN_GROUP, PIN_HEADER};

/// How long after its expiry a request the server never ended is taken as gone.
const GRACE: Duration = Duration::from_secs(5);
/// How long to wait before asking again after JetStream did not answer a request (503).
const NO_RESPONDERS_PAUSE: Duration = Duration::from_secs(1);

/// The pure bookkeeping of a credit-based pull: what was asked for and what came back.
#[derive(Debug)]
pub struct Credit {
    /// Requests not known to have ended: (events asked for, when it surely ended).
    requests: VecDeque<(usize, Instant)>,
    /// Events asked for and not yet received (or declared undelivered).
    outstanding: usize,
    /// Largest request.
    max_batch: usize,
    /// How long a request waits on the server.
    expires: Duration,
    /// Pinned consumers keep one request outstanding even with no free slot, so that the
    /// server does not move the pin away from a busy instance.
    keep_pin: bool,
    /// No request before this (JetStream did not answer the last one).
    hold_until: Option<Instant>,
}

impl Credit {
    /// Bookkeeping for requests of at most `max_batch` events expiring after `expires`.
    pub fn new(max_batch: usize, expires: Duration, keep_pin: bool) -> Credit {
        Credit {
            requests: VecDeque::new(),
            outstanding: 0,
            max_batch: max_batch.max(1),
            expires,
            keep_pin,
            hold_until: None,
        }
    }

    /// Events asked for and not yet received.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// How many events to ask for now, with `free` delivery slots of `slots` in all: nothing
    /// while what is outstanding covers the free slots, else (in chunks of a quarter of the
    /// slots, so that requests are not one event each) the free slots not yet covered. Records
    /// the request it returns.
    pub fn want(&mut self, free: usize, slots: usize, now: Instant) -> Option<usize> {
        self.expire(now);
        if self.hold_until.is_some_and(|t| now < t) {
            return None;
        }
        self.hold_until = None;
        let room = free.saturating_sub(self.outstanding);
        let chunk = (slots.min(self.max_batch) / 4).max(1);
        let n = if room >= chunk || (room > 0 && self.outstanding == 0) {
            room.min(self.max_batch)
        } else if self.keep_pin && self.outstanding == 0 {
            1
        } else {
            return None;
        };
        self.outstanding += n;
        self.requests.push_back((n, now + self.expires + GRACE));
        Some(n)
    }

    /// An event arrived (it counts against the oldest request).
    pub fn received(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if let Some(front) = self.requests.front_mut() {
            front.0 = front.0.saturating_sub(1);
            if front.0 == 0 {
                self.requests.pop_front();
            }
        }
        if self.outstanding == 0 {
            self.requests.clear();
        }
    }

    /// The server ended a request, `undelivered` events short (`None`: it did not say; the
    /// oldest request is taken to have ended with nothing more delivered).
    pub fn ended(&mut self, undelivered: Option<usize>) {
        let which = undelivered
            .and_then(|n| self.requests.iter().position(|(left, _)| *left == n))
            .unwrap_or(0);
        let left = self.requests.remove(which).map_or(0, |(left, _)| left);
        self.outstanding = self.outstanding.saturating_sub(undelivered.unwrap_or(left));
        if self.requests.is_empty() {
            self.outstanding = 0;
        }
    }

    /// JetStream did not answer a request: it ended, and the next waits a moment.
    pub fn unanswered(&mut self, now: Instant) {
        self.ended(None);
        self.hold_until = Some(now + NO_RESPONDERS_PAUSE);
    }

    /// Writes off requests past their expiry and grace whose end the server never told.
    fn expire(&mut self, now: Instant) {
        while let Some((n, until)) = self.requests.front().copied() {
            if until > now {
                break;
            }
            self.requests.pop_front();
            self.outstanding = self.outstanding.saturating_sub(n);
        }
        if self.requests.is_empty() {
            self.outstanding = 0;
        }
    }
}

/// A credit-based pull on one durable consumer (see the module note).
pub struct Puller {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    /// `$JS.API.CONSUMER.MSG.NEXT.HMS_EVENTS.<consumer>`.
    subject: String,
    inbox: String,
    sub: async_nats::Subscriber,
    credit: Credit,
    heartbeat: Duration,
    /// Pinned consumers: the priority group, and the pin this client holds.
    pinned: bool,
    pin: Option<String>,
    /// When something last came from the server (events, heartbeats, statuses).
    last_heard: Instant,
    /// Fires at the latest moment the server may stay silent; moved on only when it fires
    /// (not per event: a timer registered and cancelled per event costs more than the check).
    watchdog: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The subscription ended (consumer deleted, connection closed for good).
    ended: bool,
    /// Free delivery slots at the last [`Puller::want`], less the events received since (what
    /// can surely still start), and the slots in all: to ask again when the server ends a
    /// request without the pump's help.
    free_hint: usize,
    slots: usize,
}

/// How a pull starts.
pub struct PullSpec {
    /// The stream (`HMS_EVENTS`).
    pub stream: String,
    /// The durable consumer.
    pub consumer: String,
    /// Largest request (`delivery.pullBatch`).
    pub max_batch: usize,
    /// How long a request waits on the server.
    pub expires: Duration,
    /// Idle heartbeat the server sends while a request waits.
    pub heartbeat: Duration,
    /// A pinned-client priority group consumer (keyed connectors).
    pub pinned: bool,
}

#[derive(serde::Serialize)]
struct PullRequest<'a> {
    batch: usize,
    /// Nanoseconds.
    expires: u128,
    /// Nanoseconds.
    idle_heartbeat: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

impl Puller {
    /// Subscribes to a fresh inbox for the pull of `spec` (no request is sent yet).
    pub async fn open(
        client: &async_nats::Client,
        js: &async_nats::jetstream::Context,
        spec: PullSpec,
    ) -> Result<Puller, BusError> {
        let inbox = client.new_inbox();
        let sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| err(format!("consumer {}", spec.consumer))(e.to_string()))?;
        Ok(Puller {
            client: client.clone(),
            js: js.clone(),
            subject: format!(
                "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                spec.stream, spec.consumer
            ),
            inbox,
            sub,
            credit: Credit::new(spec.max_batch, spec.expires, spec.pinned),
            heartbeat: spec.heartbeat,
            pinned: spec.pinned,
            pin: None,
            last_heard: Instant::now(),
            watchdog: Box::pin(tokio::time::sleep(spec.heartbeat * 2)),
            ended: false,
            free_hint: 0,
            slots: 1,
        })
    }

    /// Events asked for and not yet received.
    pub fn outstanding(&self) -> usize {
        self.credit.outstanding()
    }

    /// Unsubscribes, draining: what the server sent before it heard of it still arrives,
    /// then the subscription ends. No request is made any more.
    pub async fn close(&mut self) {
        self.credit.hold_until = None;
        self.free_hint = 0;
        if self.sub.drain().await.is_err() {
            self.ended = true;
        }
    }

    /// Asks the server for more events when `free` of `slots` delivery slots are not covered
    /// by what is outstanding (see [`Credit::want`]).
    pub async fn want(&mut self, free: usize, slots: usize) -> Result<(), BusError> {
        if self.ended {
            return Ok(());
        }
        (self.free_hint, self.slots) = (free, slots);
        let now = Instant::now();
        let was_idle = self.credit.outstanding() == 0;
        let Some(batch) = self.credit.want(free, slots, now) else {
            return Ok(());
        };
        if was_idle {
            // Heartbeats are due from now on, not since the last request ended.
            self.last_heard = now;
        }
        let request = PullRequest {
            batch,
            expires: self.credit.expires.as_nanos(),
            idle_heartbeat: self.heartbeat.as_nanos(),
            group: self.pinned.then_some(PIN_GROUP),
            id: self.pin.as_deref().filter(|_| self.pinned),
        };
        let body = serde_json::to_vec(&request).unwrap_or_default();
        tracing::debug!(
            "pull {}: asking for {batch} ({} outstanding)",
            self.subject,
            self.credit.outstanding()
        );
        let sent = self
            .client
            .publish_with_reply(self.subject.clone(), self.inbox.clone(), Bytes::from(body))
            .await;
        if let Err(e) = sent {
            self.credit.ended(Some(batch));
            return Err(err("pull request")(e.to_string()));
        }
        Ok(())
    }

    /// The next event; `None` once the subscription ended. Statuses of the server are taken
    /// in stride (heartbeats, ended requests); two heartbeats missed while requests are
    /// outstanding is an error of kind [`BusErrorKind::MissedHeartbeat`]. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        loop {
            if self.ended {
                return None;
            }
            let watching = self.credit.outstanding() > 0;
            let held = self.credit.hold_until.filter(|_| !watching);
            let msg = tokio::select! {
                m = self.sub.next() => m,
                _ = async { tokio::time::sleep_until(held.unwrap_or_else(Instant::now)).await }, if held.is_some() => {
                    if let Err(e) = self.want(self.free_hint, self.slots).await {
                        return Some(Err(e));
                    }
                    continue;
                }
                _ = &mut self.watchdog, if watching => {
                    let silent_until = self.last_heard + self.heartbeat * 2;
                    let now = Instant::now();
                    if now < silent_until {
                        self.watchdog.as_mut().reset(silent_until);
                        continue;
                    }
                    self.last_heard = now;
                    self.watchdog.as_mut().reset(now + self.heartbeat * 2);
                    return Some(Err(BusError {
                        kind: BusErrorKind::MissedHeartbeat,
                        context: "pull".into(),
                        message: "no heartbeat from the server while events were asked for".into(),
                    }));
                }
            };
            let Some(msg) = msg else {
                self.ended = true;
                return None;
            };
            self.last_heard = Instant::now();
            match msg.status {
                None | Some(StatusCode::OK) => {
                    self.credit.received();
                    self.free_hint = self.free_hint.saturating_sub(1);
                    if self.pinned {
                        if let Some(pin) = header(&msg.headers, PIN_HEADER) {
                            self.pin = Some(pin);
                        }
                    }
                    let m = async_nats::jetstream::Message {
                        message: msg,
                        context: self.js.clone(),
                    };
                    return Some(Delivery::new(m));
                }
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::NO_RESPONDERS) => {
                    self.credit.unanswered(Instant::now());
                    return Some(Err(BusError {
                        kind: BusErrorKind::NotConnected,
                        context: "pull".into(),
                        message: "no responders: JetStream did not answer the pull request".into(),
                    }));
                }
                Some(status) => {
                    let description = msg.description.clone().unwrap_or_default();
                    tracing::debug!(
                        "pull {}: status {status} {description} (pending {:?})",
                        self.subject,
                        header(&msg.headers, "Nats-Pending-Messages")
                    );
                    if description.eq_ignore_ascii_case("consumer deleted")
                        || description.contains("push based")
                    {
                        self.ended = true;
                        return None;
                    }
                    if status == StatusCode::PIN_ID_MISMATCH {
                        self.pin = None;
                    }
                    let undelivered = header(&msg.headers, "Nats-Pending-Messages")
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    self.credit.ended(undelivered);
                    // The pump only asks when it is woken: ask again for what surely fits.
                    if let Err(e) = self.want(self.free_hint, self.slots).await {
                        return Some(Err(e));
                    }
                    if status != StatusCode::TIMEOUT
                        && status != StatusCode::PIN_ID_MISMATCH
                        && status != StatusCode::REQUEST_TERMINATED
                        && status != StatusCode::NOT_FOUND
                    {
                        return Some(Err(err("pull")(format!("status {status}: {description}"))));
                    }
                }
            }
        }
    }
}

fn header(h: &Option<HeaderMap>, name: &str) -> Option<String> {
    h.as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_is_asked_for_than_the_free_slots() {
        let t0 = Instant::now();
        let mut c = Credit::new(128, Duration::from_secs(30), false);
        // 64 slots, all free: one request for them all.
        assert_eq!(c.want(64, 64, t0), Some(64));
        assert_eq!(c.want(64, 64, t0), None, "all covered");
        // 10 arrive and start: 54 free, 54 outstanding.
        for _ in 0..10 {
            c.received();
        }
        assert_eq!(c.want(54, 64, t0), None);
        // They finish: 64 free, 54 outstanding; 10 < a quarter (16): not worth a request yet.
        assert_eq!(c.want(64, 64, t0), None);
        for _ in 0..10 {
            c.received();
        }
        // 44 outstanding, 64 free: 20 uncovered.
        assert_eq!(c.want(64, 64, t0), Some(20));
        assert_eq!(c.outstanding(), 64);
        // Busy slots: no free slot, nothing asked for.
        let mut busy = Credit::new(128, Duration::from_secs(30), false);
        assert_eq!(busy.want(0, 64, t0), None);
        // One slot: requests of one.
        let mut one = Credit::new(128, Duration::from_secs(30), false);
        assert_eq!(one.want(1, 1, t0), Some(1));
        assert_eq!(one.want(1, 1, t0), None);
        one.received();
        assert_eq!(one.want(1, 1, t0), Some(1));
        // Requests are at most max_batch.
        let mut small = Credit::new(8, Duration::from_secs(30), false);
        assert_eq!(small.want(64, 64, t0), Some(8));
    }

    #[test]
    fn ended_requests_give_their_credit_back() {
        let t0 = Instant::now();
        let mut c = Credit::new(128, Duration::from_secs(30), false);
        assert_eq!(c.want(16, 16, t0), Some(16));
        for _ in 0..6 {
            c.received();
        }
        // The server: the request expired with 10 undelivered.
        c.ended(Some(10));
        assert_eq!(c.outstanding(), 0);
        assert_eq!(c.want(16, 16, t0), Some(16));
        // Without a count: the oldest request is taken as wholly undelivered.
        c.ended(None);
        assert_eq!(c.outstanding(), 0);
        // Never told: written off after expiry and grace.
        assert_eq!(c.want(16, 16, t0), Some(16));
        let later = t0 + Duration::from_secs(36);
        assert_eq!(c.want(16, 16, later), Some(16));
        assert_eq!(c.outstanding(), 16);
        // No responders: the next request waits a moment.
        c.unanswered(later);
        assert_eq!(c.want(16, 16, later), None);
        assert_eq!(c.want(16, 16, later + NO_RESPONDERS_PAUSE), Some(16));
    }

    #[test]
    fn a_pinned_consumer_keeps_one_request_while_busy() {
        let t0 = Instant::now();
        let mut c = Credit::new(128, Duration::from_secs(5), true);
        assert_eq!(c.want(0, 64, t0), Some(1));
        assert_eq!(c.want(0, 64, t0), None);
        c.received();
        assert_eq!(c.want(0, 64, t0), Some(1));
    }
}
