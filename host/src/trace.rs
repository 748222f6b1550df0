//! Trace context: the W3C `traceparent` and `tracestate` headers of an
//! input, the child context its outputs and dead letter carry, and the
//! message's span, exported over OTLP when `telemetry.otlp_endpoint` is set.
//!
//! Owns parsing and formatting of the trace headers and the OpenTelemetry
//! exporter. It is handed header values and span attributes and hands back
//! header values: it must not reach into the pipeline, the broker or the
//! handler.

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};

/// The header that carries a message's trace context.
pub const TRACEPARENT: &str = "traceparent";
/// The header that carries vendors' trace state beside it.
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` passed on (the W3C limit of 32 entries fits
/// well within it); a longer one is left out.
pub const MAX_TRACESTATE: usize = 512;

/// Room the two trace headers can take in a record, framing included: a
/// dead letter is cut to leave it.
pub const HEADER_ROOM: usize = TRACEPARENT.len() + 55 + TRACESTATE.len() + MAX_TRACESTATE + 16;

/// A span context read from a `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// Reads a `traceparent` value as the W3C Trace Context specification
/// asks: lower-case hex, version `ff` refused, version 00 exactly 55 bytes,
/// a later version at least 55 with a `-` after the known fields, trace and
/// parent ids not all zeros. Anything else, whatever its bytes or length,
/// is `None`.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    if value.len() < 55 {
        return None;
    }
    let version = hex::<1>(&value[0..2])?[0];
    let exact = match version {
        0xff => return None,
        0 => value.len() == 55,
        _ => value.len() == 55 || value[55] == b'-',
    };
    if !exact || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex::<16>(&value[3..35])?;
    let span_id = hex::<8>(&value[36..52])?;
    let flags = hex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        flags,
    })
}

/// `N` bytes from `2 * N` lower-case hex digits.
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// A version 00 `traceparent` value.
pub fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    for b in trace_id {
        let _ = write!(out, "{b:02x}");
    }
    out.push('-');
    for b in span_id {
        let _ = write!(out, "{b:02x}");
    }
    let _ = write!(out, "-{flags:02x}");
    out
}

/// A `tracestate` value worth passing on: printable ASCII, within
/// [`MAX_TRACESTATE`] bytes.
pub(crate) fn usable_tracestate(value: &[u8]) -> Option<&str> {
    let printable = value.iter().all(|&b| (0x20..0x7f).contains(&b));
    (printable && value.len() <= MAX_TRACESTATE)
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Where a message came from, for its span's attributes.
pub struct Site<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub module: &'a str,
    pub correlation_id: &'a str,
}

/// A message's trace context: the child its outputs and dead letter
/// carry, and its span when spans are exported.
pub struct MessageTrace {
    /// The `traceparent` of what the message produces: the message's own
    /// span as parent.
    pub traceparent: String,
    /// The input's `tracestate`, passed on.
    pub tracestate: Option<String>,
    span: Option<MessageSpan>,
}

impl MessageTrace {
    /// The trace context of a message with these headers. With a valid
    /// `traceparent` the message's span is its child; without one, a new
    /// trace starts when spans are exported (`tracer`), and the message
    /// carries none otherwise. A malformed header is ignored, said at debug
    /// level.
    pub fn of<'h>(
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
        tracer: Option<&Tracer>,
        site: &Site<'_>,
    ) -> Option<Box<MessageTrace>> {
        let (mut traceparent, mut tracestate) = (None, None);
        for (key, value) in headers {
            if key == TRACEPARENT {
                traceparent = Some(value);
            } else if key == TRACESTATE {
                tracestate = Some(value);
            }
        }
        if traceparent.is_none() && tracer.is_none() {
            return None;
        }
        let ignored = |value: &[u8], why: &str| {
            tracing::debug!(
                topic = site.topic,
                partition = site.partition,
                offset = site.offset,
                bytes = value.len(),
                "{why}"
            );
        };
        let parent = traceparent.and_then(|value| {
            let parent = parse_traceparent(value);
            if parent.is_none() {
                ignored(
                    value,
                    "ignoring a malformed traceparent header: the message starts a new trace",
                );
            }
            parent
        });
        let tracestate = parent.and(tracestate).and_then(|value| {
            let usable = usable_tracestate(value);
            if usable.is_none() {
                ignored(
                    value,
                    &format!(
                        "not passing on a tracestate header that is not printable ASCII of at \
                         most {MAX_TRACESTATE} bytes"
                    ),
                );
            }
            usable.map(str::to_owned)
        });
        let (trace_id, flags) = match (parent, tracer) {
            (Some(p), _) => (p.trace_id, p.flags),
            (None, Some(_)) => (new_id::<16>(), 0x01),
            (None, None) => return None,
        };
        let span_id = new_id::<8>();
        let span = tracer.map(|t| t.message_span(parent, trace_id, span_id, site));
        Some(Box::new(MessageTrace {
            traceparent: format_traceparent(&trace_id, &span_id, flags),
            tracestate,
            span,
        }))
    }

    /// Records what became of the message so far and how many calls it had;
    /// the last one recorded goes out with the span.
    pub fn outcome(&self, outcome: SpanOutcome, attempts: u32) {
        if let Some(span) = &self.span {
            span.outcome.store(outcome as u8, Ordering::Relaxed);
            span.attempts.store(attempts, Ordering::Relaxed);
        }
    }
}

