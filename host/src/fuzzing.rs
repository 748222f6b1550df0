//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each
//! runs one parser on input Sluice does not control and asserts what must
//! hold whatever the input, so that a wrong answer is a crash the fuzzer
//! keeps, as a panic is. Not part of the daemon's interface.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crate::config::{Config, ConfigError};
use crate::kafka::headers::{self, RawHeader};
use crate::pipeline::dlq::{DeadLetter, ErrorType};
use crate::replay::Envelope;
use crate::status::Status;
use crate::wasm::packed::{self, Decoded, NoOutputs};
use crate::wasm::{HandlerError, Message, Output, OutputLimits, Runtime, RuntimeConfig};

/// The line that ends the `KAFKA_*` variables of a [`config`] input.
pub const ENV_END: &str = "%%\n";

/// Parses and validates a configuration: `input` is `NAME=value` lines
/// (the process environment), then [`ENV_END`], then the TOML file; without
/// [`ENV_END`] all of it is the file. A refusal must name what to fix; an
/// accepted configuration must give every derived setting without a panic.
pub fn config(input: &str) {
    let (vars, text) = input.split_once(ENV_END).unwrap_or(("", input));
    let vars: Vec<(&str, &str)> = vars.lines().filter_map(|l| l.split_once('=')).collect();
    let env = |name: &str| {
        vars.iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    };
    match Config::parse(text, &config_dir(), &env) {
        Ok(config) => derived(&config),
        Err(error) => refusal(&error),
    }
}

/// The directory a fuzzed config file is in: its default plugins directory
/// (`plugins/`) and `../plugins` hold the modules the kept corpus routes
/// to, so that validation goes past the routes' modules.
fn config_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("sluice-fuzz-{}", std::process::id()));
        let config = root.join("config");
        for plugins in [config.join("plugins"), root.join("plugins")] {
            std::fs::create_dir_all(&plugins).expect("a plugins directory");
            for module in ["uppercase", "json-router", "misbehave", "enrich"] {
                std::fs::write(plugins.join(format!("{module}.wasm")), b"").expect("a module file");
            }
        }
        config
    })
    .clone()
}

/// Every setting the daemon derives from an accepted configuration.
fn derived(config: &Config) {
    let k = &config.kafka;
    let _ = (
        config.group_id(),
        config.plugins_dir(),
        config.compile_cache_dir(),
    );
    let _ = (
        k.timeout(),
        k.session_timeout(),
        k.retry_backoff(),
        k.max_record_bytes(),
    );
    let _ = (
        k.circuit_breaker_reset_timeout(),
        k.consumer_sleep_interval(),
    );
    let p = &config.processing;
    let _ = (p.drain_timeout(), p.commit_interval(), p.stall_timeout());
    let _ = crate::pipeline::shutdown::bound(config);
    let _ = config.http.header_timeout();
    for route in &config.routes {
        let _ = (
            route.timeout(),
            route.memory_limit_bytes(),
            route.output_limits(),
        );
        let _ = (
            route.dead_letter_topic(k),
            route.max_retry_attempts(k),
            route.retry_on(),
        );
        let _ = route.circuit_breaker_threshold(k);
        let _ = route.circuit_breaker_reset_timeout(k);
    }
    let bootstrap = "127.0.0.1:9092";
    // Files the settings name are read here; a missing one is a refusal
    // naming the field.
    for built in [
        crate::kafka::consumer_config(config, bootstrap),
        crate::kafka::producer_config(config, bootstrap),
    ] {
        if let Err(error) = built {
            refusal(&error);
        }
    }
}

/// A refusal names the field or variable and what is allowed.
fn refusal(error: &ConfigError) {
    let text = error.to_string();
    assert!(!text.trim().is_empty(), "an empty refusal: {error:?}");
    match error {
        ConfigError::Invalid { field, allowed, .. } => {
            assert!(!field.is_empty(), "a refusal without its field: {text}");
            assert!(
                !allowed.is_empty(),
                "a refusal without what is allowed: {text}"
            );
        }
        ConfigError::File { field, .. } => {
            assert!(!field.is_empty(), "a refusal without its field: {text}");
        }
        ConfigError::Env { var, .. } => assert!(var.starts_with("KAFKA_"), "{text}"),
        ConfigError::Parse(_) | ConfigError::Read { .. } => {}
    }
}

/// The runtime `sluice check` loads with (no pooling, the largest memory a
/// route may have), made once.
fn check_runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new(RuntimeConfig {
            max_memory_bytes: 1 << 30,
            pooling: false,
            ..RuntimeConfig::default()
        })
        .expect("the WebAssembly runtime starts")
    })
}

