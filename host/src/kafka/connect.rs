//! Why a client cannot reach the brokers, in words an operator can act on.
//!
//! librdkafka reports a refused login or a failed TLS handshake as an error
//! code with a free-text reason, and retries for ever. This module reads
//! those into a [`ConnectFailure`] that names the brokers, the mechanism and
//! user (or the CA file) and the likely fix. It reads only the client's
//! settings and librdkafka's errors: what to do about a failure (refuse to
//! start, report it in health) belongs to the caller.

use std::sync::Mutex;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A connection failure that retrying with the same settings cannot cure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectFailure {
    /// The brokers refused the SASL login.
    #[error(
        "the brokers {brokers} refused the {mechanism} login of user {user:?}: the password is \
         wrong or the user does not exist for {mechanism}; check kafka.sasl.username and the \
         password (kafka.sasl.password or kafka.sasl.password_file) ({detail})"
    )]
    Login {
        brokers: String,
        mechanism: String,
        user: String,
        detail: String,
    },
    /// The brokers' certificate failed verification. OpenSSL 3 does not
    /// say why in the handshake error librdkafka reports, so the message
    /// names every likely cause.
    #[error(
        "the TLS certificate of the brokers {brokers} could not be verified with {ca}: it is not \
         signed by that CA, has expired or is not valid yet, or is not for the name the client \
         connected to; set kafka.tls.ca_file to the CA that signed the brokers' certificates, \
         give the brokers a current certificate for the names in kafka.bootstrap_servers, or, \
         for a test cluster only, set kafka.tls.verify_hostname = false ({detail})"
    )]
    UntrustedCertificate {
        brokers: String,
        ca: String,
        detail: String,
    },
    /// The brokers' certificate is out of its validity period.
    #[error(
        "the TLS certificate of the brokers {brokers} has expired or is not valid yet: the \
         brokers must be given a current certificate (check this machine's clock too) ({detail})"
    )]
    ExpiredCertificate { brokers: String, detail: String },
    /// The brokers' certificate is for other names.
    #[error(
        "the TLS certificate of the brokers {brokers} is not for the name the client connected \
         to: connect by a name the certificate lists (kafka.bootstrap_servers and the brokers' \
         advertised listeners), or, for a test cluster only, set kafka.tls.verify_hostname = \
         false ({detail})"
    )]
    HostnameMismatch { brokers: String, detail: String },
    /// TLS was spoken to a listener that does not speak it.
    #[error(
        "the brokers {brokers} did not answer the TLS handshake: the listener does not speak \
         TLS; use the brokers' TLS listener port in kafka.bootstrap_servers, or remove \
         [kafka.tls] for a plaintext listener ({detail})"
    )]
    NotTls { brokers: String, detail: String },
    /// Plaintext was spoken to a listener that expects TLS (or SASL).
    #[error(
        "the brokers {brokers} closed every connection before answering: the listener expects \
         TLS or a SASL login that this client does not use; add [kafka.tls] (and [kafka.sasl]) \
         as the cluster requires ({detail})"
    )]
    ExpectsTls { brokers: String, detail: String },
}

/// What a failure message says about the client: its settings, not its
/// secrets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    brokers: String,
    /// `sasl.mechanism`, when the client logs in.
    mechanism: Option<String>,
    user: Option<String>,
    /// `ssl.ca.location`, when set.
    ca_file: Option<String>,
    /// Whether the client speaks TLS.
    tls: bool,
}

impl Identity {
    /// Reads the client's settings (never its password).
    pub fn of(config: &ClientConfig) -> Identity {
        let protocol = config
            .get("security.protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase();
        let sasl = protocol.starts_with("sasl");
        Identity {
            brokers: config
                .get("bootstrap.servers")
                .unwrap_or_default()
                .to_owned(),
            mechanism: sasl.then(|| config.get("sasl.mechanism").unwrap_or("GSSAPI").to_owned()),
            user: config
                .get("sasl.username")
                .filter(|_| sasl)
                .map(str::to_owned),
            ca_file: config.get("ssl.ca.location").map(str::to_owned),
            tls: protocol == "ssl" || protocol == "sasl_ssl",
        }
    }

    /// Reads one librdkafka error (its code, when it has one, and its text):
    /// the failure it shows, if it is one that retrying with the same
    /// settings cannot cure.
    pub fn classify(&self, code: Option<RDKafkaErrorCode>, reason: &str) -> Option<ConnectFailure> {
        let brokers = self.brokers.clone();
        let detail = reason.trim().to_owned();
        let lower = reason.to_ascii_lowercase();
        let login = matches!(
            code,
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
        ) || lower.contains("sasl authentication error");
        match code {
            _ if login => {
                let mechanism = self.mechanism.clone().unwrap_or_else(|| "SASL".to_owned());
                Some(ConnectFailure::Login {
                    brokers,
                    mechanism,
                    user: self.user.clone().unwrap_or_default(),
                    detail,
                })
            }
            _ if !self.tls => (lower.contains("apiversion") || lower.contains("api_version"))
                .then_some(ConnectFailure::ExpectsTls { brokers, detail }),
            _ if lower.contains("hostname mismatch") || lower.contains("ip address mismatch") => {
                Some(ConnectFailure::HostnameMismatch { brokers, detail })
            }
            _ if lower.contains("certificate has expired")
                || lower.contains("certificate is not yet valid") =>
            {
                Some(ConnectFailure::ExpiredCertificate { brokers, detail })
            }
            _ if lower.contains("certificate verify failed")
                || lower.contains("could not be verified") =>
            {
                let ca = match &self.ca_file {
                    Some(file) => format!("the CA file {file:?} (kafka.tls.ca_file)"),
                    None => "the system's CA certificates".to_owned(),
                };
                Some(ConnectFailure::UntrustedCertificate {
                    brokers,
                    ca,
                    detail,
                })
            }
            _ if lower.contains("ssl_handshake")
                || lower.contains("wrong version number")
                || lower.contains("packet length too long")
                || lower.contains("record layer failure") =>
            {
                Some(ConnectFailure::NotTls { brokers, detail })
            }
            _ => None,
        }
    }
}

/// A client context that keeps the last connection failure librdkafka
/// reported, for the caller to act on, and logs other errors as the default
/// context does.
pub struct Watch {
    identity: Identity,
    last: Mutex<Option<ConnectFailure>>,
}

impl Watch {
    pub fn new(config: &ClientConfig) -> Watch {
        Watch {
            identity: Identity::of(config),
            last: Mutex::new(None),
        }
    }

