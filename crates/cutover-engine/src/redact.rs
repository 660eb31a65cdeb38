//! Redaction of secret values by value: whatever a worker, a hook or a
//! health command prints, a KV secret never reaches the terminal, the
//! store or a log as itself.

use std::sync::Arc;

use crate::events::{Event, Reporter};

/// What replaces a secret value.
pub const MARK: &str = "<redacted>";

/// The most of a step's output a message keeps: its end, where the error
/// is. A target that prints megabytes must not fill the store, the feed
/// and every page that shows the message.
pub const MESSAGE_MAX: usize = 16 << 10;

/// `text`, or its last [`MESSAGE_MAX`] bytes (on a character boundary),
/// saying it was cut.
pub fn cap(text: &str) -> String {
    if text.len() <= MESSAGE_MAX {
        return text.to_string();
    }
    let mut start = text.len() - MESSAGE_MAX;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("(cut to its last {MESSAGE_MAX} bytes) …{}", &text[start..])
}

/// Values shorter than this are not redacted: replacing every `1` or `on`
/// in the output would hide everything and protect nothing.
const MIN_LEN: usize = 4;

/// The secret values of a run, longest first (so that a secret containing
/// another is replaced whole).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    values: Vec<String>,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut values: Vec<String> = values
            .into_iter()
            .flat_map(|v| {
                // A multi-line secret (a key file) is also redacted line by
                // line: output tails cut it at line boundaries.
                let lines: Vec<String> = v.lines().map(|l| l.trim().to_string()).collect();
                std::iter::once(v).chain(if lines.len() > 1 { lines } else { Vec::new() })
            })
            .filter(|v| v.len() >= MIN_LEN)
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        values.dedup();
        Redactor { values }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MARK);
            }
        }
        out
    }

    /// A reporter that redacts every event before `inner` sees it.
    pub fn reporter(&self, inner: Arc<dyn Reporter>) -> Arc<dyn Reporter> {
        if self.is_empty() {
            return inner;
        }
        Arc::new(Redacting {
            inner,
            redactor: self.clone(),
        })
    }
}

struct Redacting {
    inner: Arc<dyn Reporter>,
    redactor: Redactor,
}

impl Reporter for Redacting {
    fn event(&self, e: &Event) {
        // Each string field is redacted as itself: in serialized JSON a
        // secret holding `"` or `\` would be escaped and not match.
        let mut value: serde_json::Value = serde_json::to_value(e).unwrap_or_default();
        redact_value(&mut value, &self.redactor);
        match serde_json::from_value::<Event>(value) {
            Ok(clean) => self.inner.event(&clean),
            // Never let an unredacted event through.
            Err(_) => self.inner.event(&Event::Message {
                text: MARK.to_string(),
            }),
        }
    }
}

fn redact_value(v: &mut serde_json::Value, r: &Redactor) {
    match v {
        serde_json::Value::String(s) => *s = r.redact(s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| redact_value(i, r)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|i| redact_value(i, r)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_longest_first_and_lines_of_multiline_secrets() {
        let r = Redactor::new(["hunter2-poison".to_string(), "hunter2".into(), "ab".into()]);
        assert_eq!(
            r.redact("pw=hunter2-poison or hunter2, ab"),
            "pw=<redacted> or <redacted>, ab"
        );
        let quoted = Redactor::new(["sup3r\"secret\\x".to_string()]);
        assert_eq!(quoted.redact("pw=sup3r\"secret\\x"), "pw=<redacted>");
        let r = Redactor::new([
            "-----BEGIN KEY-----\nc2VjcmV0LWtleS1ib2R5\n-----END KEY-----".to_string(),
        ]);
        assert_eq!(r.redact("tail: c2VjcmV0LWtleS1ib2R5"), "tail: <redacted>");
    }

    #[test]
    fn the_reporter_redacts_secrets_with_quotes_and_backslashes() {
        struct Collect(std::sync::Mutex<Vec<String>>);
        impl Reporter for Collect {
            fn event(&self, e: &Event) {
                if let Event::Message { text } = e {
                    self.0.lock().expect("lock").push(text.clone());
                }
            }
        }
        let seen = Arc::new(Collect(std::sync::Mutex::new(Vec::new())));
        let r = Redactor::new(["sup3r\"secret\\x".to_string()]).reporter(seen.clone());
        r.event(&Event::Message {
            text: "hook: pw=sup3r\"secret\\x".into(),
        });
        assert_eq!(*seen.0.lock().expect("lock"), ["hook: pw=<redacted>"]);
    }
}
