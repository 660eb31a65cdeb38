//! What a signal asks of a running command. The first SIGINT or SIGTERM
//! asks the engine to start nothing new and let the steps in flight
//! finish (or time out); the run then records itself as interrupted and
//! releases the lock. A second one aborts at once: the caller drops the
//! run (which removes its scratch dirs and frees the lock) and records it
//! through [`Interrupt::take_running`].

use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use cutover_state::Store;
use tokio::sync::Notify;

pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

#[derive(Default)]
pub struct Interrupt {
    /// The first signal received (0: none).
    signal: AtomicI32,
    /// How many signals were received.
    count: AtomicU8,
    aborted: Notify,
    /// Notified at the first signal.
    first: Notify,
    /// The deployment being run, to record if the run is aborted.
    running: Mutex<Option<(Arc<Store>, i64)>>,
    /// What each run in progress records if the process is aborted (its
    /// audit line, the end of its feed).
    on_abort: Mutex<Vec<(u64, OnAbort)>>,
    next: std::sync::atomic::AtomicU64,
}

type OnAbort = Box<dyn FnOnce(u8) + Send>;

/// Keeps a run's abort record registered; dropping it (the run ended)
/// takes the record back.
pub struct AbortGuard {
    interrupt: Arc<Interrupt>,
    id: u64,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if let Ok(mut all) = self.interrupt.on_abort.lock() {
            all.retain(|(id, _)| *id != self.id);
        }
    }
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Interrupt({:?})", self.signal())
    }
}

impl Interrupt {
    pub fn new() -> Arc<Interrupt> {
        Arc::new(Interrupt::default())
    }

    /// Records a signal; returns true for the first one.
    pub fn receive(&self, signal: i32) -> bool {
        let _ = self
            .signal
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            self.first.notify_waiters();
            self.first.notify_one();
        }
        if n >= 1 {
            self.aborted.notify_waiters();
            self.aborted.notify_one();
        }
        n == 0
    }

    /// The first signal, if one was received.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    pub fn is_set(&self) -> bool {
        self.signal().is_some()
    }

    /// The exit code SPEC section 11 gives an interrupted run.
    pub fn exit_code(&self) -> Option<u8> {
        self.signal().map(|s| 128 + s as u8)
    }

    /// Resolves at the first signal (for a command that only reads, such
    /// as `logs --follow`, which then simply ends).
    pub async fn signalled(&self) {
        let notified = self.first.notified();
        if self.is_set() {
            return;
        }
        notified.await;
    }

    /// Resolves when a second signal asks to abort at once.
    pub async fn aborted(&self) {
        if self.count.load(Ordering::SeqCst) >= 2 {
            return;
        }
        self.aborted.notified().await;
    }

    pub(crate) fn set_running(&self, store: Arc<Store>, seq: i64) {
        if let Ok(mut r) = self.running.lock() {
            *r = Some((store, seq));
        }
    }

    pub(crate) fn clear_running(&self) {
        if let Ok(mut r) = self.running.lock() {
            *r = None;
        }
    }

    /// The deployment an aborted run left open, to record as interrupted.
    pub fn take_running(&self) -> Option<(Arc<Store>, i64)> {
        self.running.lock().ok()?.take()
    }

    /// Registers what a run records if the process is aborted, for as long
    /// as the guard lives.
    pub fn on_abort(self: &Arc<Self>, record: OnAbort) -> AbortGuard {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut all) = self.on_abort.lock() {
            all.push((id, record));
        }
        AbortGuard {
            interrupt: self.clone(),
            id,
        }
    }

    /// The process is aborted (a second signal): every run in progress
    /// records itself, with the exit code `rc`.
    pub fn record_abort(&self, rc: u8) {
        let all = self
            .on_abort
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default();
        for (_, record) in all {
            record(rc);
        }
    }
}
