//! The target's rate-limit headers, read into one budget: pure, table-tested.
//!
//! Three families, the first one present wins:
//! 1. IETF `RateLimit` (draft-ietf-httpapi-ratelimit-headers-08 and later: a list of
//!    `"policy";r=<remaining>;t=<reset>` items, possibly over several fields) with
//!    `RateLimit-Policy` (`"policy";q=<quota>;w=<window>`) for the quota and, when an item has
//!    no `t`, its window; draft-07's dictionary `RateLimit: limit=10, remaining=5, reset=3` too;
//! 2. the older drafts' `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset`;
//! 3. the common `X-RateLimit-Limit` / `X-RateLimit-Remaining` / `X-RateLimit-Reset`.
//!
//! A reset is delta-seconds, or a Unix time when it is [`UNIX_TIME_FROM`] or more (no window
//! lasts 31 years; GitHub and others send the Unix time of the reset). Decimals are accepted.
//! With several policies the most constraining wins: the smallest remaining, and among those
//! the latest reset. A budget without a known reset is not a budget (nothing to wait for).

use std::time::{Duration, SystemTime};

/// A reset value at or above this is a Unix time (seconds), not a delay.
pub const UNIX_TIME_FROM: f64 = 1_000_000_000.0;

/// The longest reset honoured; a larger one is taken as this (a guard against garbage).
pub const MAX_RESET: Duration = Duration::from_secs(3600);

/// Which header family a budget was read from (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `RateLimit` (and `RateLimit-Policy`).
    Ietf,
    /// `RateLimit-Limit` / `-Remaining` / `-Reset`.
    IetfOlder,
    /// `X-RateLimit-Limit` / `-Remaining` / `-Reset`.
    XRateLimit,
}

/// What the target says is left of its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Requests the target still accepts before the reset.
    pub remaining: u64,
    /// Time until the budget is replenished (capped at [`MAX_RESET`]).
    pub reset: Duration,
    /// The quota of the window, when the target names it.
    pub limit: Option<u64>,
    pub family: Family,
}

/// What one attempt learnt about its endpoint's budget (reported by the endpoint permit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// No answer (a connection error, a timeout, an aborted delivery).
    NoAnswer,
    /// An answer without rate-limit headers.
    Nothing,
    /// An answer that announced a budget.
    Budget(Budget),
}

impl Announced {
    /// The announcement of an answer with these headers (`now`: when it arrived).
    pub fn of(headers: &[(String, String)], now: SystemTime) -> Announced {
        parse(headers, now).map_or(Announced::Nothing, Announced::Budget)
    }

    /// Like [`Announced::of`], for an answer's header map; an answer without rate-limit
    /// headers (the common case) is told apart without copying any.
    pub fn of_map(headers: &http::HeaderMap, now: SystemTime) -> Announced {
        let announces = ["ratelimit", "ratelimit-remaining", "x-ratelimit-remaining"]
            .iter()
            .any(|n| headers.contains_key(*n));
        if !announces {
            return Announced::Nothing;
        }
        Announced::of(&crate::check::header_pairs(headers), now)
    }
}

/// The budget announced by an answer's headers (names in any case), if any.
pub fn parse(headers: &[(String, String)], now: SystemTime) -> Option<Budget> {
    let all = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let ietf = all("ratelimit");
    if !ietf.is_empty() {
        return ietf_budget(&ietf, &all("ratelimit-policy"), now);
    }
    let first = |name: &str| all(name).first().copied();
    if let Some(r) = first("ratelimit-remaining") {
        return trio(
            r,
            first("ratelimit-reset"),
            first("ratelimit-limit"),
            Family::IetfOlder,
            now,
        );
    }
    let r = first("x-ratelimit-remaining")?;
    trio(
        r,
        first("x-ratelimit-reset"),
        first("x-ratelimit-limit"),
        Family::XRateLimit,
        now,
    )
}

/// `Remaining` / `Reset` / `Limit` headers of one family.
fn trio(
    remaining: &str,
    reset: Option<&str>,
    limit: Option<&str>,
    family: Family,
    now: SystemTime,
) -> Option<Budget> {
    Some(Budget {
        remaining: first_integer(remaining)?,
        reset: reset_of(first_number(reset?)?, now)?,
        limit: limit.and_then(first_integer),
        family,
    })
}

