//! How the daemon is a member of its consumer group: static membership
//! (`kafka.group_instance_id`, with its `{hostname}` placeholder) and the
//! partition assignment strategy.
//!
//! Owns turning those fields into the values librdkafka is given, and their
//! checks; the client settings themselves are built in [`crate::kafka`].

use serde::Deserialize;

use super::{Choices, ConfigError};

/// The placeholder in `kafka.group_instance_id` that stands for the host
/// name (a Kubernetes pod's name).
pub const HOSTNAME_PLACEHOLDER: &str = "{hostname}";

/// How the group's leader spreads partitions over the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignmentStrategy {
    /// Each topic's partitions in ranges, one range per member (eager: a
    /// rebalance takes every partition from every member first).
    Range,
    /// Partitions dealt out one by one (eager).
    RoundRobin,
    /// As balanced as round-robin, moving as few partitions as possible,
    /// and incremental: a rebalance takes from a member only the partitions
    /// that go elsewhere, so the others keep being consumed throughout.
    CooperativeSticky,
}

impl AssignmentStrategy {
    /// librdkafka's name (`partition.assignment.strategy`).
    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "roundrobin",
            AssignmentStrategy::CooperativeSticky => "cooperative-sticky",
        }
    }
}

const STRATEGIES: Choices<AssignmentStrategy> = Choices {
    names: &[
        ("range", AssignmentStrategy::Range),
        ("roundrobin", AssignmentStrategy::RoundRobin),
        ("cooperative-sticky", AssignmentStrategy::CooperativeSticky),
    ],
    expected: r#"one of "range", "roundrobin", "cooperative-sticky""#,
};

impl<'de> Deserialize<'de> for AssignmentStrategy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(&STRATEGIES)
    }
}

/// Replaces `{hostname}` in a `kafka.group_instance_id` with the host name:
/// the `HOSTNAME` variable (which Kubernetes sets to the pod's name), else
/// the kernel's host name. An id without the placeholder is returned as is.
pub(super) fn resolve_instance_id(
    template: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    if !template.contains(HOSTNAME_PLACEHOLDER) {
        return Ok(template.to_owned());
    }
    let hostname = env("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ConfigError::Invalid {
            field: "kafka.group_instance_id".to_owned(),
            value: format!("{template:?}"),
            allowed: format!(
                "an id whose {HOSTNAME_PLACEHOLDER} can be filled in, but the host name is \
                 unknown (HOSTNAME is unset and the kernel's host name unreadable): set \
                 HOSTNAME or write the id out"
            ),
        })?;
    Ok(template.replace(HOSTNAME_PLACEHOLDER, &hostname))
}

/// Checks a resolved `kafka.group_instance_id`: Kafka's rule for ids, the
/// one it has for topic names. `template` is the id as written, quoted in
/// the error when a placeholder was filled in.
pub(super) fn check_instance_id(id: &str, template: &str) -> Result<(), ConfigError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !id.is_empty() && id.len() <= 249 && id.chars().all(legal) {
        return Ok(());
    }
    let filled = if id == template {
        String::new()
    } else {
        format!(" (written {template:?}, with {HOSTNAME_PLACEHOLDER} filled in)")
    };
    Err(ConfigError::Invalid {
        field: "kafka.group_instance_id".to_owned(),
        value: format!("{id:?}{filled}"),
        allowed: format!(
            "1 to 249 characters from a-z A-Z 0-9 . _ -, unique to each daemon of the group; \
             {HOSTNAME_PLACEHOLDER} is the only placeholder"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with_host(var: &str) -> Option<String> {
        (var == "HOSTNAME").then(|| "sluice-2\n".to_owned())
    }

    #[test]
    fn the_hostname_placeholder_is_filled_from_hostname() {
        assert_eq!(
            resolve_instance_id("orders-{hostname}", &env_with_host).as_deref(),
            Ok("orders-sluice-2")
        );
        assert_eq!(
            resolve_instance_id("fixed-1", &|_| None).as_deref(),
            Ok("fixed-1")
        );
    }

    #[test]
    fn ids_follow_kafkas_rule_and_name_the_placeholder() {
        assert!(check_instance_id("orders-sluice-2", "orders-{hostname}").is_ok());
        let filled = check_instance_id("a b", "a {hostname}")
            .expect_err("a space")
            .to_string();
        assert!(
            filled.contains("\"a b\" (written \"a {hostname}\", with {hostname} filled in)"),
            "{filled}"
        );
        let other = check_instance_id("x-{host}", "x-{host}")
            .expect_err("another placeholder")
            .to_string();
        assert!(
            other.contains("{hostname} is the only placeholder"),
            "{other}"
        );
        assert!(check_instance_id(&"a".repeat(250), "").is_err());
    }

    #[test]
    fn strategies_have_librdkafkas_names() {
        for (name, strategy) in STRATEGIES.names {
            assert_eq!(strategy.as_str(), *name);
        }
    }
}
