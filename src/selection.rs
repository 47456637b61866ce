//! Which past events a command means: a time window (`--since 2h`, `--until 2024-05-10T12:00:00Z`)
//! and payload field matches (`--where permitId=RW-481`). Pure: the caller passes "now".

use serde_json::Value as Json;
use time::OffsetDateTime;

/// Parses a point in time: a duration back from `now` (`90s`, `30m`, `2h`, `7d`, `1w`, or
/// combined: `1h30m`), an RFC 3339 time (`2024-05-10T08:00:00Z`) or a date (`2024-05-10`,
/// midnight UTC).
pub fn parse_time(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    let t = text.trim();
    if let Some(at) = crate::clock::parse(t) {
        return Ok(at.to_offset(time::UtcOffset::UTC));
    }
    if let Some(date) = parse_date(t) {
        return Ok(date.midnight().assume_utc());
    }
    match parse_duration(t) {
        Some(d) => Ok(now - d),
        None => Err(format!(
            "`{t}`: expected a duration back from now (90s, 30m, 2h, 7d, 1h30m), an RFC 3339 time (2024-05-10T08:00:00Z) or a date (2024-05-10)"
        )),
    }
}

/// `YYYY-MM-DD`.
fn parse_date(t: &str) -> Option<time::Date> {
    let mut parts = t.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let month = time::Month::try_from(m.parse::<u8>().ok()?).ok()?;
    time::Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()
}

/// `90s`, `30m`, `2h`, `7d`, `1w`, `1h30m` (units s, m, h, d, w).
pub fn parse_duration(text: &str) -> Option<time::Duration> {
    let mut total = time::Duration::ZERO;
    let mut digits = String::new();
    let mut any = false;
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        let unit = match ch {
            's' => time::Duration::SECOND,
            'm' => time::Duration::MINUTE,
            'h' => time::Duration::HOUR,
            'd' => time::Duration::DAY,
            'w' => time::Duration::WEEK,
            _ => return None,
        };
        total = total.checked_add(unit.checked_mul(i32::try_from(n).ok()?)?)?;
        any = true;
    }
    (any && digits.is_empty()).then_some(total)
}

/// A time window: events published at or after `since` and, when set, at or before `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub since: OffsetDateTime,
    pub until: Option<OffsetDateTime>,
}

impl Window {
    /// The window of `--since` and `--until` texts; `until` before `since` is an error.
    pub fn parse(since: &str, until: Option<&str>, now: OffsetDateTime) -> Result<Window, String> {
        let since_t = parse_time(since, now).map_err(|e| format!("--since {e}"))?;
        let until_t = until
            .map(|u| parse_time(u, now).map_err(|e| format!("--until {e}")))
            .transpose()?;
        if let Some(u) = until_t {
            if u < since_t {
                return Err(format!(
                    "--until {} is before --since {}",
                    crate::clock::format(u),
                    crate::clock::format(since_t)
                ));
            }
        }
        Ok(Window {
            since: since_t,
            until: until_t,
        })
    }

    /// Whether a time is inside the window.
    pub fn contains(&self, t: OffsetDateTime) -> bool {
        t >= self.since && self.until.is_none_or(|u| t <= u)
    }
}

/// `--where FIELD=VALUE`: a payload field (a dot path into nested objects, array indexes as
/// numbers) equal to a value. A string field matches its text; a number, boolean or null
/// matches its JSON text (`n=5` matches `5` and `"5"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMatch {
    pub path: Vec<String>,
    pub value: String,
}

impl FieldMatch {
    /// Parses `FIELD=VALUE`.
    pub fn parse(text: &str) -> Result<FieldMatch, String> {
        let Some((field, value)) = text.split_once('=') else {
            return Err(format!(
                "`{text}`: expected FIELD=VALUE, e.g. permitId=RW-481"
            ));
        };
        let field = field.trim();
        if field.is_empty() || field.split('.').any(str::is_empty) {
            return Err(format!(
                "`{text}`: the field is a dot path such as permitId or crew.calendarId"
            ));
        }
        Ok(FieldMatch {
            path: field.split('.').map(str::to_string).collect(),
            value: value.to_string(),
        })
    }

