//! Reading record headers as the bytes they are on the wire.
//!
//! Kafka header keys are bytes, not text: a record may carry a key that is
//! not UTF-8 (or is cut at a NUL byte by librdkafka, which keeps keys as C
//! strings). rdkafka's own `Headers::get` and `iter` panic on such a key, so
//! every path that reads headers of records Sluice did not write goes
//! through [`read`] instead.

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedHeaders, OwnedHeaders};

/// One header as consumed: its key and value bytes exactly as they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// The key's bytes (up to a NUL byte, where librdkafka stops).
    pub key: Vec<u8>,
    /// The value's bytes; `None` for a null value.
    pub value: Option<Vec<u8>>,
}

impl RawHeader {
    /// The key as text, with any byte sequence that is not UTF-8 replaced
    /// by U+FFFD, and whether it was replaced.
    pub fn key_text(&self) -> (String, bool) {
        match String::from_utf8(self.key.clone()) {
            Ok(text) => (text, false),
            Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
        }
    }
}

/// Every header of a record, in order, without assuming anything of the
/// bytes of its keys or values.
pub fn read(headers: &BorrowedHeaders) -> Vec<RawHeader> {
    // `BorrowedHeaders` is rdkafka's zero-sized stand-in for librdkafka's
    // header list: a reference to it is the list's pointer.
    let list = std::ptr::from_ref(headers).cast::<rdsys::rd_kafka_headers_t>();
    let mut out = Vec::new();
    for idx in 0.. {
        let mut name: *const std::ffi::c_char = std::ptr::null();
        let mut value: *const std::ffi::c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: `list` is the live header list `headers` borrows from its
        // message; the out-pointers are valid locals. An index past the end
        // returns an error and writes nothing.
        let err =
            unsafe { rdsys::rd_kafka_header_get_all(list, idx, &mut name, &mut value, &mut size) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            break;
        }
        // SAFETY: librdkafka keeps each name NUL-terminated and its value
        // `size` bytes long, both alive while the message is borrowed.
        let key = unsafe { std::ffi::CStr::from_ptr(name) }
            .to_bytes()
            .to_vec();
        let value = (!value.is_null())
            // SAFETY: as above.
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec());
        out.push(RawHeader { key, value });
    }
    out
}

/// The value of the last header named `name`, as lossily decoded text.
pub fn text(headers: &[RawHeader], name: &str) -> Option<String> {
    headers
        .iter()
        .rev()
        .find(|h| h.key == name.as_bytes())
        .and_then(|h| h.value.as_deref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Appends a header with any key bytes: rdkafka's own header type takes
/// the key as `&str`, and an original key need not be UTF-8.
pub fn add(headers: &mut OwnedHeaders, key: &[u8], value: Option<&[u8]>) {
    // `BorrowedHeaders` is rdkafka's stand-in for librdkafka's header list:
    // a reference to it is the list's pointer, owned by `headers`.
    let list = std::ptr::from_ref(headers.as_borrowed())
        .cast::<rdsys::rd_kafka_headers_t>()
        .cast_mut();
    let (value, size) = value.map_or((std::ptr::null(), 0), |v| (v.as_ptr(), v.len()));
    // SAFETY: `list` is alive and exclusively ours while `headers` is
    // borrowed mutably; librdkafka copies the name and the value. Slice
    // lengths never exceed isize::MAX. It fails only on a read-only list,
    // which an `OwnedHeaders` never is.
    let _ = unsafe {
        rdsys::rd_kafka_header_add(
            list,
            key.as_ptr().cast(),
            key.len() as isize,
            value.cast(),
            size as isize,
        )
    };
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, Headers as _};

    use super::*;

    #[test]
    fn keys_that_are_not_utf8_are_read_as_bytes() {
        let mut headers = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some(&[0xff_u8, 0x00][..]),
        });
        add(&mut headers, b"\xff\xfebad", Some(b"v"));
        add(&mut headers, b"empty", None);
        assert_eq!(headers.count(), 3);
        let read = read(headers.as_borrowed());
        assert_eq!(
            read,
            [
                RawHeader {
                    key: b"trace".to_vec(),
                    value: Some(vec![0xff, 0x00])
                },
                RawHeader {
                    key: b"\xff\xfebad".to_vec(),
                    value: Some(b"v".to_vec())
                },
                RawHeader {
                    key: b"empty".to_vec(),
                    value: None
                },
            ]
        );
        assert_eq!(read[1].key_text(), ("\u{fffd}\u{fffd}bad".to_owned(), true));
        assert_eq!(read[0].key_text(), ("trace".to_owned(), false));
        assert_eq!(text(&read, "trace").as_deref(), Some("\u{fffd}\0"));
        assert_eq!(text(&read, "missing"), None);
    }
}