/// The IETF `RateLimit` field (current list form, or draft-07's dictionary).
fn ietf_budget(fields: &[&str], policies: &[&str], now: SystemTime) -> Option<Budget> {
    let members: Vec<Member> = fields.iter().flat_map(|f| split_members(f)).collect();
    // Draft-07: `limit=10, remaining=5, reset=3` (one policy, a dictionary).
    if members.iter().any(|m| m.item.starts_with("remaining=")) {
        let value = |key: &str| {
            members
                .iter()
                .find_map(|m| m.item.strip_prefix(key)?.strip_prefix('='))
        };
        return Some(Budget {
            remaining: first_integer(value("remaining")?)?,
            reset: reset_of(first_number(value("reset")?)?, now)?,
            limit: value("limit").and_then(first_integer),
            family: Family::Ietf,
        });
    }
    let policies: Vec<Member> = policies.iter().flat_map(|f| split_members(f)).collect();
    let policy_of = |name: &str| -> Option<&Member> {
        policies
            .iter()
            .find(|p| p.name() == name)
            .or_else(|| (policies.len() == 1).then(|| &policies[0]))
    };
    let mut best: Option<Budget> = None;
    for m in &members {
        let Some(remaining) = m.param("r").and_then(first_integer) else {
            continue;
        };
        let policy = policy_of(m.name());
        let reset = m
            .param("t")
            .or_else(|| policy.and_then(|p| p.param("w")))
            .and_then(first_number)
            .and_then(|t| reset_of(t, now));
        let Some(reset) = reset else {
            continue;
        };
        let limit = policy.and_then(|p| {
            p.param("q")
                .or(Some(p.item.as_str()))
                .and_then(first_integer)
        });
        let candidate = Budget {
            remaining,
            reset,
            limit,
            family: Family::Ietf,
        };
        best = Some(match best {
            None => candidate,
            Some(b) if candidate.remaining < b.remaining => candidate,
            Some(b) if candidate.remaining == b.remaining && candidate.reset > b.reset => candidate,
            Some(b) => b,
        });
    }
    best
}

/// One member of a structured-field list: its bare item and its parameters (as text).
#[derive(Debug)]
struct Member {
    item: String,
    params: Vec<(String, String)>,
}

impl Member {
    /// The item as a policy name (a quoted string or a token).
    fn name(&self) -> &str {
        self.item.trim_matches('"')
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a list field into members at commas and parameters at semicolons, outside quoted
/// strings (tolerant: anything unparsable just has no usable parameters).
fn split_members(field: &str) -> Vec<Member> {
    split_outside_quotes(field, ',')
        .into_iter()
        .filter(|m| !m.trim().is_empty())
        .map(|m| {
            let mut parts = split_outside_quotes(m, ';').into_iter();
            let item = parts.next().unwrap_or_default().trim().to_string();
            let params = parts
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, "?1"));
                    (k.trim().to_ascii_lowercase(), v.trim().to_string())
                })
                .collect();
            Member { item, params }
        })
        .collect()
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The first non-negative integer of a value (`5`, `5, 5;w=1`, `"5"`).
fn first_integer(v: &str) -> Option<u64> {
    let n = first_number(v)?;
    (n >= 0.0 && n.is_finite()).then(|| n.floor() as u64)
}