/// An id that is not all zeros. Trace and span ids need uniqueness, not
/// unpredictability.
fn new_id<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0; N];
        fastrand::fill(&mut id);
        if id != [0; N] {
            return id;
        }
    }
}

/// What became of a message, the `sluice.outcome` attribute of its span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SpanOutcome {
    /// Its span ended before anything was decided (a revocation or
    /// shutdown: it is delivered again).
    Unfinished,
    /// Handled on its first call; its outputs were produced.
    Ok,
    /// Handled after one or more retries.
    Retried,
    /// Dead-lettered.
    DeadLettered,
    /// Its partition stopped on it.
    Stopped,
    /// Held by an open handler breaker.
    Held,
}

impl SpanOutcome {
    /// Every outcome, in the order of their encoding.
    const ALL: [SpanOutcome; 6] = [
        SpanOutcome::Unfinished,
        SpanOutcome::Ok,
        SpanOutcome::Retried,
        SpanOutcome::DeadLettered,
        SpanOutcome::Stopped,
        SpanOutcome::Held,
    ];

    fn from_u8(n: u8) -> SpanOutcome {
        Self::ALL
            .get(usize::from(n))
            .copied()
            .unwrap_or(SpanOutcome::Unfinished)
    }

    /// The attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanOutcome::Unfinished => "unfinished",
            SpanOutcome::Ok => "ok",
            SpanOutcome::Retried => "retried",
            SpanOutcome::DeadLettered => "dead_lettered",
            SpanOutcome::Stopped => "stopped",
            SpanOutcome::Held => "held",
        }
    }
}

/// A message's span, from its fetch until it is dropped (its offset stored,
/// or the partition revoked), when it ends with its outcome.
struct MessageSpan {
    span: opentelemetry_sdk::trace::Span,
    outcome: AtomicU8,
    attempts: AtomicU32,
}

impl Drop for MessageSpan {
    fn drop(&mut self) {
        let outcome = SpanOutcome::from_u8(self.outcome.load(Ordering::Relaxed));
        let attempts = self.attempts.load(Ordering::Relaxed);
        self.span
            .set_attribute(KeyValue::new("sluice.outcome", outcome.as_str()));
        self.span
            .set_attribute(KeyValue::new("sluice.attempts", i64::from(attempts)));
        self.span.end();
    }
}

/// Exports message spans over OTLP (HTTP, protobuf) in batches, from a
/// thread of its own.
pub struct Tracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// The consumer group, an attribute of every span.
    group: String,
}

