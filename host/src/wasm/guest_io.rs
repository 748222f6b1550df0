//! What a guest may say: its stdout and stderr (captured, capped, then logged)
//! and its calls to the host `log` import, both rate-limited per module; and
//! how any text from a guest (an error message, a panic message, a log line)
//! is made inert before it goes anywhere: cut to a bounded size, with the
//! cut marked, and control characters escaped, so it can neither fill the
//! host's memory nor forge a line of the log.

use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

    /// Logs what was captured, one event per line, attributed to `module`,
    /// as far as the module's `budget` allows.
    pub(crate) fn drain_to_log(&self, module: &str, stream: &'static str, budget: &LogBudget) {
        let (buf, dropped) = self.take();
        if buf.is_empty() && dropped == 0 {
            return;
        }
        log_lines(&buf, module, stream, budget);
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

/// Logs each line of what a guest wrote to `stream`, as far as the module's
/// `budget` allows.
pub(crate) fn log_lines(buf: &[u8], module: &str, stream: &'static str, budget: &LogBudget) {
    for line in String::from_utf8_lossy(buf).lines() {
        if budget.admit_line(module) {
            let line = inert_within(line, MAX_LOG_MESSAGE);
            tracing::info!(target: "sluice::guest", module, stream, "{line}");
        }
    }
}

/// The longest guest log message or output line kept; longer ones are cut.
pub const MAX_LOG_MESSAGE: usize = 4096;

/// The longest text from a guest kept anywhere else: an error or panic
/// message (in logs, `/health`, dead-letter envelopes), a topic name in a
/// reason. Longer text is cut and marked.
pub const MAX_GUEST_TEXT: usize = 1024;

/// [`inert_within`] [`MAX_GUEST_TEXT`].
pub(crate) fn inert(text: &str) -> String {
    inert_within(text, MAX_GUEST_TEXT)
}

/// A copy of guest `text` that is safe to log or keep: control characters
/// (a newline, a carriage return, an escape sequence) written as Rust
/// escapes (`\n`, `\u{1b}`), and, when longer than `max` bytes, cut there
/// with `… [cut from N bytes]` appended.
pub(crate) fn inert_within(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    for c in text.chars() {
        if out.len() >= max {
            let _ = write!(out, "… [cut from {} bytes]", text.len());
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A token bucket shared by every instance of one plugin, so one chatty
/// module cannot flood the log: up to `BURST` lines at once, `PER_SECOND`
/// sustained, its `log` calls and the lines of its stdout and stderr
/// together. Suppressed lines are counted, reported with the next line that
/// gets through, and added to a total for the metrics.
pub(crate) struct LogBudget {
    state: Mutex<Bucket>,
    /// Lines suppressed since the module was loaded.
    dropped: Arc<AtomicU64>,
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
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many lines the rate limit suppressed since the module was loaded.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The counter behind [`LogBudget::dropped`], shared.
    pub(crate) fn dropped_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dropped)
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
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.suppressed))
    }

    /// Takes a token for one line of `module`, reporting the lines
    /// suppressed before it; returns whether the line may be logged.
    fn admit_line(&self, module: &str) -> bool {
        let Some(suppressed) = self.admit() else {
            return false;
        };
        if suppressed > 0 {
            tracing::warn!(
                target: "sluice::guest",
                module,
                suppressed,
                "guest log lines were suppressed by the rate limit"
            );
        }
        true
    }

    /// Emits a guest's log line as a tracing event if the budget allows it.
    pub(crate) fn log(&self, module: &str, level: Level, message: &str) {
        if !self.admit_line(module) {
            return;
        }
        let message = inert_within(message, MAX_LOG_MESSAGE);
        match level {
            Level::Trace => tracing::trace!(target: "sluice::guest", module, "{message}"),
            Level::Debug => tracing::debug!(target: "sluice::guest", module, "{message}"),
            Level::Info => tracing::info!(target: "sluice::guest", module, "{message}"),
            Level::Warn => tracing::warn!(target: "sluice::guest", module, "{message}"),
            Level::Error => tracing::error!(target: "sluice::guest", module, "{message}"),
        }
    }
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
    fn guest_text_is_cut_on_a_character_boundary_and_marked() {
        assert_eq!(inert_within("héllo", 2), "hé… [cut from 6 bytes]");
        assert_eq!(inert_within("abc", 10), "abc");
        assert!(inert(&"x".repeat(5000)).ends_with("x… [cut from 5000 bytes]"));
        assert_eq!(
            inert(&"x".repeat(5000)).len(),
            MAX_GUEST_TEXT + "… [cut from 5000 bytes]".len()
        );
    }

    #[test]
    fn control_characters_cannot_forge_a_log_line() {
        assert_eq!(
            inert("done\nINFO sluice: forged\r\u{1b}[2J"),
            "done\\nINFO sluice: forged\\r\\u{1b}[2J"
        );
    }

    #[test]
    fn suppressed_lines_are_counted() {
        let budget = LogBudget::new();
        let admitted = (0..1000).filter(|_| budget.admit_line("m")).count() as u64;
        assert_eq!(budget.dropped(), 1000 - admitted);
    }
}
