//! A record batch no Kafka client can decode, written with a hand-made
//! `Produce` request: its header is valid (so a broker stores it, as Kafka
//! does without decompressing), and it says gzip while its payload is not.
//! A consumer fetching it gets a decompression error at its offset.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `Produce` API and the version used: v3 is the first with record
/// batches (message format v2).
const PRODUCE: i16 = 0;
const PRODUCE_VERSION: i16 = 3;
/// The attributes of a gzip-compressed batch.
const GZIP: i16 = 1;

/// Appends `count` records to `topic[partition]` as one gzip batch whose
/// payload is not gzip, on the broker at `bootstrap` (the partition's
/// leader). Returns the batch's first offset.
pub fn produce_undecodable_batch(bootstrap: &str, topic: &str, partition: i32, count: i32) -> i64 {
    let batch = batch(
        count,
        b"this is not a gzip stream, and no client can inflate it",
    );
    let mut body = Vec::new();
    put_i16(&mut body, -1); // transactional_id: null
    put_i16(&mut body, -1); // acks: all
    put_i32(&mut body, 10_000); // timeout_ms
    put_i32(&mut body, 1); // one topic
    put_str(&mut body, topic);
    put_i32(&mut body, 1); // one partition
    put_i32(&mut body, partition);
    put_i32(&mut body, i32::try_from(batch.len()).expect("small batch"));
    body.extend_from_slice(&batch);
    let response = call(bootstrap, PRODUCE, PRODUCE_VERSION, &body);
    // responses[1]: topic name, partitions[1]: index, error_code, base_offset.
    let mut r = Reader(&response);
    assert_eq!(r.i32(), 1, "one topic answered");
    let name_len = usize::try_from(r.i16()).expect("a topic name");
    r.skip(name_len);
    assert_eq!(r.i32(), 1, "one partition answered");
    assert_eq!(r.i32(), partition, "the partition written");
    let error = r.i16();
    assert_eq!(
        error, 0,
        "the broker accepts the batch (error code {error})"
    );
    r.i64()
}

/// A record batch (magic 2) of `count` records that says gzip and carries
/// `payload`.
fn batch(count: i32, payload: &[u8]) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    // From the attributes on: what the CRC covers.
    let mut tail = Vec::new();
    put_i16(&mut tail, GZIP);
    put_i32(&mut tail, count - 1); // last offset delta
    put_i64(&mut tail, now); // base timestamp
    put_i64(&mut tail, now); // max timestamp
    put_i64(&mut tail, -1); // producer id
    put_i16(&mut tail, -1); // producer epoch
    put_i32(&mut tail, -1); // base sequence
    put_i32(&mut tail, count);
    tail.extend_from_slice(payload);
    let mut after_length = Vec::new();
    put_i32(&mut after_length, -1); // partition leader epoch
    after_length.push(2); // magic
    after_length.extend_from_slice(&crc32c(&tail).to_be_bytes());
    after_length.extend_from_slice(&tail);
    let mut batch = Vec::new();
    put_i64(&mut batch, 0); // base offset: the broker assigns it
    put_i32(
        &mut batch,
        i32::try_from(after_length.len()).expect("small batch"),
    );
    batch.extend_from_slice(&after_length);
    batch
}

/// Sends one request and returns the response body after its header.
fn call(bootstrap: &str, api: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let address = bootstrap.split(',').next().expect("a broker address");
    let mut stream = TcpStream::connect(address).expect("connect to the broker");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let correlation = 7;
    let mut request = Vec::new();
    put_i16(&mut request, api);
    put_i16(&mut request, version);
    put_i32(&mut request, correlation);
    put_str(&mut request, "sluice-tests");
    request.extend_from_slice(body);
    let mut frame = Vec::new();
    put_i32(
        &mut frame,
        i32::try_from(request.len()).expect("small request"),
    );
    frame.extend_from_slice(&request);
    stream.write_all(&frame).expect("send the request");
    let mut size = [0; 4];
    stream.read_exact(&mut size).expect("the response size");
    let mut response = vec![0; usize::try_from(i32::from_be_bytes(size)).expect("a size")];
    stream.read_exact(&mut response).expect("the response");
    assert_eq!(
        i32::from_be_bytes(response[..4].try_into().expect("four bytes")),
        correlation,
        "the answer to this request"
    );
    response.split_off(4)
}

/// CRC-32C (Castagnoli), as record batches carry.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

fn put_i16(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_i16(out, i16::try_from(s.len()).expect("a short string"));
    out.extend_from_slice(s.as_bytes());
}

/// Reads big-endian fields in order.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("N bytes")
    }

    fn skip(&mut self, n: usize) {
        self.0 = &self.0[n..];
    }

    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take())
    }

    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take())
    }

    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_value() {
        // The check value of CRC-32C for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
