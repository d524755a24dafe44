//! A bounded number of open connections: past `max_connections`, a new connection is answered
//! `503` with `Retry-After` and closed, so idle or slow clients cannot hold Prism's sockets,
//! tasks and buffers without bound.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A [`TcpListener`] that serves at most `max` connections at once.
pub struct BoundedListener {
    inner: TcpListener,
    places: Arc<Semaphore>,
    /// Refusals being answered at once; past them a connection is closed without an answer.
    refusals: Arc<Semaphore>,
    max: usize,
    idle: Duration,
}

impl BoundedListener {
    /// At most `max` connections; one that sends nothing for `idle` is closed (so silent
    /// sockets cannot hold every place).
    pub fn new(inner: TcpListener, max: usize, idle: Duration) -> Self {
        BoundedListener {
            inner,
            places: Arc::new(Semaphore::new(max)),
            refusals: Arc::new(Semaphore::new(64)),
            max,
            idle,
        }
    }
}

/// An accepted connection holding its place until it closes, or until it has been idle (no
/// byte read or written) for its idle time.
pub struct Counted {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Counted {
    fn active(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = Counted;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Counted, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            match self.places.clone().try_acquire_owned() {
                Ok(place) => {
                    let deadline = Box::pin(tokio::time::sleep(self.idle));
                    return (
                        Counted {
                            stream,
                            _place: place,
                            idle: self.idle,
                            deadline,
                        },
                        addr,
                    );
                }
                Err(_) => {
                    tracing::warn!(%addr, max = self.max, "refused a connection: too many open (max_connections)");
                    // A bounded number answered at once; past that, closed at once.
                    if let Ok(turn) = self.refusals.clone().try_acquire_owned() {
                        let max = self.max;
                        tokio::spawn(async move {
                            refuse(stream, max).await;
                            drop(turn);
                        });
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Answers 503 to a connection over the limit (after reading what its request sent, so the
/// close does not reset the answer away), then closes it. A second at most.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!(
        "{{\"error\":\"Prism has {max} connections open, its limit (max_connections): try again later\"}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut request = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut request)).await;
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection was idle too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
