//! The engine: everything cutover does to the world. A fleet deploy
//! ([`deploy`]), reconcile, drift, ad-hoc lifecycle targets, the KV store,
//! the audit log. Later: ticket-release phases and channel promotions, which
//! are fleet deploys with more around them.
//!
//! The engine takes a loaded [`cutover_model::Project`], a state store and a
//! [`Reporter`]; it never parses command lines or reads the environment.

pub mod app;
pub mod audit;
pub mod certs;
mod context;
pub mod deploy;
pub mod doctor;
pub mod drift;
mod error;
mod events;
mod fleet;
mod health;
mod hooks;
pub use cutover_index as index;
pub mod channel;
pub mod interrupt;
pub mod jobrun;
mod join;
pub mod keys;
pub mod kv;
pub mod logs;
pub mod publish;
pub mod rebuild;
pub mod redact;
pub mod release;
pub mod relstore;
mod remote;
mod render;
mod scratch;
pub mod secrets;
pub mod status;

pub use context::{Context, Operator};
pub use error::EngineError;
pub use events::{Event, Quiet, Reporter};
