//! The project model and planner: files in, a validated model and a plan out.
//!
//! This crate does no I/O beyond reading the project directory. It never
//! talks to a worker, a state store or the environment; callers pass in
//! what the planner needs to know about the world.

pub mod classify;
pub mod config;
pub mod diag;
pub mod duration;
pub mod plan;
pub mod playbook;
pub mod project;
pub mod schema;
pub mod tree;
pub mod view;

pub use config::*;
pub use diag::{Diagnostic, Diagnostics};
pub use plan::{Action, Plan};
pub use project::{LoadOptions, Project};
