//! What the fuzz targets share: inputs that `arbitrary` builds from the
//! fuzzer's bytes, and their conversions into the host's and the guest
//! SDK's types (each side has its own bindings of the handler contract).

use arbitrary::Arbitrary;

/// A message as the host hands it to a handler.
#[derive(Debug, Clone, Arbitrary)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub attempt: u32,
}

impl Message {
    /// The host's message.
    pub fn host(&self) -> sluice::wasm::Message {
        sluice::wasm::Message {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key.clone(),
            value: self.value.clone(),
            headers: host_headers(&self.headers),
            attempt: self.attempt,
        }
    }

    /// Whether the SDK's `message` is this one.
    pub fn is(&self, sdk: &sluice_guest::Message) -> bool {
        self.topic == sdk.topic
            && self.partition == sdk.partition
            && self.offset == sdk.offset
            && self.timestamp == sdk.timestamp
            && self.key == sdk.key
            && self.value == sdk.value
            && self.attempt == sdk.attempt
            && self.headers.len() == sdk.headers.len()
            && self
                .headers
                .iter()
                .zip(&sdk.headers)
                .all(|((k, v), h)| *k == h.key && *v == h.value)
    }
}

/// Headers as the host's bindings hold them.
fn host_headers(headers: &[(String, Vec<u8>)]) -> Vec<sluice::wasm::Header> {
    headers
        .iter()
        .map(|(key, value)| sluice::wasm::Header {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

/// An output a handler returns.
#[derive(Debug, Clone, PartialEq, Eq, Arbitrary)]
pub struct Output {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Output {
    /// The host's output.
    pub fn host(&self) -> sluice::wasm::Output {
        sluice::wasm::Output {
            topic: self.topic.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            headers: host_headers(&self.headers),
        }
    }

    /// The SDK's output.
    pub fn sdk(&self) -> sluice_guest::Output {
        sluice_guest::Output {
            topic: self.topic.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            headers: self
                .headers
                .iter()
                .map(|(key, value)| sluice_guest::Header {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }

    /// Whether the host's `output` is this one.
    pub fn is(&self, output: &sluice::wasm::Output) -> bool {
        *self == Output::from_host(output)
    }

    fn from_host(output: &sluice::wasm::Output) -> Output {
        Output {
            topic: output.topic.clone(),
            key: output.key.clone(),
            value: output.value.clone(),
            headers: output
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
        }
    }
}

/// What a handler returns for one message.
#[derive(Debug, Clone, Arbitrary)]
pub enum Returned {
    Outputs(Vec<Output>),
    Retryable(String),
    Permanent(String),
}

impl Returned {
    /// The host's result.
    pub fn host(&self) -> Result<Vec<sluice::wasm::Output>, sluice::wasm::HandlerError> {
        match self {
            Returned::Outputs(outputs) => Ok(outputs.iter().map(Output::host).collect()),
            Returned::Retryable(m) => Err(sluice::wasm::HandlerError::Retryable(m.clone())),
            Returned::Permanent(m) => Err(sluice::wasm::HandlerError::Permanent(m.clone())),
        }
    }

    /// The SDK's result.
    pub fn sdk(&self) -> Result<Vec<sluice_guest::Output>, sluice_guest::HandlerError> {
        match self {
            Returned::Outputs(outputs) => Ok(outputs.iter().map(Output::sdk).collect()),
            Returned::Retryable(m) => Err(sluice_guest::HandlerError::Retryable(m.clone())),
            Returned::Permanent(m) => Err(sluice_guest::HandlerError::Permanent(m.clone())),
        }
    }
}

/// A route's output bounds, small enough for the fuzzer to cross.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Limits {
    pub max_outputs: u8,
    pub max_output_bytes: u16,
    pub max_output_headers: u8,
    pub max_returned_bytes: u16,
}

impl Limits {
    /// The host's bounds.
    pub fn host(self) -> sluice::wasm::OutputLimits {
        sluice::wasm::OutputLimits {
            max_outputs: u32::from(self.max_outputs),
            max_output_bytes: usize::from(self.max_output_bytes),
            max_output_headers: u32::from(self.max_output_headers),
            max_returned_bytes: usize::from(self.max_returned_bytes),
        }
    }
}
