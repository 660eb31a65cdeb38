//! UTC timestamps as operators read them: `2026-05-18T15:30:12+00:00`.

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

/// Formats seconds since the epoch (UTC).
pub fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

/// `YYYYMMDDTHHMMSSmmm`, UTC, now: the time part of a release id.
pub fn now_compact_millis() -> String {
    jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%S%3f")
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(super::rfc3339(1_779_118_212), "2026-05-18T15:30:12+00:00");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00+00:00");
        assert_eq!(super::now_compact_millis().len(), 18);
    }
}
