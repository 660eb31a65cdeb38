//! The result document of every command: `outcome`, `exit_code` and what
//! the command reports, printed by `--json` and answered by the API.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::EngineError;

#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub outcome: String,
    pub exit_code: u8,
    #[serde(flatten)]
    pub body: Map<String, Value>,
}

impl Answer {
    pub fn new(outcome: impl Into<String>, exit_code: u8) -> Answer {
        Answer {
            outcome: outcome.into(),
            exit_code,
            body: Map::new(),
        }
    }

    /// `outcome: ok`, exit 0: a read that succeeded.
    pub fn ok() -> Answer {
        Answer::new("ok", 0)
    }

    /// Adds one field. A value that cannot be serialized (a bug) shows as
    /// null rather than losing the rest of the document.
    pub fn with(mut self, key: &str, value: impl Serialize) -> Answer {
        self.body.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    /// The document of a command that ended in an error.
    pub fn error(e: &EngineError) -> Answer {
        let rc = e.exit_code();
        let kind = match rc {
            2 => "invalid",
            3 => "locked",
            4 => "refused",
            _ => "error",
        };
        let mut a = Answer::new(kind, rc)
            .with("error", e.to_string())
            .with("help", e.help());
        match e {
            EngineError::Config(d) => {
                let diags: Vec<Value> =
                    d.0.iter()
                        .map(|d| {
                            serde_json::json!({
                                "file": d.file.display().to_string(),
                                "line": d.line, "column": d.column,
                                "message": d.message, "help": d.help,
                            })
                        })
                        .collect();
                a = a.with("diagnostics", diags);
            }
            EngineError::Locked(holder) => a = a.with("holder", holder),
            _ => {}
        }
        a
    }

    /// The HTTP status of this answer: the exit code, in HTTP's terms.
    pub fn http_status(&self) -> u16 {
        match self.exit_code {
            0 | 5 => 200,
            2 => 400,
            3 => 409,
            4 => 422,
            130 | 143 => 503,
            _ => 500,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_exit_codes() {
        let status = |rc| Answer::new("x", rc).http_status();
        assert_eq!(
            [0, 1, 2, 3, 4, 130].map(status),
            [200, 500, 400, 409, 422, 503]
        );
    }

    #[test]
    fn an_error_document_names_its_kind_and_help() {
        let e = EngineError::usage("no such job `x`", "see `cutover status`");
        let doc = Answer::error(&e).to_json();
        assert_eq!(doc["outcome"], "invalid");
        assert_eq!(doc["exit_code"], 2);
        assert_eq!(doc["error"], "no such job `x`");
        assert_eq!(doc["help"], "see `cutover status`");
    }
}
