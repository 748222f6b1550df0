//! The checks of `[[routes]]`: at least one route, each topic in one route
//! only, and each route's module, output topics, timeouts, output limits,
//! memory, dead letters, retries and breaker, in that order.
//!
//! Owns these rules only; the helpers that quote a field and its value are
//! in `validate`, which calls `check_routes` after the other sections.

use std::collections::BTreeMap;
use std::path::Path;

use super::validate::{check_topic, in_range, invalid};
use super::{Config, ConfigError, OnUndecodable, RetryOn, RouteConfig};

/// `[[routes]]`: at least one, each checked in order.
pub(super) fn check_routes(config: &Config) -> Result<(), ConfigError> {
    if config.routes.is_empty() {
        return Err(invalid(
            "routes",
            "[]",
            "at least one [[routes]] table with a topic and a module",
        ));
    }
    let plugins_dir = config.plugins_dir();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        check_route(config, &plugins_dir, i, route, &mut seen)?;
    }
    Ok(())
}

/// Route `i`: its topic (one no earlier route in `seen` handles), module,
/// outputs, limits, dead letters, retries and breaker.
fn check_route<'a>(
    config: &Config,
    plugins_dir: &Path,
    i: usize,
    route: &'a RouteConfig,
    seen: &mut BTreeMap<&'a str, usize>,
) -> Result<(), ConfigError> {
    let k = &config.kafka;
    let at = |field: &str| format!("routes[{i}].{field}");
    check_topic(&at("topic"), &route.topic)?;
    if let Some(first) = seen.insert(&route.topic, i) {
        return Err(invalid(
            at("topic"),
            format!("{:?}", route.topic),
            format!(
                "a topic not routed already: routes[{first}] handles it; a topic appears in one route only"
            ),
        ));
    }
    check_module(&at, route, plugins_dir)?;
    check_output_topics(&at, route)?;
    in_range(&at("timeout_ms"), route.timeout_ms, 1..=300_000)?;
    check_output_limits(&at, route, k.max_record_bytes())?;
    in_range(
        &at("memory_limit_mb"),
        route.memory_limit_mb,
        1..=config.processing.max_memory_mb,
    )?;
    if let Some(topic) = &route.dead_letter_topic {
        check_topic(&at("dead_letter_topic"), topic)?;
    }
    check_dead_letter_loop(config, i, route)?;
    if route.on_undecodable == OnUndecodable::DeadLetter && route.dead_letter_topic(k).is_none() {
        return Err(invalid(
            at("on_undecodable"),
            r#""dead-letter""#.to_owned(),
            format!(
                "only with a dead-letter topic: set routes[{i}].dead_letter_topic or \
                 kafka.dead_letter_topic, or use \"stop\""
            ),
        ));
    }
    check_retries(&at, route)
}

/// A route's module: a plain file stem, whose `.wasm` file is in the
/// plugins directory.
fn check_module(
    at: &dyn Fn(&str) -> String,
    route: &RouteConfig,
    plugins_dir: &Path,
) -> Result<(), ConfigError> {
    let module_ok = !route.module.is_empty()
        && route
            .module
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !route.module.starts_with('.');
    if !module_ok {
        return Err(invalid(
            at("module"),
            format!("{:?}", route.module),
            "a module name (the file stem of a .wasm file in the plugins directory): letters, digits, - _ .",
        ));
    }
    let file = plugins_dir.join(format!("{}.wasm", route.module));
    if !file.is_file() {
        let hint = match route.module.strip_suffix(".wasm") {
            Some(stem) => format!("; the name has no .wasm extension: module = {stem:?}"),
            None => String::new(),
        };
        return Err(invalid(
            at("module"),
            format!("{:?}", route.module),
            format!(
                "a module present in the plugins directory, but {} does not exist; build it \
                 (scripts/build-examples for the examples) or fix plugins.dir{hint}",
                file.display()
            ),
        ));
    }
    Ok(())
}

