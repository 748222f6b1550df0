//! The routes' topics, checked against the brokers' metadata at start and
//! on every config reload.

use std::time::Duration;

use crate::config::Config;
use crate::kafka;

/// Routes whose output or dead-letter topics the brokers do not have.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}; create them (Sluice does not create topics) or change the routes",
    .missing.iter().map(|(route, field, topic)| format!(
        "the route for topic {route:?} names {field} {topic:?}, which does not exist on the brokers"
    )).collect::<Vec<_>>().join("; ")
)]
pub struct MissingTopics {
    /// Per missing topic: the route's input topic, the field, the topic.
    pub missing: Vec<(String, &'static str, String)>,
}

/// Why the routes' topics were refused.
#[derive(Debug, thiserror::Error)]
pub enum TopicCheckError {
    #[error(transparent)]
    Missing(#[from] MissingTopics),
    /// The brokers cannot be reached with these settings: retrying would
    /// not help.
    #[error("cannot connect to Kafka: {0}")]
    Connect(#[from] kafka::ConnectFailure),
}

/// How long the topic check waits for the brokers' metadata.
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks through the brokers' metadata that the topics of `routes` exist.
/// A missing output or dead-letter topic is an error: every message that
/// reached it would fail. A missing input topic is logged: the route
/// consumes it once it is created. When no broker answers, nothing can be
/// checked and nothing is refused, unless the settings are why (a refused
/// login, an untrusted certificate, the wrong protocol). Blocks: call it
/// off the async threads.
pub(crate) fn check_topics(
    config: &Config,
    bootstrap: &str,
    routes: &[crate::config::RouteConfig],
) -> Result<(), TopicCheckError> {
    let mut wanted: Vec<(&str, &'static str, &str)> = Vec::new();
    for r in routes {
        wanted.push((&r.topic, "topic", &r.topic));
        wanted.extend(
            r.output_topics
                .iter()
                .map(|t| (r.topic.as_str(), "output_topics", t.as_str())),
        );
        if let Some(dlq) = r.dead_letter_topic(&config.kafka) {
            wanted.push((&r.topic, "dead_letter_topic", dlq));
        }
    }
    let mut names: Vec<&str> = wanted.iter().map(|(_, _, t)| *t).collect();
    names.sort_unstable();
    names.dedup();
    let timeout = config.kafka.timeout().min(TOPIC_CHECK_TIMEOUT);
    let missing = match kafka::missing_topics(config, bootstrap, &names, timeout) {
        Ok(missing) => missing,
        Err(kafka::MetadataError::Connect(failure)) => return Err(failure.into()),
        Err(kafka::MetadataError::Kafka(e)) => {
            tracing::warn!("cannot check that the routes' topics exist, no broker answered: {e}");
            return Ok(());
        }
    };
    let mut refused = Vec::new();
    for (route, field, topic) in wanted {
        if !missing.iter().any(|m| m == topic) {
            continue;
        }
        if field == "topic" {
            tracing::warn!(
                topic,
                "input topic does not exist on the brokers: the route consumes it once it is created"
            );
        } else {
            refused.push((route.to_owned(), field, topic.to_owned()));
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(MissingTopics { missing: refused }.into())
    }
}

/// Every topic the configuration names: inputs, outputs and dead letters.
pub fn all_topics(config: &Config) -> Vec<String> {
    let mut topics: Vec<String> = config
        .routes
        .iter()
        .flat_map(|r| {
            std::iter::once(r.topic.clone())
                .chain(r.output_topics.iter().cloned())
                .chain(r.dead_letter_topic(&config.kafka).map(str::to_owned))
        })
        .collect();
    topics.sort();
    topics.dedup();
    topics
}
