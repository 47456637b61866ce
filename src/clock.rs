//! The wall clock as hms-sync writes it: RFC 3339 text, UTC.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Now, as RFC 3339 (nanoseconds kept).
pub fn now_rfc3339() -> String {
    format(OffsetDateTime::now_utc())
}

/// A time as RFC 3339 (nanoseconds kept).
pub fn format(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A time as RFC 3339, to the second (what registry listings show).
pub fn to_second(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Parses RFC 3339 text.
pub fn parse(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s.trim(), &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_truncates() {
        let t = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(1_500);
        assert_eq!(format(t), "1970-01-01T00:00:01.5Z");
        assert_eq!(to_second(t), "1970-01-01T00:00:01Z");
        assert_eq!(parse(&format(t)), Some(t));
        assert_eq!(parse("yesterday"), None);
    }
}
