//! The judge: the pure rules that turn one attempt's outcome into what JetStream is told
//! ([`decide`]: exactly one [`Action`]), what the endpoint learns ([`signal_of`]: one
//! [`Signal`]) and how the outcome reads in logs, status and parked jobs ([`describe`]).
//!
//! Nothing else interprets an [`Outcome`].

use std::time::Duration;

/// Retry rules (`retry:` of a connector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in total; after the last failure the job is parked.
    pub max: u32,
    /// Delay after attempt n is `backoff * 2^(n-1)`, within ±20 %, capped by `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Overrides of which statuses count as success, transient or permanent.
    pub statuses: StatusRules,
}

/// Default cap of one backoff delay (and of a `Retry-After`): 10 minutes.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(600);

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max: 5,
            backoff: Duration::from_millis(3000),
            max_backoff: DEFAULT_MAX_BACKOFF,
            statuses: Default::default(),
        }
    }
}

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered with this status.
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// No answer within the connector's timeout.
    Timeout,
    /// No connection (refused, DNS, TLS, reset before an answer).
    Connect(String),
    /// The event cannot be sent at all: not JSON, missing URL/header variable, bad template,
    /// unset secret. Never retried.
    Invalid(String),
    /// Refused before or after the call by a rule of the connector: a failed response check, a
    /// failed lookup, no token. `reason` is the metric label; the connector says whether it
    /// is worth retrying.
    Rejected {
        reason: &'static str,
        transient: bool,
        message: String,
    },
}

/// The class of an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    Transient,
    Permanent,
}

/// A status code, or a whole class such as `4xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPattern {
    Exact(u16),
    /// The first digit: `4` for `4xx`.
    Class(u16),
}

impl StatusPattern {
    /// Parses `404` or `4xx`.
    pub fn parse(s: &str) -> Option<StatusPattern> {
        let s = s.trim();
        if let Some(d) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
            return d
                .parse()
                .ok()
                .filter(|d| (1..=5).contains(d))
                .map(StatusPattern::Class);
        }
        s.parse()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .map(StatusPattern::Exact)
    }

    fn matches(self, code: u16) -> Option<u8> {
        match self {
            StatusPattern::Exact(c) if c == code => Some(2),
            StatusPattern::Class(d) if code / 100 == d => Some(1),
            _ => None,
        }
    }
}

/// A connector's overrides of the default classification (`retry.statuses`). An exact code
/// wins over a class (`4xx`); codes in no list keep the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusRules {
    pub success: Vec<StatusPattern>,
    pub transient: Vec<StatusPattern>,
    pub permanent: Vec<StatusPattern>,
}

impl StatusRules {
    fn lookup(&self, code: u16) -> Option<Class> {
        [
            (&self.success, Class::Success),
            (&self.transient, Class::Transient),
            (&self.permanent, Class::Permanent),
        ]
        .iter()
        .flat_map(|(list, class)| {
            list.iter()
                .filter_map(move |p| p.matches(code).map(|score| (score, *class)))
        })
        .max_by_key(|(score, _)| *score)
        .map(|(_, class)| class)
    }
}

/// Classifies an outcome: the connector's overrides first; then 2xx success; 408, 429, 5xx,
/// timeouts and connection errors transient; other statuses permanent; invalid events permanent.
pub fn classify(outcome: &Outcome, rules: &StatusRules) -> Class {
    match outcome {
        Outcome::Status { code, .. } => rules.lookup(*code).unwrap_or(match code {
            200..=299 => Class::Success,
            408 | 429 | 500..=599 => Class::Transient,
            _ => Class::Permanent,
        }),
        Outcome::Timeout | Outcome::Connect(_) => Class::Transient,
        Outcome::Invalid(_) => Class::Permanent,
        Outcome::Rejected { transient, .. } => {
            if *transient {
                Class::Transient
            } else {
                Class::Permanent
            }
        }
    }
}

/// What to do with the JetStream message after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Delivered: ack.
    Ack,
    /// Try again: NAK with this delay (JetStream redelivers; the delivery count is the attempt).
    Retry(Duration),
    /// Give up: store as a parked job, then ack.
    Park,
}

/// The one decision table. `attempt` is 1-based (JetStream's delivery count). `jitter` is a
/// number in [-1, 1] that spreads the delay within ±20 %.
pub fn decide(outcome: &Outcome, attempt: u32, retry: &Retry, jitter: f64) -> Action {
    match classify(outcome, &retry.statuses) {
        Class::Success => Action::Ack,
        Class::Permanent => Action::Park,
        Class::Transient if attempt >= retry.max => Action::Park,
        Class::Transient => {
            let retry_after = match outcome {
                Outcome::Status { retry_after, .. } => *retry_after,
                _ => None,
            };
            Action::Retry(match retry_after {
                Some(d) => d.min(retry.max_backoff),
                None => backoff(attempt, retry, jitter),
            })
        }
    }
}

