//! A connection's clock: the I/O timeouts of one HTTP connection, aware of whether a request
//! is being worked on.
//!
//! A plain read timeout on the socket (what `tokio-io-timeout` gives) closes a connection
//! whose request takes longer than the timeout, because hyper keeps a read pending while the
//! handler runs (to notice a client that hangs up). So reads are timed only while the
//! connection is idle — no request in progress — and writes always: a write that makes no
//! progress means a client that does not read its answers (a pipelining client), which must
//! not hold a connection, its task and its buffers forever. A slow request body is bounded by
//! the handler, which reads it under the same timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests in progress on one connection; held by the service, read by the stream.
#[derive(Debug, Clone, Default)]
pub struct Busy(Arc<AtomicUsize>);

/// Marks a request in progress until dropped (also when the client goes away mid-request).
pub struct Working(Busy);

impl Busy {
    pub fn start(&self) -> Working {
        self.0.fetch_add(1, Ordering::SeqCst);
        Working(self.clone())
    }
    fn idle(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A stream whose idle reads and stalled writes time out after `timeout`.
pub struct Guarded<S> {
    inner: S,
    busy: Busy,
    timeout: Duration,
    read_timer: Pin<Box<Sleep>>,
    read_armed: bool,
    write_timer: Pin<Box<Sleep>>,
    write_armed: bool,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, busy: Busy, timeout: Duration) -> Self {
        Self {
            inner,
            busy,
            timeout,
            read_timer: Box::pin(tokio::time::sleep(timeout)),
            read_armed: false,
            write_timer: Box::pin(tokio::time::sleep(timeout)),
            write_armed: false,
        }
    }
}

/// Arms `timer` on the first pending poll and reports whether it has run out.
fn expired(timer: &mut Pin<Box<Sleep>>, armed: &mut bool, t: Duration, cx: &mut Context) -> bool {
    if !*armed {
        timer.as_mut().reset(Instant::now() + t);
        *armed = true;
    }
    timer.as_mut().poll(cx).is_ready()
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no {what} progress: closed"),
    )
}

impl<S> Guarded<S> {
    /// A write's outcome, or a time-out once writes have been stuck for the timeout.
    fn timed_write(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(r) => {
                self.write_armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let t = self.timeout;
                if expired(&mut self.write_timer, &mut self.write_armed, t, cx) {
                    Poll::Ready(Err(timed_out("write")))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read_armed = false;
                Poll::Ready(r)
            }
            Poll::Pending if !this.busy.idle() => {
                // A request is being worked on: waiting for the client is expected.
                this.read_armed = false;
                Poll::Pending
            }
            Poll::Pending => {
                let t = this.timeout;
                if expired(&mut this.read_timer, &mut this.read_armed, t, cx) {
                    Poll::Ready(Err(timed_out("read")))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.timed_write(r, cx)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.timed_write(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// An idle connection's read times out; one with a request in progress waits.
    #[test]
    fn reads_time_out_only_while_idle() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, _b) = tokio::io::duplex(64);
            let busy = Busy::default();
            let mut g = Guarded::new(a, busy.clone(), Duration::from_secs(5));
            let working = busy.start();
            let mut buf = [0u8; 1];
            // Paused time: the runtime jumps ahead whenever only timers are left.
            let r = tokio::time::timeout(Duration::from_secs(60), g.read(&mut buf)).await;
            assert!(r.is_err(), "a busy connection's read must not time out");
            drop(working);
            let e = g.read(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        });
    }
}
