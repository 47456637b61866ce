//! An endpoint's state shared with every other instance (KV `hms_sync_limits`): its rate
//! budget's grants and its circuit breaker. The rules are pure ([`crate::limits`]); this file
//! reads and writes them with compare-and-set. Endpoint actors call it from tasks, never from
//! their handlers.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::bus::limits::Limits;
use crate::bus::BusError;
use crate::limits::{Breaker, Grants, Probe};

/// Key prefix of the circuit breakers (watched by every instance).
pub const BREAKER_PREFIX: &str = "breaker.";

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The key suffix of an endpoint: a hash (endpoints hold characters keys cannot).
pub fn endpoint_key(endpoint: &str) -> String {
    hex::encode(&Sha256::digest(endpoint.as_bytes())[..12])
}

/// One endpoint's shared state.
#[derive(Clone)]
pub struct SharedEndpoint {
    limits: Limits,
    /// `rate.<hash>` and `breaker.<hash>`.
    rate_key: Arc<str>,
    breaker_key: Arc<str>,
    /// This instance's name in the breaker state.
    instance: Arc<str>,
}

impl SharedEndpoint {
    pub fn new(limits: Limits, endpoint: &str, instance: Arc<str>) -> SharedEndpoint {
        let k = endpoint_key(endpoint);
        SharedEndpoint {
            limits,
            rate_key: format!("rate.{k}").into(),
            breaker_key: format!("{BREAKER_PREFIX}{k}").into(),
            instance,
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Reserves up to `want` grants (times in ms) such that no `window` holds more than `cap`,
    /// counting every instance's grants.
    pub async fn reserve(
        &self,
        cap: usize,
        window: Duration,
        want: usize,
    ) -> Result<Vec<u64>, BusError> {
        let window_ms = window.as_millis() as u64;
        let (times, _) = self
            .limits
            .update(&self.rate_key, |g: &mut Grants| {
                let times = g.reserve(cap, window_ms, now_ms(), want);
                (!times.is_empty(), times)
            })
            .await?;
        Ok(times)
    }

    /// The breaker as stored now (`None`: closed, never opened).
    pub async fn breaker(&self) -> Result<Option<Breaker>, BusError> {
        self.limits.get(&self.breaker_key).await
    }

    /// Opens the breaker for everyone unless it is open already. `true` when this call opened
    /// it (then this instance, and only this one, publishes the alert).
    pub async fn open(&self, why: &str, probe_interval: Duration) -> Result<bool, BusError> {
        let interval = probe_interval.as_millis() as u64;
        let me = self.instance.clone();
        let (_, wrote) = self
            .limits
            .update(&self.breaker_key, |b: &mut Breaker| {
                if b.open {
                    return (false, ());
                }
                *b = Breaker::opened(&me, why, now_ms(), interval);
                (true, ())
            })
            .await?;
        Ok(wrote)
    }

    /// Tries to take the one probe: `Ok(None)` taken (send it), `Ok(Some(ms))` not before then
    /// (someone else probes, or not yet), or closed meanwhile (`Some(0)`).
    pub async fn claim_probe(&self, probe_interval: Duration) -> Result<Option<u64>, BusError> {
        let interval = probe_interval.as_millis() as u64;
        let me = self.instance.clone();
        let (wait, _) = self
            .limits
            .update(&self.breaker_key, |b: &mut Breaker| {
                if !b.open {
                    return (false, Some(0));
                }
                match b.probe(&me, now_ms(), interval) {
                    Probe::Take(taken) => {
                        *b = taken;
                        (true, None)
                    }
                    Probe::Wait(at) => (false, Some(at)),
                }
            })
            .await?;
        Ok(wait)
    }

    /// The probe failed: the next one after the interval.
    pub async fn probe_failed(&self, probe_interval: Duration) -> Result<(), BusError> {
        let interval = probe_interval.as_millis() as u64;
        self.limits
            .update(&self.breaker_key, |b: &mut Breaker| {
                if !b.open {
                    return (false, ());
                }
                *b = b.probe_failed(now_ms(), interval);
                (true, ())
            })
            .await?;
        Ok(())
    }

    /// A probe succeeded: closes the breaker for everyone. `true` when this call closed it
    /// (then this instance publishes the alert).
    pub async fn close(&self) -> Result<bool, BusError> {
        let (_, wrote) = self
            .limits
            .update(&self.breaker_key, |b: &mut Breaker| {
                if !b.open {
                    return (false, ());
                }
                *b = Breaker::closed();
                (true, ())
            })
            .await?;
        Ok(wrote)
    }
}
