//! Stored and queued formats, and the rule that keeps them readable across builds.
//!
//! Every record this project stores or queues carries the version of its format:
//! beside the bytes where the carrier has a place for it (a DynamoDB attribute, the
//! `v` of an SQS body's JSON), else as the first byte of the bytes ([`to_tagged`], the
//! embedded store). A reader decodes by that version, with one decoder per version it
//! knows ([`Versioned::decode_format`]), so a record written by any earlier build
//! still reads; a record of a *newer* version is not an error of the data but of this
//! build ([`FormatError::Newer`]): hosts leave the message for a retry — for a build
//! that reads it, during a rolling deploy — and never dead-letter it or overwrite the
//! record.
//!
//! The compatibility rule (docs/DESIGN.md, "Formats across builds"): a build reads
//! everything the two previous releases wrote, and writes a new format only once the
//! previous release reads it. Golden fixtures of every format's real bytes are read by
//! `tests/tests/formats.rs`, forever.

/// What `statefun-lambda verify` found in one table or queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Found {
    /// Where: `statefun.redb state`, `table <name>`, `queue <name>`.
    pub source: String,
    /// Records that decoded.
    pub read: u64,
    /// Records that did not, with why.
    pub undecodable: Vec<Undecodable>,
    /// Records the source holds that were not reached (a queue's messages hidden by
    /// another reader, or behind in-flight ones in their FIFO group).
    pub not_reached: u64,
}

/// One record or body this build cannot decode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Undecodable {
    /// Its key, row or message id, as people read it.
    pub key: String,
    pub reason: String,
}

impl Found {
    pub fn new(source: impl Into<String>) -> Self {
        Found {
            source: source.into(),
            read: 0,
            undecodable: Vec::new(),
            not_reached: 0,
        }
    }

    /// Counts one record: read, or not with why.
    pub fn add(&mut self, key: impl FnOnce() -> String, result: Result<(), String>) {
        match result {
            Ok(()) => self.read += 1,
            Err(reason) => self.undecodable.push(Undecodable { key: key(), reason }),
        }
    }
}

/// A record this build cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Written by a newer build: leave it for a build that reads it.
    #[error(
        "{what} is in format {found}, newer than this build reads (up to {newest}): \
         written by a newer build; left for a build that reads it"
    )]
    Newer {
        what: &'static str,
        found: u32,
        newest: u32,
    },
    /// Not a record of the format it claims (damaged, or not ours).
    #[error("{what} in format {format} does not decode: {reason}")]
    Corrupt {
        what: &'static str,
        format: u32,
        reason: String,
    },
}

impl FormatError {
    /// Whether a newer build wrote it (retry; never dead-letter, never overwrite).
    pub fn is_newer(&self) -> bool {
        matches!(self, FormatError::Newer { .. })
    }
}

/// A stored or queued record with versioned formats.
pub trait Versioned: Sized {
    /// What it is, for errors ("instance record").
    const WHAT: &'static str;
    /// The newest format this build reads, and the one it writes.
    const FORMAT: u32;

    /// The record in format [`Self::FORMAT`].
    fn encode(&self) -> Vec<u8>;

    /// The record in `format`, if this build writes it (a rolling deploy writes the
    /// previous release's format until told otherwise).
    fn encode_as(&self, format: u32) -> Option<Vec<u8>> {
        (format == Self::FORMAT).then(|| self.encode())
    }

    /// Reads a record of `format` (`1..=FORMAT`): each older format is migrated to
    /// today's value.
    fn decode_current(format: u32, bytes: &[u8]) -> Result<Self, FormatError>;

    /// Reads a record whose format is `format`, refusing a newer one.
    fn decode_format(format: u32, bytes: &[u8]) -> Result<Self, FormatError> {
        match format {
            0 => Err(FormatError::Corrupt {
                what: Self::WHAT,
                format,
                reason: "format 0 does not exist".into(),
            }),
            f if f > Self::FORMAT => Err(FormatError::Newer {
                what: Self::WHAT,
                found: f,
                newest: Self::FORMAT,
            }),
            f => Self::decode_current(f, bytes),
        }
    }
}

/// A postcard decode, as a format's decoder.
pub fn postcard<T: for<'de> serde::Deserialize<'de>>(
    what: &'static str,
    format: u32,
    bytes: &[u8],
) -> Result<T, FormatError> {
    postcard::from_bytes(bytes).map_err(|e| FormatError::Corrupt {
        what,
        format,
        reason: e.to_string(),
    })
}

/// The record with its format as the first byte (for carriers without a place for it).
pub fn to_tagged<T: Versioned>(record: &T) -> Vec<u8> {
    debug_assert!(T::FORMAT < 256, "a tag is one byte");
    let body = record.encode();
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(T::FORMAT as u8);
    out.extend_from_slice(&body);
    out
}

/// Reads a record written by [`to_tagged`].
pub fn from_tagged<T: Versioned>(bytes: &[u8]) -> Result<T, FormatError> {
    match bytes.split_first() {
        Some((&tag, body)) => T::decode_format(u32::from(tag), body),
        None => Err(FormatError::Corrupt {
            what: T::WHAT,
            format: 0,
            reason: "no bytes".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Two(u8, u8);

    impl Versioned for Two {
        const WHAT: &'static str = "pair";
        const FORMAT: u32 = 2;
        fn encode(&self) -> Vec<u8> {
            vec![self.0, self.1]
        }
        fn decode_current(format: u32, bytes: &[u8]) -> Result<Self, FormatError> {
            match (format, bytes) {
                // Format 1 had one field; the second reads as its default.
                (1, [a]) => Ok(Two(*a, 0)),
                (2, [a, b]) => Ok(Two(*a, *b)),
                _ => Err(FormatError::Corrupt {
                    what: Self::WHAT,
                    format,
                    reason: format!("{} bytes", bytes.len()),
                }),
            }
        }
    }

    #[test]
    fn a_reader_migrates_older_formats_and_refuses_newer_ones_as_newer() {
        assert_eq!(from_tagged::<Two>(&to_tagged(&Two(1, 2))), Ok(Two(1, 2)));
        assert_eq!(from_tagged::<Two>(&[1, 7]), Ok(Two(7, 0)));
        let newer = from_tagged::<Two>(&[3, 1, 2, 3]).unwrap_err();
        assert!(newer.is_newer(), "{newer}");
        assert!(newer.to_string().contains("format 3"), "{newer}");
        for bad in [&[][..], &[0, 1][..], &[2, 1][..]] {
            let e = from_tagged::<Two>(bad).unwrap_err();
            assert!(!e.is_newer(), "{e}");
        }
    }
}
