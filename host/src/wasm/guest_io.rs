//! What a guest may say: its stdout and stderr (captured, capped, then logged)
//! and its calls to the host `log` import (rate-limited per module).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::Level;

/// A guest's stdout or stderr: keeps up to `limit` bytes per invocation and
/// silently drops (and counts) the rest, so a chatty guest can neither fill
/// the host's memory nor fail because its output was refused.
#[derive(Clone)]
pub(crate) struct CappedOutput {
    inner: Arc<Capture>,
}

struct Capture {
    captured: Mutex<Captured>,
    /// Whether anything was written since the last take: checked after
    /// every message of a batch, so the usual answer (nothing) takes no lock.
    written: AtomicBool,
}

struct Captured {
    buf: Vec<u8>,
    limit: usize,
    dropped: usize,
}

impl CappedOutput {
    pub(crate) fn new(limit: usize) -> Self {
        CappedOutput {
            inner: Arc::new(Capture {
                captured: Mutex::new(Captured {
                    buf: Vec::new(),
                    limit,
                    dropped: 0,
                }),
                written: AtomicBool::new(false),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.inner
            .captured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn append(&self, bytes: &[u8]) {
        let mut c = self.lock();
        self.inner.written.store(true, Ordering::Release);
        let room = c.limit.saturating_sub(c.buf.len());
        let kept = room.min(bytes.len());
        c.buf.extend_from_slice(&bytes[..kept]);
        c.dropped += bytes.len() - kept;
    }

    /// Whether nothing was written (or dropped) since the last take.
    pub(crate) fn is_empty(&self) -> bool {
        !self.inner.written.load(Ordering::Acquire)
    }

    /// Takes what was captured since the last call, and how many bytes were
    /// dropped.
    pub(crate) fn take(&self) -> (Vec<u8>, usize) {
        let mut c = self.lock();
        self.inner.written.store(false, Ordering::Release);
        let dropped = std::mem::take(&mut c.dropped);
        (std::mem::take(&mut c.buf), dropped)
    }

    /// Logs what was captured, one event per line, attributed to `module`.
    pub(crate) fn drain_to_log(&self, module: &str, stream: &'static str) {
        let (buf, dropped) = self.take();
        if buf.is_empty() && dropped == 0 {
            return;
        }
        for line in String::from_utf8_lossy(&buf).lines() {
            tracing::info!(target: "sluice::guest", module, stream, "{line}");
        }
        if dropped > 0 {
            tracing::warn!(
                target: "sluice::guest",
                module,
                stream,
                dropped_bytes = dropped,
                "guest output over the per-message limit was dropped"
            );
        }
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The longest guest log message kept; longer ones are cut.
const MAX_LOG_MESSAGE: usize = 4096;

/// A token bucket shared by every instance of one plugin, so one chatty
/// module cannot flood the log: up to `BURST` lines at once, `PER_SECOND`
/// sustained. Suppressed lines are counted and reported with the next line
/// that gets through.
pub(crate) struct LogBudget {
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl LogBudget {
    const BURST: f64 = 200.0;
    const PER_SECOND: f64 = 100.0;

    pub(crate) fn new() -> Self {
        LogBudget {
            state: Mutex::new(Bucket {
                tokens: Self::BURST,
                last: Instant::now(),
                suppressed: 0,
            }),
        }
    }

    /// Takes one token; returns `None` when the line must be suppressed, or
    /// the number of lines suppressed since the last one that got through.
    fn admit(&self) -> Option<u64> {
        let mut b = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * Self::PER_SECOND;
        b.tokens = (b.tokens + refill).min(Self::BURST);
        b.last = now;
        if b.tokens < 1.0 {
            b.suppressed += 1;
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.suppressed))
    }

    /// Emits a guest's log line as a tracing event if the budget allows it.
    pub(crate) fn log(&self, module: &str, level: Level, message: &str) {
        let Some(suppressed) = self.admit() else {
            return;
        };
        if suppressed > 0 {
            tracing::warn!(
                target: "sluice::guest",
                module,
                suppressed,
                "guest log lines were suppressed by the rate limit"
            );
        }
        let message = truncate(message, MAX_LOG_MESSAGE);
        match level {
            Level::Trace => tracing::trace!(target: "sluice::guest", module, "{message}"),
            Level::Debug => tracing::debug!(target: "sluice::guest", module, "{message}"),
            Level::Info => tracing::info!(target: "sluice::guest", module, "{message}"),
            Level::Warn => tracing::warn!(target: "sluice::guest", module, "{message}"),
            Level::Error => tracing::error!(target: "sluice::guest", module, "{message}"),
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_beyond_the_limit_is_dropped_and_counted() {
        let out = CappedOutput::new(8);
        out.append(b"hello ");
        out.append(b"world");
        let (kept, dropped) = out.take();
        assert_eq!(kept, b"hello wo");
        assert_eq!(dropped, 3);
        assert_eq!(out.take(), (Vec::new(), 0), "take resets the capture");
    }

    #[test]
    fn log_budget_admits_a_burst_then_suppresses() {
        let budget = LogBudget::new();
        let admitted = (0..1000).filter(|_| budget.admit().is_some()).count();
        // The burst plus whatever trickled in while the loop ran.
        assert!((200..210).contains(&admitted), "admitted {admitted}");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
