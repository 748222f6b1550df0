//! Trace context through the handler, against a real broker and an OTLP
//! receiver in the test: an input's `traceparent` becomes the parent of its
//! message's exported span, and its output and dead letter carry that span
//! as their parent; an input without a valid `traceparent` starts a trace of
//! its own and is handled as usual.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use sluice_tests::broker::Broker;
use sluice_tests::daemon::{Daemon, config_text, misbehave_route, module_route, parse};
use sluice_tests::kafka::{Record, Send, produce, read_until};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const LONG: Duration = Duration::from_secs(60);

/// The input's context: trace 4bf9..., span 00f0....
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// Another input's context, for the message that is dead-lettered.
const FAILING_PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A record for partition 0.
fn send<'a>(value: &'a [u8], headers: &'a [(&'a str, &'a [u8])]) -> Send<'a> {
    Send {
        partition: Some(0),
        key: None,
        value,
        headers,
    }
}

/// A `traceparent` split into its trace id, parent id and flags (hex).
fn fields(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(
        parts.len(),
        4,
        "a traceparent has four fields: {traceparent}"
    );
    assert_eq!(parts[0], "00", "version 00: {traceparent}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// An OTLP/HTTP receiver: each export request's spans go to the channel.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Span>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, tx.clone()));
        }
    });
    (endpoint, rx)
}

/// Serves the requests of one connection: HTTP/1.1 with a Content-Length
/// body, as the exporter sends them.
async fn serve(stream: TcpStream, spans: mpsc::UnboundedSender<Span>) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut length = 0;
        let mut request_line = String::new();
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if request_line.is_empty() {
                request_line = line.to_owned();
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("a Content-Length");
            }
        }
        assert!(
            request_line.starts_with("POST /v1/traces "),
            "{request_line}"
        );
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.expect("the body");
        let request = ExportTraceServiceRequest::decode(&body[..]).expect("an export request");
        for span in request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
        {
            let _ = spans.send(span);
        }
        let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n\
                     content-length: 0\r\n\r\n";
        if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A span's attributes, as text.
fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// The record whose value is `value`.
fn find<'a>(records: &'a [Record], value: &str) -> &'a Record {
    records
        .iter()
        .find(|r| r.text() == value)
        .unwrap_or_else(|| panic!("no record {value:?} in {records:?}"))
}

