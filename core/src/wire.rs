//! Byte formats shared by the shell and the simulator.
//!
//! The status record (reference §1.4): three 32-bit fields in native byte order — pid, process
//! uid, available_count — written with one `write()` so a pipe delivers it whole. The master
//! reads chunks of whole records; a chunk that is not a whole number of records is discarded
//! entirely, as the original does, because a torn record cannot be trusted.

use crate::ids::{Pid, ProcessUid};

/// Bytes in one status record.
pub const STATUS_RECORD_SIZE: usize = 12;

/// The master reads status pipes in chunks of at most this many bytes (85 whole records).
pub const STATUS_READ_CHUNK: usize = 1020;

/// One status record.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StatusRecord {
    /// The child's pid.
    pub pid: Pid,
    /// Its process uid (`ROOST_PROCESS_UID`).
    pub uid: ProcessUid,
    /// Its free slots.
    pub available_count: u32,
}

impl StatusRecord {
    /// The record's bytes.
    pub fn encode(&self) -> [u8; STATUS_RECORD_SIZE] {
        let mut bytes = [0u8; STATUS_RECORD_SIZE];
        bytes[0..4].copy_from_slice(&self.pid.0.to_ne_bytes());
        bytes[4..8].copy_from_slice(&self.uid.0.to_ne_bytes());
        bytes[8..12].copy_from_slice(&self.available_count.to_ne_bytes());
        bytes
    }

    /// Decodes one record.
    pub fn decode(bytes: &[u8; STATUS_RECORD_SIZE]) -> StatusRecord {
        let word = |at: usize| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        StatusRecord {
            pid: Pid(i32::from_ne_bytes(word(0))),
            uid: ProcessUid(u32::from_ne_bytes(word(4))),
            available_count: u32::from_ne_bytes(word(8)),
        }
    }
}

/// A chunk that was not a whole number of records.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("partial status update ({bytes} bytes)")]
pub struct PartialStatus {
    /// The chunk's length.
    pub bytes: usize,
}

/// Decodes a chunk read from a status pipe: every record, or nothing if the chunk is torn.
pub fn decode_status_chunk(chunk: &[u8]) -> Result<Vec<StatusRecord>, PartialStatus> {
    if !chunk.len().is_multiple_of(STATUS_RECORD_SIZE) {
        return Err(PartialStatus { bytes: chunk.len() });
    }
    Ok(chunk
        .chunks_exact(STATUS_RECORD_SIZE)
        .map(|record| {
            let mut bytes = [0u8; STATUS_RECORD_SIZE];
            bytes.copy_from_slice(record);
            StatusRecord::decode(&bytes)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_chunk_is_discarded_whole() {
        let a = StatusRecord {
            pid: Pid(4242),
            uid: ProcessUid(7),
            available_count: 0,
        };
        let b = StatusRecord {
            pid: Pid(1),
            uid: ProcessUid(u32::MAX),
            available_count: 1000,
        };
        let mut chunk = a.encode().to_vec();
        chunk.extend_from_slice(&b.encode());
        assert_eq!(decode_status_chunk(&chunk), Ok(vec![a, b]));
        chunk.push(0);
        assert_eq!(
            decode_status_chunk(&chunk),
            Err(PartialStatus { bytes: 25 })
        );
        assert_eq!(decode_status_chunk(&[]), Ok(vec![]));
    }

    proptest::proptest! {
        #[test]
        fn no_chunk_makes_the_decoder_panic(chunk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let decoded = decode_status_chunk(&chunk);
            proptest::prop_assert_eq!(decoded.is_ok(), chunk.len() % STATUS_RECORD_SIZE == 0);
        }
    }
}