    /// Whether the payload has the field with this value.
    pub fn matches(&self, payload: &Json) -> bool {
        let mut v = payload;
        for key in &self.path {
            v = match v {
                Json::Object(o) => match o.get(key) {
                    Some(x) => x,
                    None => return false,
                },
                Json::Array(a) => match key.parse::<usize>().ok().and_then(|i| a.get(i)) {
                    Some(x) => x,
                    None => return false,
                },
                _ => return false,
            };
        }
        match v {
            Json::String(s) => *s == self.value,
            Json::Number(_) | Json::Bool(_) | Json::Null => {
                let text = v.to_string();
                text == self.value
            }
            _ => false,
        }
    }

    /// `FIELD=VALUE` again.
    pub fn text(&self) -> String {
        format!("{}={}", self.path.join("."), self.value)
    }
}

/// Whether every match holds for the payload (no matches: every payload).
pub fn all_match(matches: &[FieldMatch], payload: &Json) -> bool {
    matches.iter().all(|m| m.matches(payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> OffsetDateTime {
        crate::clock::parse("2026-05-10T12:00:00Z").unwrap()
    }

    #[test]
    fn times_are_durations_back_rfc3339_or_dates() {
        let t = |s| crate::clock::format(parse_time(s, now()).unwrap());
        assert_eq!(t("2h"), "2026-05-10T10:00:00Z");
        assert_eq!(t("1h30m"), "2026-05-10T10:30:00Z");
        assert_eq!(t("90s"), "2026-05-10T11:58:30Z");
        assert_eq!(t("7d"), "2026-05-03T12:00:00Z");
        assert_eq!(t("1w"), "2026-05-03T12:00:00Z");
        assert_eq!(t("2024-05-10T08:00:00Z"), "2024-05-10T08:00:00Z");
        assert_eq!(t("2024-05-10T08:00:00+02:00"), "2024-05-10T06:00:00Z");
        assert_eq!(t("2024-05-10"), "2024-05-10T00:00:00Z");
        for bad in ["", "2", "h", "2x", "yesterday", "2h3", "-2h"] {
            assert!(parse_time(bad, now()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_window_checks_its_order_and_bounds() {
        let w = Window::parse("2h", Some("1h"), now()).unwrap();
        assert!(w.contains(crate::clock::parse("2026-05-10T10:30:00Z").unwrap()));
        assert!(!w.contains(crate::clock::parse("2026-05-10T11:30:00Z").unwrap()));
        assert!(!w.contains(crate::clock::parse("2026-05-10T09:30:00Z").unwrap()));
        let e = Window::parse("1h", Some("2h"), now()).unwrap_err();
        assert!(e.contains("before --since"), "{e}");
        assert!(Window::parse("soon", None, now())
            .unwrap_err()
            .starts_with("--since `soon`"));
    }

    #[test]
    fn field_matches() {
        let e = json!({"permitId": "RW-481", "n": 5, "ok": true, "crew": {"id": "C1"},
                       "tags": ["a", "b"], "none": null, "obj": {"x": 1}});
        let m = |s: &str| FieldMatch::parse(s).unwrap().matches(&e);
        assert!(m("permitId=RW-481"));
        assert!(!m("permitId=RW-48"));
        assert!(m("n=5"));
        assert!(m("ok=true"));
        assert!(m("crew.id=C1"));
        assert!(m("tags.1=b"));
        assert!(m("none=null"));
        assert!(!m("obj={\"x\":1}"), "objects are not compared");
        assert!(!m("missing=x"));
        assert!(!m("permitId.x=RW-481"));
        assert!(m("permitId=RW-481") && FieldMatch::parse("a=b=c").unwrap().value == "b=c");
        assert!(FieldMatch::parse("novalue").is_err());
        assert!(FieldMatch::parse("=x").is_err());
        assert!(FieldMatch::parse("a..b=x").is_err());
        assert_eq!(
            FieldMatch::parse("crew.id=C1").unwrap().text(),
            "crew.id=C1"
        );
        assert!(all_match(&[], &e));
    }
}