/// Delay after attempt `n`: `backoff * 2^(n-1)`, times (1 + 0.2 * jitter), capped (also for
/// delays too large to represent, and a jitter that is not a number).
pub fn backoff(attempt: u32, retry: &Retry, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = retry.backoff.as_secs_f64() * f64::from(1u32 << exp);
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(-1.0, 1.0)
    };
    let jittered = base * (1.0 + 0.2 * jitter);
    Duration::try_from_secs_f64(jittered.max(0.0))
        .unwrap_or(retry.max_backoff)
        .min(retry.max_backoff)
}

/// The longest `Retry-After` taken from a target (a day): longer ones are read as this, so
/// that no answer can pause an endpoint for ever (a connector's `maxBackoffMs` caps the
/// event's own wait further).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Parses a `Retry-After` header: delay-seconds or an HTTP date (relative to `now`), at most
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// A 429 (or 503) without `Retry-After` from a target whose rate-limit headers said its budget
/// is spent until `spent` from now is retried then: the announced reset stands in for the
/// missing `Retry-After` (for the event's retry and for the endpoint's slow-down).
pub fn retry_at_reset(outcome: &mut Outcome, spent: Option<Duration>) {
    if let (
        Outcome::Status {
            code: 429 | 503,
            retry_after: retry_after @ None,
        },
        Some(reset),
    ) = (outcome, spent)
    {
        *retry_after = Some(reset);
    }
}

/// What an attempt's outcome tells its endpoint (the endpoint actor's input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Success,
    /// 5xx, timeout, connection error.
    Failure,
    /// 429 (or 503 with Retry-After): slow the whole endpoint down for this long.
    SlowDown(Duration),
    /// Nothing to say about the endpoint (a 4xx, an aborted delivery).
    Neutral,
}

/// What an attempt's outcome says about its endpoint. `fallback_slowdown` applies to a 429
/// without `Retry-After`.
pub fn signal_of(outcome: &Outcome, fallback_slowdown: Duration) -> Signal {
    match outcome {
        Outcome::Status {
            code: 200..=299, ..
        } => Signal::Success,
        Outcome::Status {
            code: 429,
            retry_after,
        } => Signal::SlowDown(retry_after.unwrap_or(fallback_slowdown)),
        Outcome::Status {
            code: 503,
            retry_after: Some(d),
        } => Signal::SlowDown(*d),
        Outcome::Status {
            code: 500..=599, ..
        }
        | Outcome::Timeout
        | Outcome::Connect(_) => Signal::Failure,
        _ => Signal::Neutral,
    }
}

/// How an outcome reads in logs, status pages and parked jobs.
pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Status { code, .. } => format!("HTTP {code}"),
        Outcome::Timeout => "timeout".into(),
        Outcome::Connect(e) => format!("connection failed: {e}"),
        Outcome::Invalid(e) => format!("invalid event: {e}"),
        Outcome::Rejected { message, .. } => message.clone(),
    }
}

