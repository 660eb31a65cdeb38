//! The transport: the one place that builds remote command lines, talks to
//! workers over the system ssh (one multiplexed connection per worker for a
//! whole run) or runs locally, and moves trees: with rsync over ssh,
//! natively (`local`) on this machine.
//!
//! Nothing else in cutover spawns `ssh` or `rsync` or quotes for a shell.

mod command;
mod delta;
mod error;
mod host;
mod local;
mod rsync;

pub use command::{command_line, shell_quote, Command, Output};
pub use delta::{Expected, LocalTree};
pub use error::TransportError;
pub use host::{Delta, Fence, Host, HostSpec, Kept, KnownHosts, SshOptions, FENCED};
pub use rsync::{Drift, DriftKind};
