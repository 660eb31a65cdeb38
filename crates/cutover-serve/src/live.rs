//! The live feed: the project's `.cutover/events.jsonl`, tailed and sent
//! to every page and API client as server-sent events. A run in another
//! process (the CLI) shows as well as one the server started.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use cutover_engine::app::feed::{FeedLine, FeedTail};
use futures::Stream;
use tokio::sync::broadcast;

/// The lines kept for a page that opens mid-run.
const RECENT: usize = 300;
const POLL: Duration = Duration::from_millis(200);

pub struct Live {
    tx: broadcast::Sender<Arc<FeedLine>>,
    recent: Mutex<VecDeque<Arc<FeedLine>>>,
    /// Shared by the poller and by `recent()`, so that a page shows every
    /// line written before it was asked for, in order.
    tail: Mutex<FeedTail>,
}

impl Live {
    /// Starts tailing `workspace`'s feed (from its last lines); the tail
    /// stops when the `Live` is dropped.
    pub fn start(workspace: PathBuf) -> Arc<Live> {
        let (tx, _) = broadcast::channel(1024);
        let live = Arc::new(Live {
            tx,
            recent: Mutex::new(VecDeque::new()),
            // The page opens on the last lines written, then follows.
            tail: Mutex::new(FeedTail::from_last(&workspace, 64 << 10)),
        });
        let weak = Arc::downgrade(&live);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            loop {
                tick.tick().await;
                let Some(live) = weak.upgrade() else {
                    return;
                };
                tokio::task::block_in_place(|| live.catch_up());
            }
        });
        live
    }

    /// Reads what the feed gained since the last look and sends it on.
    fn catch_up(&self) {
        let Ok(mut tail) = self.tail.lock() else {
            return;
        };
        for l in tail.poll() {
            self.push(Arc::new(l));
        }
    }

    fn push(&self, line: Arc<FeedLine>) {
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(line.clone());
        }
        let _ = self.tx.send(line);
    }

    /// The last lines of the feed, up to the moment of asking.
    pub fn recent(&self) -> Vec<Arc<FeedLine>> {
        self.catch_up();
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The SSE stream: each feed line as one `feed` event (JSON), from
    /// now on, for as long as `alive` says (a UI session that signed out
    /// ends its stream within a few seconds).
    pub fn sse(
        &self,
        alive: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
        let rx = self.tx.subscribe();
        let alive = Arc::new(alive);
        let stream = futures::stream::unfold(rx, move |mut rx| {
            let alive = alive.clone();
            async move {
                loop {
                    if !alive() {
                        return None;
                    }
                    let got = tokio::select! {
                        got = rx.recv() => got,
                        () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    };
                    if !alive() {
                        return None;
                    }
                    let event = match got {
                        Ok(line) => SseEvent::default()
                            .event("feed")
                            .data(feed_json(&line).to_string()),
                        // A slow client misses lines; it is told, and goes on.
                        Err(broadcast::error::RecvError::Lagged(n)) => SseEvent::default()
                            .event("lagged")
                            .data(format!("{{\"lagged\":{n}}}")),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    return Some((Ok(event), rx));
                }
            }
        });
        Sse::new(stream).keep_alive(KeepAlive::default())
    }
}

/// The longest feed line shown; a longer one (a hook that printed a
/// megabyte) is cut, saying so.
const MAX_LINE: usize = 2000;

/// One feed line as the CLI's plain progress would print it.
pub fn line_text(l: &FeedLine) -> String {
    let text = full_text(l);
    match text.char_indices().nth(MAX_LINE) {
        Some((at, _)) => format!("{}… (cut)", &text[..at]),
        None => text,
    }
}

fn full_text(l: &FeedLine) -> String {
    use cutover_engine::app::feed::FeedKind;
    match &l.kind {
        FeedKind::Started => format!("{} started: {}", l.actor, l.command),
        FeedKind::Finished { outcome, exit_code } => {
            format!("{}: {outcome} (exit {exit_code})", l.command)
        }
        FeedKind::Event { event } => {
            // The CLI's own prefix: `[deploy]`, `[channel]`, ...
            let prefix = l.command.split_whitespace().nth(1).unwrap_or("cutover");
            event.line(prefix, true).unwrap_or_default()
        }
    }
}

/// A feed line as the API and the page's script get it: the line's fields
/// and its `text`, as the CLI would print it.
pub fn feed_json(l: &FeedLine) -> serde_json::Value {
    let mut v = serde_json::to_value(l).unwrap_or_default();
    v["text"] = line_text(l).into();
    v
}
