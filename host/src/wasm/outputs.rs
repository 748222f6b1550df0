//! The bounds on what a handler returns for one message: how many outputs,
//! how large each is, how many headers it carries, and how many bytes they
//! add up to.
//!
//! A handler is untrusted, so what it returns is measured before the host
//! builds anything from it: the `handle-packed` decoder checks each count
//! and length as it reads it (see `packed.rs`), and outputs lifted through
//! the component model are checked as soon as they are lifted, before they
//! go anywhere. Exceeding a bound fails the message with
//! [`Failure::InvalidOutput`](super::Failure::InvalidOutput), naming the
//! setting and the value.

use super::bindings::Output;

/// Kafka's longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 249;

/// The bounds of a route's outputs (route settings of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// The most outputs one message may produce.
    pub max_outputs: u32,
    /// The most bytes one output may hold: key, value, header keys and
    /// header values together.
    pub max_output_bytes: usize,
    /// The most headers one output may carry.
    pub max_output_headers: u32,
    /// The most bytes all the outputs of one message may hold together
    /// (topics included).
    pub max_returned_bytes: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            max_outputs: 1000,
            // librdkafka's default `message.max.bytes`: a larger record would
            // be refused by the producer anyway.
            max_output_bytes: 1_000_000,
            max_output_headers: 64,
            max_returned_bytes: 16 << 20,
        }
    }
}

/// An output bound a handler's result broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handler output exceeds the route's {setting} = {limit}: {}", self.found())]
pub struct OutputLimitExceeded {
    /// The route setting that was exceeded.
    pub setting: &'static str,
    /// The value measured (for a total, what was counted when it went over).
    pub value: u64,
    /// The setting's value.
    pub limit: u64,
}

impl OutputLimitExceeded {
    /// What was measured, in words.
    fn found(&self) -> String {
        let value = self.value;
        match self.setting {
            "max_outputs" => format!("{value} outputs for one message"),
            "max_output_headers" => format!("an output with {value} headers"),
            "max_returned_bytes" => format!("outputs of at least {value} bytes for one message"),
            TOPIC_SETTING => format!("a topic name of {value} bytes"),
            _ => format!("an output of {value} bytes"),
        }
    }
}

/// How the topic name bound is named in a reason.
const TOPIC_SETTING: &str = "topic name limit (Kafka's)";

/// Tallies one message's outputs against the limits as they are read.
#[derive(Debug)]
pub(crate) struct Tally<'a> {
    limits: &'a OutputLimits,
    /// Bytes of the message's outputs so far.
    returned: usize,
}

fn exceeded(setting: &'static str, value: usize, limit: usize) -> OutputLimitExceeded {
    OutputLimitExceeded {
        setting,
        value: u64::try_from(value).unwrap_or(u64::MAX),
        limit: u64::try_from(limit).unwrap_or(u64::MAX),
    }
}

impl<'a> Tally<'a> {
    /// A tally for one message's outputs.
    pub(crate) fn new(limits: &'a OutputLimits) -> Self {
        Tally {
            limits,
            returned: 0,
        }
    }

    /// Checks the number of outputs of the message.
    pub(crate) fn outputs(&self, n: u32) -> Result<(), OutputLimitExceeded> {
        if n > self.limits.max_outputs {
            return Err(exceeded(
                "max_outputs",
                n as usize,
                self.limits.max_outputs as usize,
            ));
        }
        Ok(())
    }

    /// Checks the number of headers of one output.
    pub(crate) fn headers(&self, n: u32) -> Result<(), OutputLimitExceeded> {
        if n > self.limits.max_output_headers {
            return Err(exceeded(
                "max_output_headers",
                n as usize,
                self.limits.max_output_headers as usize,
            ));
        }
        Ok(())
    }

    /// Checks a topic's length and counts it towards the message's total.
    pub(crate) fn topic(&mut self, bytes: usize) -> Result<(), OutputLimitExceeded> {
        if bytes > MAX_TOPIC_BYTES {
            return Err(exceeded(TOPIC_SETTING, bytes, MAX_TOPIC_BYTES));
        }
        self.add(bytes)
    }

    /// Checks one output's size (`bytes`: key, value and headers) and
    /// counts it towards the message's total.
    pub(crate) fn output(&mut self, bytes: usize) -> Result<(), OutputLimitExceeded> {
        if bytes > self.limits.max_output_bytes {
            return Err(exceeded(
                "max_output_bytes",
                bytes,
                self.limits.max_output_bytes,
            ));
        }
        self.add(bytes)
    }

    fn add(&mut self, bytes: usize) -> Result<(), OutputLimitExceeded> {
        self.returned = self.returned.saturating_add(bytes);
        if self.returned > self.limits.max_returned_bytes {
            return Err(exceeded(
                "max_returned_bytes",
                self.returned,
                self.limits.max_returned_bytes,
            ));
        }
        Ok(())
    }
}

/// Checks outputs lifted through the component model against `limits`.
pub(crate) fn check(outputs: &[Output], limits: &OutputLimits) -> Result<(), OutputLimitExceeded> {
    let mut tally = Tally::new(limits);
    tally.outputs(u32::try_from(outputs.len()).unwrap_or(u32::MAX))?;
    // In the order `handle-packed` results are read (topic, headers, then
    // the output's size), so that both entry points name the same bound.
    for output in outputs {
        tally.topic(output.topic.len())?;
        tally.headers(u32::try_from(output.headers.len()).unwrap_or(u32::MAX))?;
        let len = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len);
        let headers: usize = output
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum();
        tally.output(len(&output.key) + len(&output.value) + headers)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::Header;

    fn output(value: usize, headers: usize) -> Output {
        Output {
            topic: "out".into(),
            key: Some(b"k".to_vec()),
            value: Some(vec![b'v'; value]),
            headers: (0..headers)
                .map(|_| Header {
                    key: "h".into(),
                    value: b"1".to_vec(),
                })
                .collect(),
        }
    }

    const SMALL: OutputLimits = OutputLimits {
        max_outputs: 3,
        max_output_bytes: 100,
        max_output_headers: 2,
        max_returned_bytes: 250,
    };

    #[test]
    fn outputs_within_every_limit_pass() {
        assert_eq!(
            check(&[output(95, 2), output(90, 0), output(0, 0)], &SMALL),
            Ok(())
        );
        assert_eq!(check(&[], &SMALL), Ok(()));
    }

    #[test]
    fn each_limit_is_named_with_the_value_that_broke_it() {
        let setting = |outputs: &[Output]| check(outputs, &SMALL).map_err(|e| (e.setting, e.value));
        assert_eq!(
            setting(&[output(1, 0), output(1, 0), output(1, 0), output(1, 0)]),
            Err(("max_outputs", 4))
        );
        assert_eq!(setting(&[output(100, 0)]), Err(("max_output_bytes", 101)));
        assert_eq!(setting(&[output(1, 3)]), Err(("max_output_headers", 3)));
        assert_eq!(
            setting(&[output(90, 0), output(90, 0), output(90, 0)]),
            Err(("max_returned_bytes", 282))
        );
        let mut long_topic = output(1, 0);
        long_topic.topic = "t".repeat(250);
        assert_eq!(
            setting(&[long_topic]),
            Err(("topic name limit (Kafka's)", 250))
        );
    }

    #[test]
    fn the_reason_names_the_setting_the_value_and_the_limit() {
        let error = check(&[output(200, 0)], &SMALL).expect_err("too large");
        assert_eq!(
            error.to_string(),
            "handler output exceeds the route's max_output_bytes = 100: an output of 201 bytes"
        );
    }
}