/// A route's output topics: legal names, none of them its input topic.
fn check_output_topics(
    at: &dyn Fn(&str) -> String,
    route: &RouteConfig,
) -> Result<(), ConfigError> {
    for (j, topic) in route.output_topics.iter().enumerate() {
        check_topic(&at(&format!("output_topics[{j}]")), topic)?;
        if *topic == route.topic {
            return Err(invalid(
                at(&format!("output_topics[{j}]")),
                format!("{topic:?}"),
                "a topic other than the route's own input topic (that would loop forever)",
            ));
        }
    }
    Ok(())
}

/// A route's own retry and breaker settings, where it sets them.
fn check_retries(at: &dyn Fn(&str) -> String, route: &RouteConfig) -> Result<(), ConfigError> {
    if let Some(retries) = route.max_retry_attempts {
        in_range(&at("max_retry_attempts"), retries, 0..=10)?;
    }
    for (j, name) in route.retry_on.iter().enumerate() {
        if RetryOn::parse(name).is_none() {
            let allowed: Vec<String> = RetryOn::ALL
                .iter()
                .map(|k| format!("{:?}", k.as_str()))
                .collect();
            return Err(invalid(
                at(&format!("retry_on[{j}]")),
                format!("{name:?}"),
                format!("one of {}", allowed.join(", ")),
            ));
        }
    }
    if let Some(threshold) = route.circuit_breaker_threshold {
        in_range(&at("circuit_breaker_threshold"), threshold, 0..=100)?;
    }
    if let Some(reset) = route.circuit_breaker_reset_timeout {
        in_range(&at("circuit_breaker_reset_timeout"), reset, 1.0..=3600.0)?;
    }
    Ok(())
}

/// Refuses a dead-letter topic (the route's own or the inherited
/// `kafka.dead_letter_topic`) that the route reads or writes: dead letters
/// written to its input topic would be consumed and fail again forever, and
/// an output topic would mix the handler's outputs with dead letters.
fn check_dead_letter_loop(
    config: &Config,
    i: usize,
    route: &RouteConfig,
) -> Result<(), ConfigError> {
    let Some(topic) = route.dead_letter_topic(&config.kafka) else {
        return Ok(());
    };
    let (field, whose) = if route.dead_letter_topic.is_some() {
        (format!("routes[{i}].dead_letter_topic"), String::new())
    } else {
        (
            "kafka.dead_letter_topic".to_owned(),
            format!(" (routes[{i}] sets no dead_letter_topic of its own and inherits this one)"),
        )
    };
    if topic == route.topic {
        return Err(invalid(
            field,
            format!("{topic:?}"),
            format!(
                "a topic other than routes[{i}].topic{whose}: dead letters written to the \
                 route's input topic would be consumed and fail again, forever; name another \
                 topic"
            ),
        ));
    }
    if let Some(j) = route.output_topics.iter().position(|t| t == topic) {
        return Err(invalid(
            field,
            format!("{topic:?}"),
            format!(
                "a topic not listed in routes[{i}].output_topics{whose}: it is \
                 routes[{i}].output_topics[{j}], and the handler's outputs would be mixed with \
                 dead letters; name another dead-letter topic or remove it from output_topics"
            ),
        ));
    }
    Ok(())
}

/// The bounds on a route's outputs: a record larger than the producer's
/// `message.max.bytes` would be refused by it.
fn check_output_limits(
    at: &dyn Fn(&str) -> String,
    route: &RouteConfig,
    message_max_bytes: u64,
) -> Result<(), ConfigError> {
    in_range(&at("max_outputs"), route.max_outputs, 1..=100_000)?;
    if !(1..=message_max_bytes).contains(&route.max_output_bytes) {
        return Err(invalid(
            at("max_output_bytes"),
            route.max_output_bytes,
            format!(
                "from 1 to {message_max_bytes}, the producer's message.max.bytes: a larger \
                 record would be refused (raise message.max.bytes in kafka.librdkafka first)"
            ),
        ));
    }
    in_range(
        &at("max_output_headers"),
        route.max_output_headers,
        0..=10_000,
    )?;
    in_range(
        &at("max_returned_bytes"),
        route.max_returned_bytes,
        1..=1 << 30,
    )
}
