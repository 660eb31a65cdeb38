//! Durations as operators write them: `500ms`, `5s`, `10m`, `1h30m`.

use std::time::Duration;

/// Parses a duration made of one or more `<number><unit>` parts, with units
/// `ms`, `s`, `m`, `h` and `d`. A bare number is refused: `5` could mean anything.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!("`{text}` is not a duration"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}` is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86_400),
            "" => return Err(format!("`{text}` has a number without a unit")),
            other => return Err(format!("`{text}` has an unknown unit `{other}`")),
        };
        total += part;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
    }

    #[test]
    fn refuses_ambiguous_input() {
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 seconds").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("3w")
            .unwrap_err()
            .contains("unknown unit `w`"));
    }
}
