//! The keys each project file may contain, checked on the spanned TOML tree
//! so that every unknown key is reported (serde stops at the first).

use crate::diag::{suggest, Diagnostic, SourceFile};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The shape of a TOML table: its known keys and, for sub-tables, their shape.
pub enum Shape {
    /// A scalar or an array of scalars: its type is checked by serde.
    Value,
    Table(&'static [(&'static str, Shape)]),
    /// An array of tables (`[[worker]]`), each of the given shape.
    Tables(&'static [(&'static str, Shape)]),
}

use Shape::{Table, Tables, Value};

pub const PROJECT: Shape = Table(&[
    ("name", Value),
    ("main_branch", Value),
    ("remote", Value),
    (
        "state",
        Table(&[("backend", Value), ("url", Value), ("lease", Value)]),
    ),
    (
        "ssh",
        Table(&[
            ("user", Value),
            ("port", Value),
            ("identity_file", Value),
            ("known_hosts", Value),
            ("known_hosts_file", Value),
            ("config_file", Value),
            ("max_parallel", Value),
            ("connect_timeout", Value),
            ("command_timeout", Value),
        ]),
    ),
    ("store", Table(&[("url", Value), ("worker_fetch", Value)])),
    (
        "serve",
        Table(&[("store_dir", Value), ("store_read_token", Value)]),
    ),
    ("templates", Table(&[("env", Value)])),
    (
        "trust",
        Table(&[
            ("public_keys", Value),
            ("threshold", Value),
            ("index_lifetime", Value),
        ]),
    ),
]);

pub const WORKERS: Shape = Table(&[(
    "worker",
    Tables(&[
        ("name", Value),
        ("host", Value),
        ("port", Value),
        ("user", Value),
        ("labels", Value),
        ("root", Value),
        ("transport", Value),
        ("disabled", Value),
    ]),
)]);

pub const JOB: Shape = Table(&[
    ("version", Value),
    ("selectors", Value),
    ("depends_on", Value),
    ("watch", Value),
    ("restart_policy", Value),
    ("restart_globs", Value),
    ("max_concurrent_starts", Value),
    ("max_concurrent_upgrades", Value),
    ("keep_releases", Value),
    ("on_failure", Value),
    (
        "health",
        Table(&[
            ("http", Value),
            ("expect_status", Value),
            ("tcp", Value),
            ("command", Value),
            ("timeout", Value),
            ("attempts", Value),
            ("interval", Value),
        ]),
    ),
    ("backup", Table(&[("command", Value), ("restore", Value)])),
    ("certs", Table(&[("names", Value), ("validity", Value)])),
    ("build", Table(&[("command", Value), ("output", Value)])),
    (
        "canary",
        Table(&[("selectors", Value), ("count", Value), ("soak", Value)]),
    ),
    (
        "hooks",
        Table(&[
            ("pre_deploy", Value),
            ("post_deploy", Value),
            ("after_allocation_started", Value),
            ("after_allocation_stopped", Value),
            ("job_control", Value),
        ]),
    ),
]);

/// Parses `src` and reports syntax errors and every key that `shape` does not know.
pub fn check(src: &SourceFile, shape: &Shape) -> Vec<Diagnostic> {
    let (doc, errors) = DeTable::parse_recoverable(&src.text);
    let mut out: Vec<Diagnostic> = errors
        .iter()
        .map(|e| src.diag(e.span().unwrap_or(0..0), e.message().trim().to_string()))
        .collect();
    if out.is_empty() {
        walk_table(src, doc.get_ref(), shape, "", &mut out);
    }
    out
}

fn walk_table(
    src: &SourceFile,
    table: &DeTable<'_>,
    shape: &Shape,
    prefix: &str,
    out: &mut Vec<Diagnostic>,
) {
    let (Table(fields) | Tables(fields)) = shape else {
        return;
    };
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        let Some((_, sub)) = fields.iter().find(|(k, _)| *k == name) else {
            let section = if prefix.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in [{prefix}]")
            };
            let mut d = src.diag(key.span(), format!("unknown key `{name}` {section}"));
            let known: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
            d = match suggest(name, known.iter().copied()) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help(format!("known keys here: {}", known.join(", "))),
            };
            out.push(d);
            continue;
        };
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        walk_value(src, value, sub, &path, out);
    }
}

fn walk_value(
    src: &SourceFile,
    value: &Spanned<DeValue<'_>>,
    shape: &Shape,
    path: &str,
    out: &mut Vec<Diagnostic>,
) {
    match (shape, value.get_ref()) {
        (Table(_), DeValue::Table(t)) => walk_table(src, t, shape, path, out),
        (Tables(_), DeValue::Array(items)) => {
            for item in items.iter() {
                if let DeValue::Table(t) = item.get_ref() {
                    walk_table(src, t, shape, path, out);
                }
            }
        }
        // Type mismatches are reported by the typed pass with a precise message.
        _ => {}
    }
}
