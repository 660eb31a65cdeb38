//! End-to-end tests: the real `cutover` binary against real sshd workers on
//! loopback addresses, real rsync, and real project directories.

mod pgserver;
mod support;

mod browser;
mod channel;
mod check;
mod crash;
mod deploy;
mod firstrun;
mod keys;
mod lifecycle;
mod operators;
mod plan;
mod release;
mod s3;
mod safety;
mod secrets;
mod serve;
mod signals;
mod snapshots;
mod tamper;
mod team;
mod truth;
