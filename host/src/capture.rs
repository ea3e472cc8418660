//! Bounded capture of a tool's stdout and stderr.
//!
//! A tool may print as much as it likes; the host keeps the first
//! `max_log` bytes of each stream and counts the rest, so a flood costs the
//! host nothing and the tool does not crash because its output was cut.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// One captured stream.
#[derive(Clone)]
pub(crate) struct Capture {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
    capacity: usize,
}

impl Capture {
    pub(crate) fn new(capacity: u64) -> Self {
        Capture {
            inner: Arc::new(Mutex::new(Captured {
                kept: Vec::new(),
                dropped: 0,
                capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
            })),
        }
    }

    /// The kept bytes (as text, invalid UTF-8 replaced) and the number of
    /// bytes dropped past the limit.
    pub(crate) fn take(&self) -> (String, u64) {
        match self.inner.lock() {
            Ok(mut c) => {
                let kept = std::mem::take(&mut c.kept);
                (String::from_utf8_lossy(&kept).into_owned(), c.dropped)
            }
            Err(_) => (String::new(), 0),
        }
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Ok(mut c) = self.inner.lock() {
            let room = c.capacity.saturating_sub(c.kept.len());
            let keep = room.min(buf.len());
            c.kept.extend_from_slice(&buf[..keep]);
            c.dropped += (buf.len() - keep) as u64;
        }
        // Everything is accepted: what does not fit is counted, not refused.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