/// The first number of a value (`2`, `1.5`, `1700000000`).
fn first_number(v: &str) -> Option<f64> {
    let t = v.trim().trim_matches('"');
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(t.len());
    t[..end].parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A reset value as a delay from `now`: delta-seconds, or a Unix time when large.
fn reset_of(value: f64, now: SystemTime) -> Option<Duration> {
    if value < 0.0 {
        return None;
    }
    let delay = if value >= UNIX_TIME_FROM {
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        (value - now_secs).max(0.0)
    } else {
        value
    };
    Some(Duration::from_secs_f64(delay.min(MAX_RESET.as_secs_f64())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_UNIX: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_UNIX)
    }

    fn budget(remaining: u64, reset_ms: u64, limit: Option<u64>, family: Family) -> Budget {
        Budget {
            remaining,
            reset: Duration::from_millis(reset_ms),
            limit,
            family,
        }
    }

    #[test]
    fn header_families_and_forms() {
        use Family::*;
        let later = (NOW_UNIX + 30).to_string();
        let past = (NOW_UNIX - 30).to_string();
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<Budget>);
        let cases: Vec<Case> = vec![
            ("none", vec![("content-type", "application/json")], None),
            (
                "IETF current form",
                vec![("RateLimit", r#""default";r=0;t=2"#)],
                Some(budget(0, 2000, None, Ietf)),
            ),
            (
                "IETF token name, with its policy",
                vec![
                    ("ratelimit", "default;r=4;t=2"),
                    ("ratelimit-policy", "default;q=5;w=2"),
                ],
                Some(budget(4, 2000, Some(5), Ietf)),
            ),
            (
                "IETF without t: the policy's window",
                vec![
                    ("ratelimit", r#""basic";r=0"#),
                    ("ratelimit-policy", r#""basic";q=100;w=60"#),
                ],
                Some(budget(0, 60_000, Some(100), Ietf)),
            ),
            (
                "IETF without t or policy: no budget",
                vec![("ratelimit", r#""default";r=999;pk=:dHJpYWw=:"#)],
                None,
            ),
            (
                "IETF several policies: the smallest remaining, latest reset",
                vec![
                    ("ratelimit", r#""permin";r=20;t=40, "perhr";r=0;t=1800"#),
                    (
                        "ratelimit-policy",
                        r#""permin";q=50;w=60,"perhr";q=1000;w=3600"#,
                    ),
                ],
                Some(budget(0, 1_800_000, Some(1000), Ietf)),
            ),
            (
                "IETF items over two fields",
                vec![
                    ("ratelimit", r#""a";r=3;t=10"#),
                    ("ratelimit", r#""b";r=3;t=20"#),
                ],
                Some(budget(3, 20_000, None, Ietf)),
            ),
            (
                "IETF quoted name holding separators",
                vec![("ratelimit", r#""x,y;z";r=1;t=5"#)],
                Some(budget(1, 5000, None, Ietf)),
            ),
            (
                "draft-07 dictionary",
                vec![("RateLimit", "limit=10, remaining=5, reset=3")],
                Some(budget(5, 3000, Some(10), Ietf)),
            ),
            (
                "older drafts",
                vec![
                    ("RateLimit-Limit", "10"),
                    ("RateLimit-Remaining", "0"),
                    ("RateLimit-Reset", "7"),
                ],
                Some(budget(0, 7000, Some(10), IetfOlder)),
            ),
            (
                "older draft limit with a policy",
                vec![
                    ("ratelimit-limit", "10, 10;w=1"),
                    ("ratelimit-remaining", "9"),
                    ("ratelimit-reset", "1"),
                ],
                Some(budget(9, 1000, Some(10), IetfOlder)),
            ),
            (
                "X-RateLimit in seconds",
                vec![
                    ("X-RateLimit-Limit", "60"),
                    ("X-RateLimit-Remaining", "0"),
                    ("X-RateLimit-Reset", "12"),
                ],
                Some(budget(0, 12_000, Some(60), XRateLimit)),
            ),
            (
                "X-RateLimit as a Unix time",
                vec![
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", later.as_str()),
                ],
                Some(budget(0, 30_000, None, XRateLimit)),
            ),
            (
                "a Unix time in the past: reset now",
                vec![
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", past.as_str()),
                ],
                Some(budget(0, 0, None, XRateLimit)),
            ),
            (
                "decimal seconds",
                vec![("x-ratelimit-remaining", "1"), ("x-ratelimit-reset", "1.5")],
                Some(budget(1, 1500, None, XRateLimit)),
            ),
            (
                "capped",
                vec![
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "999999"),
                ],
                Some(budget(0, MAX_RESET.as_millis() as u64, None, XRateLimit)),
            ),
            (
                "remaining without a reset",
                vec![("x-ratelimit-remaining", "0")],
                None,
            ),
            (
                "garbage",
                vec![
                    ("x-ratelimit-remaining", "lots"),
                    ("x-ratelimit-reset", "1"),
                ],
                None,
            ),
            (
                "negative",
                vec![("x-ratelimit-remaining", "-1"), ("x-ratelimit-reset", "1")],
                None,
            ),
            (
                "IETF wins over X-RateLimit",
                vec![
                    ("x-ratelimit-remaining", "100"),
                    ("x-ratelimit-reset", "100"),
                    ("ratelimit", r#""default";r=2;t=3"#),
                ],
                Some(budget(2, 3000, None, Ietf)),
            ),
        ];
        for (name, headers, want) in cases {
            let h: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(parse(&h, now()), want, "{name}");
        }
    }

    #[test]
    fn an_answer_announces_a_budget_or_nothing() {
        let h = vec![("ratelimit".to_string(), "\"d\";r=0;t=1".to_string())];
        assert!(matches!(Announced::of(&h, now()), Announced::Budget(_)));
        assert_eq!(Announced::of(&[], now()), Announced::Nothing);
        let mut map = http::HeaderMap::new();
        map.insert("content-type", "application/json".parse().unwrap());
        assert_eq!(Announced::of_map(&map, now()), Announced::Nothing);
        for (name, value) in &h {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        assert_eq!(Announced::of_map(&map, now()), Announced::of(&h, now()));
    }
}
