//! Release channels: each published job's signed index points `stable`
//! (and `canary`) at published versions; canary, promote and rollback
//! update the index and roll the version out with the deploy pipeline.

pub mod artifact;
pub mod index;
pub mod ops;
pub mod status;

pub use ops::{run, ChannelOp, ChannelOptions, ChannelReport};