/// Label for `sync_fail_total{reason}`.
pub fn fail_reason(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Status { code, .. } if (400..500).contains(code) => "http_4xx",
        Outcome::Status { code, .. } if *code >= 500 => "http_5xx",
        Outcome::Status { .. } => "http_other",
        Outcome::Timeout => "timeout",
        Outcome::Connect(_) => "connect",
        Outcome::Invalid(_) => "invalid_event",
        Outcome::Rejected { reason, .. } => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Outcome {
        Outcome::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn decision_table() {
        let retry = Retry {
            max: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            ..Retry::default()
        };
        let ms = |n| Action::Retry(Duration::from_millis(n));
        let cases = [
            (status(200), 1, Action::Ack),
            (status(204), 3, Action::Ack),
            (status(500), 1, ms(100)),
            (status(503), 2, ms(200)),
            (status(503), 3, Action::Park),
            (status(408), 1, ms(100)),
            (status(429), 1, ms(100)),
            (status(400), 1, Action::Park),
            (status(404), 1, Action::Park),
            (status(409), 1, Action::Park),
            (status(301), 1, Action::Park),
            (Outcome::Timeout, 1, ms(100)),
            (Outcome::Connect("refused".into()), 2, ms(200)),
            (Outcome::Connect("refused".into()), 3, Action::Park),
            (Outcome::Invalid("not JSON".into()), 1, Action::Park),
            (
                Outcome::Rejected {
                    reason: "response_check",
                    transient: false,
                    message: "x".into(),
                },
                1,
                Action::Park,
            ),
            (
                Outcome::Rejected {
                    reason: "response_check",
                    transient: true,
                    message: "x".into(),
                },
                2,
                ms(200),
            ),
            (
                Outcome::Status {
                    code: 429,
                    retry_after: Some(Duration::from_secs(1)),
                },
                1,
                Action::Retry(Duration::from_secs(1)),
            ),
            (
                Outcome::Status {
                    code: 503,
                    retry_after: Some(Duration::from_secs(3600)),
                },
                1,
                Action::Retry(Duration::from_secs(10)),
            ),
        ];
        for (outcome, attempt, want) in cases {
            assert_eq!(
                decide(&outcome, attempt, &retry, 0.0),
                want,
                "{outcome:?} attempt {attempt}"
            );
        }
    }

    #[test]
    fn overrides_change_the_class_of_a_status() {
        let p = |s: &str| StatusPattern::parse(s).unwrap();
        let rules = StatusRules {
            success: vec![p("409")],
            transient: vec![p("423"), p("4xx")],
            permanent: vec![p("503"), p("404")],
        };
        let cases = [
            (409, Class::Success),
            (423, Class::Transient),
            (400, Class::Transient),
            (404, Class::Permanent),
            (503, Class::Permanent),
            (500, Class::Transient),
            (200, Class::Success),
            (301, Class::Permanent),
        ];
        for (code, want) in cases {
            assert_eq!(classify(&status(code), &rules), want, "{code}");
        }
        assert_eq!(StatusPattern::parse("5xx"), Some(StatusPattern::Class(5)));
        assert_eq!(StatusPattern::parse("9xx"), None);
        assert_eq!(StatusPattern::parse("42"), None);
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let retry = Retry {
            max: 10,
            backoff: Duration::from_millis(3000),
            max_backoff: Duration::from_secs(60),
            ..Retry::default()
        };
        assert_eq!(backoff(1, &retry, 0.0), Duration::from_millis(3000));
        assert_eq!(backoff(2, &retry, 0.0), Duration::from_millis(6000));
        assert_eq!(backoff(3, &retry, 1.0), Duration::from_millis(14400));
        assert_eq!(backoff(3, &retry, -1.0), Duration::from_millis(9600));
        assert_eq!(backoff(9, &retry, 0.0), Duration::from_secs(60));
        assert_eq!(backoff(1000, &retry, 5.0), Duration::from_secs(60));
    }

    #[test]
    fn what_an_outcome_tells_its_endpoint() {
        let fallback = Duration::from_secs(3);
        let ra = |code, secs| Outcome::Status {
            code,
            retry_after: Some(Duration::from_secs(secs)),
        };
        let cases = [
            (status(200), Signal::Success),
            (status(204), Signal::Success),
            (status(429), Signal::SlowDown(fallback)),
            (ra(429, 7), Signal::SlowDown(Duration::from_secs(7))),
            (ra(503, 9), Signal::SlowDown(Duration::from_secs(9))),
            (status(503), Signal::Failure),
            (status(500), Signal::Failure),
            (Outcome::Timeout, Signal::Failure),
            (Outcome::Connect("refused".into()), Signal::Failure),
            (status(404), Signal::Neutral),
            (status(301), Signal::Neutral),
            (Outcome::Invalid("x".into()), Signal::Neutral),
        ];
        for (outcome, want) in cases {
            assert_eq!(signal_of(&outcome, fallback), want, "{outcome:?}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn a_spent_budget_stands_in_for_a_missing_retry_after() {
        let spent = Some(Duration::from_secs(2));
        let ra = |code, secs| Outcome::Status {
            code,
            retry_after: Some(Duration::from_secs(secs)),
        };
        let cases = [
            (status(429), spent, ra(429, 2)),
            (status(503), spent, ra(503, 2)),
            (ra(429, 7), spent, ra(429, 7)),
            (status(429), None, status(429)),
            (status(500), spent, status(500)),
            (status(200), spent, status(200)),
            (Outcome::Timeout, spent, Outcome::Timeout),
        ];
        for (mut outcome, spent, want) in cases {
            let before = outcome.clone();
            retry_at_reset(&mut outcome, spent);
            assert_eq!(outcome, want, "{before:?} {spent:?}");
        }
    }
}