/// Loads `bytes` as a plugin file the way `sluice check` and the daemon
/// do, then tries it within a route's memory limit. Whatever the bytes, the
/// answer is a plugin or an error that names the file.
pub fn plugin(bytes: &[u8]) {
    let runtime = check_runtime();
    let origin = Path::new("fuzzed.wasm");
    match runtime.load_bytes(origin, bytes) {
        Ok(plugin) => {
            let plugin = Arc::new(plugin);
            let _ = plugin.info();
            if let Err(error) = runtime.fits_within(&plugin, 64 << 20, "a 64 MiB route") {
                let text = format!("{error:#}");
                assert!(
                    text.contains("fuzzed"),
                    "a refusal that names no file: {text}"
                );
            }
        }
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.contains("fuzzed"),
                "a refusal that names no file: {text}"
            );
        }
    }
}

/// Decodes a guest's `handle-packed` results for `expected` messages within
/// `limits`. Whatever the bytes: no more results than messages, and every
/// output returned is within the bounds.
pub fn packed_results(
    bytes: &[u8],
    expected: usize,
    limits: &OutputLimits,
) -> Result<Vec<Result<Vec<Output>, String>>, String> {
    let decoded = packed::decode(bytes, expected, limits).map_err(|e| e.to_string())?;
    results_hold(&decoded, expected, limits, true);
    Ok(shown(decoded))
}

/// What `handle-batch`'s results become for `expected` messages within
/// `limits`, with the same checks as [`packed_results`].
pub fn batch_results(
    results: Vec<Result<Vec<Output>, HandlerError>>,
    expected: usize,
    limits: &OutputLimits,
) -> Vec<Result<Vec<Output>, String>> {
    let decoded = crate::wasm::invoke::batch_decoded(results, expected, limits);
    results_hold(&decoded, expected, limits, false);
    shown(decoded)
}

/// Results with their refusals as the text a dead letter would carry.
fn shown(decoded: Vec<Decoded>) -> Vec<Result<Vec<Output>, String>> {
    decoded
        .into_iter()
        .map(|d| {
            d.map_err(|refusal| match refusal {
                NoOutputs::Handler(HandlerError::Retryable(m) | HandlerError::Permanent(m)) => m,
                NoOutputs::Limit(e) => e.to_string(),
            })
        })
        .collect()
}

/// What holds of decoded results; `stops_at_limit`: nothing is read past
/// outputs that break a bound.
fn results_hold(decoded: &[Decoded], expected: usize, limits: &OutputLimits, stops_at_limit: bool) {
    assert!(decoded.len() <= expected, "more results than messages");
    for (i, result) in decoded.iter().enumerate() {
        match result {
            Ok(outputs) => {
                if let Err(e) = crate::wasm::outputs::check(outputs, limits) {
                    panic!("result {i} kept outputs over a bound: {e}");
                }
            }
            Err(NoOutputs::Handler(HandlerError::Retryable(m) | HandlerError::Permanent(m))) => {
                assert!(
                    !m.chars().any(char::is_control),
                    "a handler's message kept a control character: {m:?}"
                );
                assert!(
                    m.len() <= crate::wasm::MAX_GUEST_TEXT + 64,
                    "a handler's message of {} bytes was kept",
                    m.len()
                );
            }
            Err(NoOutputs::Limit(_)) => {
                if stops_at_limit {
                    assert_eq!(
                        i + 1,
                        decoded.len(),
                        "results were read past a broken bound"
                    );
                }
            }
        }
    }
}

/// The host's encoding of `messages` for a `handle-packed` call.
pub fn encode_messages(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    packed::encode(messages, &mut out);
    out
}

/// A dead-letter value as `sluice dlq list|stats|replay` read it: an
/// envelope or a reason, never a panic.
pub fn dead_letter_value(bytes: &[u8]) {
    if let Ok(envelope) = Envelope::decode(Some(bytes)) {
        let _ = (
            envelope.truncation.message_complete(),
            envelope.truncation.any(),
        );
        let _ = envelope.held();
        let _ = envelope.replay_count();
    }
}

