//! The packed encoding of the messages of a call, host to guest: whatever
//! the host encodes, the SDK decodes the same; and the SDK's decoder on any
//! bytes says what is malformed instead of failing otherwise.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::Message;

#[derive(Debug, Arbitrary)]
enum Input {
    Messages(Vec<Message>),
    Bytes(Vec<u8>),
}

fuzz_target!(|input: Input| {
    match input {
        Input::Messages(messages) => {
            let host: Vec<_> = messages.iter().map(Message::host).collect();
            let bytes = sluice::fuzzing::encode_messages(&host);
            let decoded = sluice_guest::fuzzing::decode_messages(&bytes)
                .unwrap_or_else(|e| panic!("the SDK refuses what the host encoded: {e}"));
            assert_eq!(decoded.len(), messages.len());
            for (sent, got) in messages.iter().zip(&decoded) {
                assert!(sent.is(got), "sent {sent:?}, the SDK read {got:?}");
            }
        }
        Input::Bytes(bytes) => {
            let _ = sluice_guest::fuzzing::decode_messages(&bytes);
        }
    }
});
