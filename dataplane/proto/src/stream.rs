//! Streams and stream parts: names, validation and the 32-byte stream part key.
//!
//! A stream is `0x<owner address>/<path>` with 1..=100 partitions; a stream part is
//! `streamId#partition`. Everything on the wire and in the shards addresses a stream part by
//! its key, `blake3(stream part id)`, so the dataplane never parses names on the hot path.

use std::fmt;

/// Most partitions a stream may have (DESIGN.md §1).
pub const PARTITIONS_MAX: u32 = 100;
/// Longest path we accept after the owner address, in bytes.
pub const STREAM_PATH_LENGTH_MAX: usize = 255;

/// The 32-byte key of a stream part: `blake3("0xowner/path#partition")`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct StreamPartKey(pub [u8; 32]);

impl fmt::Debug for StreamPartKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamPartKey({})", hex::encode(&self.0[..8]))
    }
}

/// A validated stream part id such as `0xabc…/sensors/temp#3`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamPart {
    stream_id: String,
    partition: u32,
}

/// Why a stream or stream part name was rejected; the message says what a valid one is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamNameError(pub String);

impl fmt::Display for StreamNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StreamNameError {}

/// Checks a stream id (`0x` + 40 hex digits + `/` + path) and returns it lower-cased in the
/// owner part, which is the canonical form the key is computed from.
pub fn parse_stream_id(text: &str) -> Result<String, StreamNameError> {
    let bad = |why: &str| {
        StreamNameError(format!(
            "invalid stream id {text:?}: {why} (expected 0x<40 hex digits>/<path> with path characters - . / 0-9 A-Z a-z _)"
        ))
    };
    let (owner, path) = text.split_once('/').ok_or_else(|| bad("no '/' after the owner address"))?;
    let digits = owner.strip_prefix("0x").ok_or_else(|| bad("owner must start with 0x"))?;
    if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("owner must be 40 hex digits"));
    }
    if path.is_empty() || path.len() > STREAM_PATH_LENGTH_MAX {
        return Err(bad("path must be 1..=255 bytes"));
    }
    if !path.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'/' | b'_')) {
        return Err(bad("path has a character outside the allowed set"));
    }
    Ok(format!("0x{}/{}", digits.to_ascii_lowercase(), path))
}

impl StreamPart {
    /// Builds a stream part from a stream id and a partition number in `0..PARTITIONS_MAX`.
    pub fn new(stream_id: &str, partition: u32) -> Result<Self, StreamNameError> {
        let stream_id = parse_stream_id(stream_id)?;
        if partition >= PARTITIONS_MAX {
            return Err(StreamNameError(format!(
                "partition {partition} of {stream_id} is out of range: partitions are 0..{PARTITIONS_MAX}"
            )));
        }
        Ok(Self { stream_id, partition })
    }

    /// Parses `streamId#partition`; a missing `#partition` means partition 0.
    pub fn parse(text: &str) -> Result<Self, StreamNameError> {
        match text.rsplit_once('#') {
            Some((id, partition)) => {
                let partition = partition.parse::<u32>().map_err(|_| {
                    StreamNameError(format!("invalid stream part {text:?}: partition after '#' must be a number 0..{PARTITIONS_MAX}"))
                })?;
                Self::new(id, partition)
            }
            None => Self::new(text, 0),
        }
    }

    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The key every datagram of this stream part carries.
    pub fn key(&self) -> StreamPartKey {
        StreamPartKey(*blake3::hash(self.to_string().as_bytes()).as_bytes())
    }
}

impl fmt::Display for StreamPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.stream_id, self.partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: names are validated with errors that say what is expected, and the key is
    // blake3 of the canonical (lower-case owner) text.
    #[test]
    fn parses_and_keys_stream_parts() {
        let part = StreamPart::parse("0xF39FD6E51AAD88F6F4CE6AB8827279CFFFB92266/sensors/temp-1#3").unwrap();
        assert_eq!(part.to_string(), "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/sensors/temp-1#3");
        assert_eq!(part.key().0, *blake3::hash(part.to_string().as_bytes()).as_bytes());
        assert_eq!(StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/a").unwrap().partition(), 0);
        for bad in [
            "nope",
            "0x12/a",
            "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/",
            "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/a b",
            "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/a#100",
            "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/a#x",
        ] {
            assert!(StreamPart::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
