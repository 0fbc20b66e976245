//! The status record of reference §1.4: what a child tells the master about its free slots.
//!
//! A record is three 32-bit fields in native byte order, written with one `write()` so the pipe
//! keeps it whole: `pid`, the process `uid` the master gave the child (so a record from a
//! recycled pid is told apart from one of the live process), and `available_count`. The master
//! reads at most [`STATUS_READ_CHUNK`] bytes at a time, a multiple of the record size, so whole
//! records never straddle two reads; a read whose length is not a multiple of 12 means something
//! wrote a partial record, and the whole chunk is discarded (§1.4: "service sent partial status
//! update (N bytes)").

use thiserror::Error;

use crate::ids::{Pid, ProcessUid};

/// The size of one encoded record.
pub const STATUS_RECORD_LEN: usize = 12;

/// The most the master reads from a status pipe at once: 85 whole records (§1.4, §8).
pub const STATUS_READ_CHUNK: usize = 85 * STATUS_RECORD_LEN;

/// One status record.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct StatusRecord {
    /// The writer's pid.
    pub pid: Pid,
    /// The process uid the master gave the writer (`GENERATION` in the original).
    pub uid: ProcessUid,
    /// The writer's free slots.
    pub available_count: u32,
}

impl StatusRecord {
    /// The 12 bytes the child writes, in one `write()`.
    pub fn encode(&self) -> [u8; STATUS_RECORD_LEN] {
        let mut out = [0u8; STATUS_RECORD_LEN];
        out[0..4].copy_from_slice(&self.pid.0.to_ne_bytes());
        out[4..8].copy_from_slice(&self.uid.0.to_ne_bytes());
        out[8..12].copy_from_slice(&self.available_count.to_ne_bytes());
        out
    }

    /// The record these 12 bytes encode. Every bit pattern is a record; whether its pid and uid
    /// belong to a live process is the master's question.
    pub fn decode(bytes: &[u8; STATUS_RECORD_LEN]) -> StatusRecord {
        let field = |at: usize| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        StatusRecord {
            pid: Pid(i32::from_ne_bytes(field(0))),
            uid: ProcessUid(u32::from_ne_bytes(field(4))),
            available_count: u32::from_ne_bytes(field(8)),
        }
    }
}

/// A chunk read from a status pipe was not a whole number of records; all of it is discarded.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Error)]
#[error("service sent partial status update ({bytes} bytes)")]
pub struct PartialStatus {
    /// How many bytes the read returned.
    pub bytes: usize,
}

/// The records of one chunk, in the order they were written.
#[derive(Clone, Debug)]
pub struct StatusRecords<'a> {
    /// The records not yet yielded.
    chunks: core::slice::ChunksExact<'a, u8>,
}

impl Iterator for StatusRecords<'_> {
    type Item = StatusRecord;

    fn next(&mut self) -> Option<StatusRecord> {
        let chunk = self.chunks.next()?;
        let bytes: &[u8; STATUS_RECORD_LEN] = chunk
            .try_into()
            .expect("chunks_exact yields slices of exactly STATUS_RECORD_LEN bytes");
        Some(StatusRecord::decode(bytes))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for StatusRecords<'_> {}

/// Decodes one read from a status pipe (§1.4). A chunk whose length is not a multiple of
/// [`STATUS_RECORD_LEN`] is rejected whole, as the original does: the driver reports it to the
/// master as `Input::StatusPartial`. An empty chunk yields no record (EOF is the driver's
/// business).
pub fn decode_chunk(chunk: &[u8]) -> Result<StatusRecords<'_>, PartialStatus> {
    if !chunk.len().is_multiple_of(STATUS_RECORD_LEN) {
        return Err(PartialStatus { bytes: chunk.len() });
    }
    Ok(StatusRecords {
        chunks: chunk.chunks_exact(STATUS_RECORD_LEN),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_record_is_three_native_u32_fields_section_1_4() {
        let record = StatusRecord {
            pid: Pid(4242),
            uid: ProcessUid(7),
            available_count: 1000,
        };
        let bytes = record.encode();
        assert_eq!(&bytes[0..4], &4242i32.to_ne_bytes());
        assert_eq!(&bytes[4..8], &7u32.to_ne_bytes());
        assert_eq!(&bytes[8..12], &1000u32.to_ne_bytes());
        assert_eq!(StatusRecord::decode(&bytes), record);
    }

    #[test]
    fn a_partial_chunk_is_rejected_whole_section_1_4() {
        let mut chunk = StatusRecord {
            pid: Pid(1),
            uid: ProcessUid(2),
            available_count: 3,
        }
        .encode()
        .to_vec();
        chunk.extend_from_slice(&[0, 1, 2, 3, 4]);
        let err = decode_chunk(&chunk).expect_err("17 bytes are not whole records");
        assert_eq!(err, PartialStatus { bytes: 17 });
        assert_eq!(
            err.to_string(),
            "service sent partial status update (17 bytes)"
        );
    }

    #[test]
    fn the_read_chunk_holds_85_whole_records_section_8() {
        assert_eq!(STATUS_READ_CHUNK, 1020);
        assert_eq!(STATUS_READ_CHUNK % STATUS_RECORD_LEN, 0);
        assert_eq!(decode_chunk(&[]).map(|r| r.count()), Ok(0));
    }

    proptest! {
        #[test]
        fn records_round_trip_in_order(raw in proptest::collection::vec((any::<i32>(), any::<u32>(), any::<u32>()), 0..90)) {
            let records: Vec<StatusRecord> = raw
                .iter()
                .map(|&(pid, uid, available_count)| StatusRecord { pid: Pid(pid), uid: ProcessUid(uid), available_count })
                .collect();
            let chunk: Vec<u8> = records.iter().flat_map(|r| r.encode()).collect();
            let decoded: Vec<StatusRecord> = decode_chunk(&chunk).expect("whole records").collect();
            prop_assert_eq!(decoded, records);
        }

        #[test]
        fn any_bytes_decode_or_are_rejected_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            match decode_chunk(&bytes) {
                Ok(records) => prop_assert_eq!(records.count(), bytes.len() / STATUS_RECORD_LEN),
                Err(PartialStatus { bytes: n }) => {
                    prop_assert_eq!(n, bytes.len());
                    prop_assert!(!n.is_multiple_of(STATUS_RECORD_LEN));
                }
            }
        }
    }
}