/// The span a record's `traceparent` names as its parent, checked to be in
/// the same trace.
fn parent_span<'a>(spans: &'a [Span], record: &Record) -> &'a Span {
    let traceparent = record.header("traceparent").expect("a traceparent header");
    let (trace_id, parent_id, flags) = fields(&traceparent);
    assert_eq!(flags, "01", "sampled");
    let span = spans
        .iter()
        .find(|s| hex::encode(&s.span_id) == parent_id)
        .unwrap_or_else(|| panic!("no exported span {parent_id} for {traceparent}"));
    assert_eq!(hex::encode(&span.trace_id), trace_id, "the same trace");
    span
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_and_dead_letters_are_children_of_their_messages_exported_spans() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for topic in [
        "traced",
        "traced.out",
        "failing",
        "failing.out",
        "traced.dlq",
    ] {
        broker.create_topic(topic, 1);
    }
    let (endpoint, mut exported) = receiver().await;
    produce(
        &bootstrap,
        "traced",
        [
            send(
                b"with parent",
                &[
                    ("traceparent", PARENT.as_bytes()),
                    ("tracestate", b"vendor=a1,other=b2"),
                    ("correlation_id", b"corr-1"),
                ],
            ),
            send(b"without", &[]),
            send(
                b"malformed",
                &[("traceparent", b"00-not-a-trace\xff\x00-01")],
            ),
        ],
    )
    .await;
    produce(
        &bootstrap,
        "failing",
        [send(
            b"permanent",
            &[("traceparent", FAILING_PARENT.as_bytes())],
        )],
    )
    .await;

    // `uppercase` returns the input's headers with its output, the parent's
    // traceparent among them: Sluice puts the child in its place.
    let routes = format!(
        "{}{}\n[telemetry]\notlp_endpoint = \"{endpoint}\"\n",
        module_route("uppercase", "traced", "traced.out", ""),
        misbehave_route("failing", "failing.out", ""),
    );
    let kafka = "dead_letter_topic = \"traced.dlq\"";
    let config = parse(&config_text(&bootstrap, "traced", kafka, &routes));
    let daemon = Daemon::start(config);

    let outputs = read_until(&bootstrap, "traced.out", 1, LONG, |r| r.len() >= 3);
    let letters = read_until(&bootstrap, "traced.dlq", 1, LONG, |r| !r.is_empty());
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    // Stopping exports the spans still batched.
    daemon.stop().await;
    let mut spans: Vec<Span> = Vec::new();
    while spans.len() < 4 {
        let span = tokio::time::timeout(LONG, exported.recv())
            .await
            .expect("every message's span is exported")
            .expect("the receiver runs");
        spans.push(span);
    }

    // The output of the message with a parent: the child of its span, which
    // is the child of the input's.
    let (parent_trace, parent_span_id, _) = fields(PARENT);
    let output = find(&outputs, "WITH PARENT");
    let span = parent_span(&spans, output);
    assert_eq!(hex::encode(&span.trace_id), parent_trace);
    assert_eq!(hex::encode(&span.parent_span_id), parent_span_id);
    assert_eq!(
        output.header("tracestate").as_deref(),
        Some("vendor=a1,other=b2")
    );
    assert_eq!(output.header("correlation_id").as_deref(), Some("corr-1"));
    let traceparents = output.headers.iter().filter(|(k, _)| k == "traceparent");
    assert_eq!(
        traceparents.count(),
        1,
        "the parent's traceparent is replaced"
    );
    assert_eq!(span.kind, SpanKind::Consumer as i32);
    assert_eq!(span.name, "process traced");
    let attrs = attributes(span);
    for (key, value) in [
        ("messaging.system", "kafka"),
        ("messaging.destination.name", "traced"),
        ("messaging.kafka.destination.partition", "0"),
        ("messaging.kafka.message.offset", "0"),
        ("messaging.consumer.group.name", "test.traced"),
        ("sluice.module", "uppercase"),
        ("sluice.correlation_id", "corr-1"),
        ("sluice.outcome", "ok"),
        ("sluice.attempts", "1"),
    ] {
        assert_eq!(
            attrs.get(key).map(String::as_str),
            Some(value),
            "{key}: {attrs:?}"
        );
    }

    // Without a traceparent, or with a malformed one: handled, in a trace
    // of its own with no parent.
    for (value, offset) in [("WITHOUT", "1"), ("MALFORMED", "2")] {
        let output = find(&outputs, value);
        let span = parent_span(&spans, output);
        assert!(span.parent_span_id.is_empty(), "{value}: a root span");
        assert_ne!(hex::encode(&span.trace_id), parent_trace);
        assert_eq!(attributes(span)["messaging.kafka.message.offset"], offset);
        assert_eq!(attributes(span)["sluice.outcome"], "ok");
    }

    // The dead letter: the child of the failed message's span.
    let (failing_trace, failing_span_id, _) = fields(FAILING_PARENT);
    let span = parent_span(&spans, &letters[0]);
    assert_eq!(hex::encode(&span.trace_id), failing_trace);
    assert_eq!(hex::encode(&span.parent_span_id), failing_span_id);
    let attrs = attributes(span);
    assert_eq!(attrs["sluice.outcome"], "dead_lettered");
    assert_eq!(attrs["sluice.module"], "misbehave");
    assert_eq!(attrs["messaging.destination.name"], "failing");
    assert_eq!(
        letters[0].header("error_type").as_deref(),
        Some("HandlerError")
    );
}