    /// The last connection failure seen, if any.
    pub fn failure(&self) -> Option<ConnectFailure> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records a librdkafka error when it is a connection failure; whether
    /// it was.
    pub fn record(&self, code: Option<RDKafkaErrorCode>, reason: &str) -> bool {
        let Some(failure) = self.identity.classify(code, reason) else {
            return false;
        };
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(failure);
        true
    }
}

impl ClientContext for Watch {
    /// The short-lived clients this watches say what went wrong through
    /// [`Watch::failure`]: librdkafka's own lines go to debug.
    /// A refused login or a failed handshake often reaches only the log,
    /// as a connection failure (`FAIL`), at error level or (a listener that
    /// closes the connection) at info.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FAIL" || (level as i32) <= (rdkafka::config::RDKafkaLogLevel::Error as i32) {
            self.record(None, message);
        }
        tracing::debug!(?level, "librdkafka {fac}: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !self.record(error.rdkafka_error_code(), reason) {
            tracing::debug!("librdkafka: {error}: {reason}");
        }
    }

    /// The clients this watches read metadata only: their statistics are
    /// of no use.
    fn stats(&self, _: rdkafka::Statistics) {}
}

impl ConsumerContext for Watch {}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(pairs: &[(&str, &str)]) -> Identity {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", "kafka-1:9093");
        for (k, v) in pairs {
            c.set(*k, *v);
        }
        Identity::of(&c)
    }

    const SCRAM: &[(&str, &str)] = &[
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "orders"),
        ("sasl.password", "hunter2"),
        ("ssl.ca.location", "/etc/kafka/ca.pem"),
    ];

    #[test]
    fn a_refused_login_seen_only_in_the_log_is_named_too() {
        let line = "sasl_ssl://kafka-1:9093/bootstrap: SASL authentication error: SASL SCRAM \
                    authentication failed: broker responded with invalid-proof";
        assert!(matches!(
            identity(SCRAM).classify(None, line),
            Some(ConnectFailure::Login { .. })
        ));
    }

    #[test]
    fn a_refused_login_names_the_brokers_the_mechanism_and_the_user_but_not_the_password() {
        let failure = identity(SCRAM)
            .classify(
                Some(RDKafkaErrorCode::Authentication),
                "SASL authentication error: Authentication failed",
            )
            .expect("a login failure");
        let text = failure.to_string();
        assert!(matches!(failure, ConnectFailure::Login { .. }), "{text}");
        for part in [
            "kafka-1:9093",
            "SCRAM-SHA-512",
            "\"orders\"",
            "kafka.sasl.password_file",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_certificate_failure_says_which_and_names_the_ca_file() {
        let who = identity(SCRAM);
        let reason = |what: &str| {
            format!(
                "ssl://kafka-1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL \
                 routines::certificate verify failed: {what}: broker certificate could not be \
                 verified, verify that ssl.ca.location is correctly configured"
            )
        };
        let untrusted = who
            .classify(
                Some(RDKafkaErrorCode::SSL),
                &reason("unable to get local issuer certificate"),
            )
            .expect("untrusted");
        assert!(
            matches!(untrusted, ConnectFailure::UntrustedCertificate { .. })
                && untrusted
                    .to_string()
                    .contains("\"/etc/kafka/ca.pem\" (kafka.tls.ca_file)"),
            "{untrusted}"
        );
        assert!(matches!(
            who.classify(None, &reason("certificate has expired")),
            Some(ConnectFailure::ExpiredCertificate { .. })
        ));
        assert!(matches!(
            who.classify(None, &reason("IP address mismatch")),
            Some(ConnectFailure::HostnameMismatch { .. })
        ));
    }

    #[test]
    fn the_wrong_protocol_for_the_listener_is_named_either_way() {
        let tls = identity(&[("security.protocol", "ssl")]);
        assert!(matches!(
            tls.classify(
                Some(RDKafkaErrorCode::SSL),
                "SSL handshake failed: error:0A00010B:SSL routines::wrong version number"
            ),
            Some(ConnectFailure::NotTls { .. })
        ));
        let plain = identity(&[]);
        assert!(matches!(
            plain.classify(
                None,
                "kafka-1:9093/bootstrap: Disconnected while requesting ApiVersion: might be \
                 caused by incorrect security.protocol configuration"
            ),
            Some(ConnectFailure::ExpectsTls { .. })
        ));
    }

    #[test]
    fn a_broker_that_is_down_is_not_a_settings_failure() {
        let who = identity(SCRAM);
        assert_eq!(
            who.classify(
                Some(RDKafkaErrorCode::BrokerTransportFailure),
                "kafka-1:9093/bootstrap: Connect to ipv4#10.0.0.1:9093 failed: Connection refused"
            ),
            None
        );
        assert_eq!(
            who.classify(
                Some(RDKafkaErrorCode::AllBrokersDown),
                "1/1 brokers are down"
            ),
            None
        );
    }
}
