//! The byte layout of `handle-packed`, as `interface packed` in
//! `wit/handler.wit` describes it: the pieces the host and the guest SDK
//! both write and read, so that the two sides share one definition.
//!
//! Integers are little-endian. `bytes` is a u32 length and that many bytes;
//! `text` is `bytes` holding UTF-8. A message and an output both end in a
//! *body*: a presence byte, then the fields it announces (a timestamp,
//! messages only; a key; a value), then the headers. Nothing here allocates
//! on reading: the reader hands out slices of the buffer. The small
//! functions are `#[inline]`: they run for every field of every message, on
//! both sides.

/// Presence bit: a timestamp (s64) follows. Messages only.
pub const TIMESTAMP: u8 = 1;
/// Presence bit: a key (`bytes`) follows.
pub const KEY: u8 = 2;
/// Presence bit: a value (`bytes`) follows.
pub const VALUE: u8 = 4;

/// Result tag: the handler returned outputs.
pub const OK: u8 = 0;
/// Result tag: the handler returned a retryable error.
pub const RETRYABLE: u8 = 1;
/// Result tag: the handler returned a permanent error.
pub const PERMANENT: u8 = 2;

/// Appends a length or a count.
#[inline]
pub fn put_len(out: &mut Vec<u8>, n: usize) {
    // Kafka records, and anything a 32-bit guest can hold, are shorter than
    // 4 GiB.
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

/// Appends `bytes` (or `text`): its length, then itself.
#[inline]
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Appends a body: the presence byte, the timestamp, key and value that are
/// there, and the headers (each its key as `text`, then its value).
pub fn put_body<'h>(
    out: &mut Vec<u8>,
    timestamp: Option<i64>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl ExactSizeIterator<Item = (&'h str, &'h [u8])>,
) {
    let present = if timestamp.is_some() { TIMESTAMP } else { 0 }
        | if key.is_some() { KEY } else { 0 }
        | if value.is_some() { VALUE } else { 0 };
    out.push(present);
    if let Some(timestamp) = timestamp {
        out.extend_from_slice(&timestamp.to_le_bytes());
    }
    if let Some(key) = key {
        put_bytes(out, key);
    }
    if let Some(value) = value {
        put_bytes(out, value);
    }
    put_len(out, headers.len());
    for (key, value) in headers {
        put_bytes(out, key.as_bytes());
        put_bytes(out, value);
    }
}

/// Why a buffer could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {}

/// The fixed part of a body: what its presence byte announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body<'a> {
    /// The timestamp, if there is one.
    pub timestamp: Option<i64>,
    /// The key, if there is one.
    pub key: Option<&'a [u8]>,
    /// The value, if there is one.
    pub value: Option<&'a [u8]>,
    /// How many headers follow; read each with [`Reader::header`].
    pub headers: u32,
}

/// Reads a buffer from the front, checking every length against what is
/// left.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// What has not been read yet.
    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.bytes.len() {
            return Err(Malformed("a length runs past the end of the list"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    /// A byte.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    /// A u32.
    #[inline]
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// An s32.
    #[inline]
    pub fn i32(&mut self) -> Result<i32, Malformed> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    /// An s64.
    #[inline]
    pub fn i64(&mut self) -> Result<i64, Malformed> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A count of items each at least `min_size` bytes long, and a capacity
    /// for them that what is left of the buffer can justify: a count is
    /// never trusted to size an allocation.
    #[inline]
    pub fn count(&mut self, min_size: usize) -> Result<(u32, usize), Malformed> {
        let n = self.u32()?;
        Ok((n, self.capacity(n, min_size)))
    }

    /// A capacity for `n` items each at least `min_size` bytes long that what
    /// is left of the buffer can justify.
    #[inline]
    pub fn capacity(&self, n: u32, min_size: usize) -> usize {
        (n as usize).min(self.bytes.len() / min_size.max(1))
    }

    /// `bytes`.
    #[inline]
    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// `text`, checked to be UTF-8.
    #[inline]
    pub fn text(&mut self) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| Malformed("a topic, header key or error message is not UTF-8"))
    }

    /// The fixed part of a body whose presence byte may have only the bits
    /// in `allowed` set.
    #[inline]
    pub fn body(&mut self, allowed: u8) -> Result<Body<'a>, Malformed> {
        let present = self.u8()?;
        if present & !allowed != 0 {
            return Err(Malformed(
                "a presence byte has bits set that are not allowed there",
            ));
        }
        let timestamp = if present & TIMESTAMP != 0 {
            Some(self.i64()?)
        } else {
            None
        };
        let key = if present & KEY != 0 {
            Some(self.bytes()?)
        } else {
            None
        };
        let value = if present & VALUE != 0 {
            Some(self.bytes()?)
        } else {
            None
        };
        Ok(Body {
            timestamp,
            key,
            value,
            headers: self.u32()?,
        })
    }

    /// One header: its key (raw; see [`Reader::text`] to check it) and value.
    #[inline]
    pub fn header(&mut self) -> Result<(&'a [u8], &'a [u8]), Malformed> {
        Ok((self.bytes()?, self.bytes()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_reads_back_as_written() {
        let mut out = Vec::new();
        let headers = [("a", &b"1"[..]), ("", &b""[..])];
        put_body(&mut out, Some(-3), None, Some(b"v"), headers.into_iter());
        put_body(&mut out, None, Some(b""), None, [].into_iter());
        let mut reader = Reader::new(&out);
        let body = reader.body(TIMESTAMP | KEY | VALUE).expect("a body");
        assert_eq!(
            body,
            Body {
                timestamp: Some(-3),
                key: None,
                value: Some(b"v"),
                headers: 2,
            }
        );
        assert_eq!(reader.header(), Ok((&b"a"[..], &b"1"[..])));
        assert_eq!(reader.header(), Ok((&b""[..], &b""[..])));
        let body = reader.body(KEY | VALUE).expect("a second body");
        assert_eq!(body.key, Some(&b""[..]));
        assert_eq!((body.timestamp, body.value, body.headers), (None, None, 0));
        assert!(reader.rest().is_empty());
    }

    #[test]
    fn bits_that_are_not_allowed_and_short_buffers_are_refused() {
        let mut out = Vec::new();
        put_body(&mut out, Some(1), None, None, [].into_iter());
        assert_eq!(
            Reader::new(&out).body(KEY | VALUE),
            Err(Malformed(
                "a presence byte has bits set that are not allowed there"
            ))
        );
        for cut in 0..out.len() {
            assert_eq!(
                Reader::new(&out[..cut]).body(TIMESTAMP),
                Err(Malformed("a length runs past the end of the list")),
                "cut at {cut}"
            );
        }
        let huge = u32::MAX.to_le_bytes();
        assert_eq!(Reader::new(&huge).count(1), Ok((u32::MAX, 0)));
    }
}