impl Tracer {
    /// An exporter to `endpoint`, the full URL of the collector's traces
    /// resource (`http://collector:4318/v1/traces`).
    pub fn new(endpoint: &str, group: String) -> Result<Tracer, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot export spans to {endpoint}: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", "sluice")])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("sluice");
        Ok(Tracer {
            provider,
            tracer,
            group,
        })
    }

    /// Exports the spans that ended and stops exporting.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("exporting the last spans failed: {e}");
        }
    }

    fn message_span(
        &self,
        parent: Option<Parent>,
        trace_id: [u8; 16],
        span_id: [u8; 8],
        site: &Site<'_>,
    ) -> MessageSpan {
        let cx = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(p.trace_id),
                SpanId::from_bytes(p.span_id),
                TraceFlags::new(p.flags),
                true,
                TraceState::NONE,
            )),
            None => Context::new(),
        };
        let mut builder = self
            .tracer
            .span_builder(format!("process {}", site.topic))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", site.topic.to_owned()),
                KeyValue::new(
                    "messaging.kafka.destination.partition",
                    i64::from(site.partition),
                ),
                KeyValue::new("messaging.kafka.message.offset", site.offset),
                KeyValue::new("messaging.consumer.group.name", self.group.clone()),
                KeyValue::new("sluice.module", site.module.to_owned()),
                KeyValue::new("sluice.correlation_id", site.correlation_id.to_owned()),
            ]);
        builder.trace_id = Some(TraceId::from_bytes(trace_id));
        builder.span_id = Some(SpanId::from_bytes(span_id));
        MessageSpan {
            span: self.tracer.build_with_context(builder, &cx),
            outcome: AtomicU8::new(SpanOutcome::Unfinished as u8),
            attempts: AtomicU32::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn site() -> Site<'static> {
        Site {
            topic: "orders",
            partition: 2,
            offset: 7,
            module: "uppercase",
            correlation_id: "c-1",
        }
    }

    #[test]
    fn a_valid_traceparent_round_trips() {
        let parent = parse_traceparent(VALID.as_bytes()).expect("valid");
        assert_eq!(parent.flags, 1);
        assert_eq!(
            parent.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(
            format_traceparent(&parent.trace_id, &parent.span_id, parent.flags),
            VALID
        );
    }

    #[test]
    fn a_later_version_is_read_by_its_known_fields() {
        let longer = VALID.replacen("00", "01", 1) + "-what-comes-next";
        let parent = parse_traceparent(longer.as_bytes()).expect("a later version");
        assert_eq!(
            format_traceparent(&parent.trace_id, &parent.span_id, parent.flags),
            VALID
        );
        // Version 00 is exactly 55 bytes; a later one continues with '-'.
        assert_eq!(parse_traceparent(format!("{VALID}-x").as_bytes()), None);
        let glued = VALID.replacen("00", "01", 1) + "x";
        assert_eq!(parse_traceparent(glued.as_bytes()), None);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"00".to_vec(),
            VALID[..54].into(),
            VALID.to_uppercase().into(),
            VALID.replacen("00", "ff", 1).into(),
            VALID.replacen("00", "0g", 1).into(),
            VALID.replace('-', "_").into(),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1z".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01".into(),
            " 0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            // Multi-byte characters where hex digits belong.
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01".into(),
            vec![0xff; 55],
            vec![0; 4096],
        ];
        for case in cases {
            assert_eq!(
                parse_traceparent(&case),
                None,
                "{:?}",
                String::from_utf8_lossy(&case)
            );
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(25);
        for _ in 0..20_000 {
            let len = rng.usize(0..120);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            // Half of them shaped like a traceparent, to reach the later checks.
            if rng.bool() && len >= 55 {
                bytes[2] = b'-';
                bytes[35] = b'-';
                bytes[52] = b'-';
            }
            let _ = parse_traceparent(&bytes);
            let headers = [(TRACEPARENT, &bytes[..]), (TRACESTATE, &bytes[..])];
            let _ = MessageTrace::of(headers.into_iter(), None, &site());
        }
    }

    #[test]
    fn outputs_carry_a_child_of_the_input_and_its_tracestate() {
        let headers = [
            ("correlation_id", &b"c-1"[..]),
            (TRACESTATE, &b"vendor=abc,other=1"[..]),
            (TRACEPARENT, VALID.as_bytes()),
        ];
        let trace = MessageTrace::of(headers.into_iter(), None, &site()).expect("a context");
        let child = parse_traceparent(trace.traceparent.as_bytes()).expect("valid child");
        let parent = parse_traceparent(VALID.as_bytes()).expect("valid");
        assert_eq!(child.trace_id, parent.trace_id, "the same trace");
        assert_ne!(child.span_id, parent.span_id, "a span of its own");
        assert_eq!(child.flags, parent.flags, "the sampling decision is kept");
        assert_eq!(trace.tracestate.as_deref(), Some("vendor=abc,other=1"));
    }

    #[test]
    fn without_tracing_an_input_without_a_valid_traceparent_carries_none() {
        let none: [(&str, &[u8]); 0] = [];
        assert!(MessageTrace::of(none.into_iter(), None, &site()).is_none());
        let bad = [
            (TRACEPARENT, &b"00-nonsense"[..]),
            (TRACESTATE, &b"a=b"[..]),
        ];
        assert!(MessageTrace::of(bad.into_iter(), None, &site()).is_none());
    }

    #[test]
    fn a_tracestate_is_passed_on_only_when_printable_and_short() {
        let long = "a=".to_owned() + &"b".repeat(MAX_TRACESTATE);
        for state in [&b"a=\x01"[..], "a=é".as_bytes(), long.as_bytes()] {
            let headers = [(TRACEPARENT, VALID.as_bytes()), (TRACESTATE, state)];
            let trace = MessageTrace::of(headers.into_iter(), None, &site()).expect("a context");
            assert_eq!(trace.tracestate, None);
            assert!(parse_traceparent(trace.traceparent.as_bytes()).is_some());
        }
    }

    #[test]
    fn outcomes_survive_their_encoding() {
        for outcome in SpanOutcome::ALL {
            assert_eq!(SpanOutcome::from_u8(outcome as u8), outcome);
        }
        assert_eq!(SpanOutcome::from_u8(200), SpanOutcome::Unfinished);
    }
}
