//! Retry-After and the decision table never panic, whatever a target sends or a connector
//! sets, and every delay they give stays within its cap.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;

use crate::outcome::{backoff, decide, parse_retry_after, Action, Outcome, Retry, MAX_RETRY_AFTER};

fn now() -> impl Strategy<Value = SystemTime> {
    (0u64..4_102_444_800).prop_map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

proptest! {
    #[test]
    fn any_retry_after_header_parses_or_not_never_panics(v in "\\PC{0,40}", now in now()) {
        if let Some(d) = parse_retry_after(&v, now) {
            prop_assert!(d <= MAX_RETRY_AFTER);
        }
    }

    #[test]
    fn delay_seconds_are_taken_as_given_up_to_the_cap(secs in any::<u64>(), pad in "[ \t]{0,3}", now in now()) {
        let d = parse_retry_after(&format!("{pad}{secs}{pad}"), now);
        prop_assert_eq!(d, Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER)));
    }

    #[test]
    fn http_dates_are_relative_to_now(now in now(), ahead in -100_000i64..100_000) {
        let now = UNIX_EPOCH + Duration::from_secs(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs());
        let when = if ahead >= 0 {
            now + Duration::from_secs(ahead as u64)
        } else {
            now - Duration::from_secs(ahead.unsigned_abs())
        };
        let d = parse_retry_after(&httpdate::fmt_http_date(when), now);
        prop_assert_eq!(d, Some(Duration::from_secs(ahead.max(0) as u64).min(MAX_RETRY_AFTER)));
    }

    #[test]
    fn the_decision_table_never_panics_and_caps_every_delay(
        code in 0u16..1000,
        retry_after in proptest::option::of(any::<u64>()),
        attempt in any::<u32>(),
        max in any::<u32>(),
        backoff_ms in any::<u64>(),
        max_backoff_ms in any::<u64>(),
        jitter in any::<f64>(),
    ) {
        let retry = Retry {
            max,
            backoff: Duration::from_millis(backoff_ms),
            max_backoff: Duration::from_millis(max_backoff_ms),
            ..Retry::default()
        };
        let outcome = Outcome::Status { code, retry_after: retry_after.map(Duration::from_secs) };
        if let Action::Retry(d) = decide(&outcome, attempt, &retry, jitter) {
            prop_assert!(d <= retry.max_backoff);
        }
        prop_assert!(backoff(attempt, &retry, jitter) <= retry.max_backoff);
    }
}