/// The dead letter written for `message` (failed with `reason`) into a
/// topic taking records of at most `max_bytes`: it fits, and reading it
/// back gives the message's coordinates, and the message itself wherever
/// the envelope says nothing was cut.
pub fn dead_letter_round_trip(message: &Message, reason: &str, kind: u8, max_bytes: usize) {
    if message.topic.is_empty() {
        // Kafka has no topic without a name; the reader refuses such a
        // letter as not naming its topic.
        return;
    }
    let error_type = ErrorType::ALL[usize::from(kind) % ErrorType::ALL.len()];
    let letter = DeadLetter {
        message,
        raw_keys: &[],
        error_type,
        reason: reason.to_owned(),
        correlation_id: "c0ffee",
        retry_count: 2,
        module: "fuzzed",
        module_hash: "0123456789abcdef",
        failed_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
    };
    let record = letter.record(max_bytes);
    let envelope = Envelope::decode(Some(&record.value))
        .unwrap_or_else(|e| panic!("a dead letter the reader refuses: {e}"));
    assert_eq!(envelope.original_topic, message.topic);
    assert_eq!(envelope.original_partition, message.partition);
    assert_eq!(envelope.original_offset, message.offset);
    assert_eq!(envelope.original_timestamp, message.timestamp);
    assert_eq!(envelope.error_type, error_type.as_str());
    let t = &envelope.truncation;
    if t.key.is_none() {
        assert_eq!(envelope.key, message.key, "an uncut key changed");
    }
    if t.value.is_none() {
        assert_eq!(envelope.value, message.value, "an uncut value changed");
    }
    if t.headers.is_none() && t.header_values.is_empty() {
        let written: Vec<RawHeader> = message
            .headers
            .iter()
            .map(|h| RawHeader {
                key: h.key.as_bytes().to_vec(),
                value: Some(h.value.clone()),
            })
            .collect();
        assert_eq!(envelope.headers, written, "uncut headers changed");
    }
    if !t.failure_reason {
        assert_eq!(envelope.failure_reason, reason, "an uncut reason changed");
    }
}

/// Kafka headers as the consumer reads them: keys (up to a NUL byte, where
/// librdkafka stops) and values come back as they were written.
pub fn headers(written: &[(String, Option<Vec<u8>>)]) {
    use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
    let mut owned = OwnedHeaders::new();
    for (key, value) in written {
        owned = owned.insert(KafkaHeader {
            key: key.as_str(),
            value: value.as_deref(),
        });
    }
    let read = headers::read(owned.as_borrowed());
    assert_eq!(read.len(), written.len());
    for ((key, value), got) in written.iter().zip(&read) {
        let expected = key.split('\0').next().unwrap_or_default();
        assert_eq!(got.key, expected.as_bytes());
        assert_eq!(&got.value, value);
        let _ = got.key_text();
    }
    if let Some((key, _)) = written.first() {
        let _ = headers::text(&read, key);
    }
}

/// A `traceparent` and a `tracestate` value as a message carries them: a
/// parent read is written back the same (in lower case, version 00), and a
/// kept state is printable and bounded.
pub fn trace_context(traceparent: &[u8], tracestate: &[u8]) {
    if let Some(parent) = crate::trace::parse_traceparent(traceparent) {
        let written =
            crate::trace::format_traceparent(&parent.trace_id, &parent.span_id, parent.flags);
        assert_eq!(
            crate::trace::parse_traceparent(written.as_bytes()),
            Some(parent),
            "a parent read back differently"
        );
        assert_eq!(written.as_bytes()[3..52], traceparent[3..52]);
    }
    if let Some(state) = crate::trace::usable_tracestate(tracestate) {
        assert!(state.len() <= crate::trace::MAX_TRACESTATE);
        assert!(state.bytes().all(|b| (0x20..0x7f).contains(&b)));
    }
}

/// The token the admin requests of [`http`] must carry.
pub const ADMIN_TOKEN: &str = "fuzz-admin-token-4f1c";

/// Serves `request` (the bytes a client sends, then the end of its stream)
/// on one connection of the HTTP endpoint, with an admin token set, and
/// returns what it answered. Every answer is an HTTP/1.x response, and the
/// admin API never answers a request that does not carry the token.
pub fn http(request: &[u8]) -> Vec<u8> {
    static STATUS: OnceLock<(Arc<Status>, Arc<crate::breaker::Breaker>)> = OnceLock::new();
    let (status, broker) = STATUS.get_or_init(|| {
        let one_route = "[[routes]]\ntopic = \"orders\"\nmodule = \"uppercase\"\n";
        let config =
            Config::parse(one_route, &config_dir(), &|_| None).expect("a config with one route");
        let status = Status::new(&config);
        let broker = crate::breaker::Breaker::new("broker", 5, Duration::from_secs(60));
        status.observe_broker(broker.view());
        (status, broker)
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    let peer: SocketAddr = ([203, 0, 113, 7], 40000).into();
    let answer = runtime.block_on(crate::http::answer_one(
        status.clone(),
        broker.clone(),
        Some(ADMIN_TOKEN),
        peer,
        request,
    ));
    if !answer.is_empty() {
        assert!(answer.starts_with(b"HTTP/1."), "not an HTTP answer");
    }
    let carries_token = request
        .windows(ADMIN_TOKEN.len())
        .any(|w| w == ADMIN_TOKEN.as_bytes());
    if !carries_token {
        let text = String::from_utf8_lossy(&answer);
        assert!(
            !text.contains("breakers reset") && !text.contains("\"reset\""),
            "the admin API answered a request without the token: {text}"
        );
    }
    answer
}
