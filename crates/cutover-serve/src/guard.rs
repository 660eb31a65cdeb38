//! Connections a client cannot hoard: at most [`MAX_CONNECTIONS`] at once
//! (beyond, new ones wait in the kernel's backlog), and each is closed
//! after [`IDLE`] without a byte either way (a request that never
//! finishes, a handshake left half done). A live feed stays open: it
//! sends a keep-alive well within that.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

pub const MAX_CONNECTIONS: usize = 1024;
pub const IDLE: Duration = Duration::from_secs(60);

/// A connection with its idle deadline and its place among the allowed.
pub struct Guarded<T> {
    inner: T,
    idle: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl<T> Guarded<T> {
    pub fn new(inner: T, permit: OwnedSemaphorePermit) -> Guarded<T> {
        Guarded {
            inner,
            idle: Box::pin(tokio::time::sleep(IDLE)),
            _permit: permit,
        }
    }

    fn active(&mut self) {
        self.idle.as_mut().reset(Instant::now() + IDLE);
    }

    /// Pending work: an error once the connection has been idle too long.
    fn idle_check(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.idle
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| io::Error::new(io::ErrorKind::TimedOut, "idle connection closed"))
    }
}

use std::future::Future;

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.idle_check(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.active();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match self.idle_check(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Plain HTTP connections, guarded.
pub struct Capped {
    tcp: TcpListener,
    slots: Arc<Semaphore>,
}

impl Capped {
    pub fn new(tcp: TcpListener) -> Capped {
        Capped {
            tcp,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

/// A permit for one more connection, waiting while all are taken.
pub async fn slot(slots: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    loop {
        if let Ok(p) = slots.clone().acquire_owned().await {
            return p;
        }
        // The semaphore is never closed; should it be, try again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl axum::serve::Listener for Capped {
    type Io = Guarded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = slot(&self.slots).await;
        loop {
            match self.tcp.accept().await {
                Ok((stream, peer)) => return (Guarded::new(stream, permit), peer),
                // Out of descriptors, say: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
