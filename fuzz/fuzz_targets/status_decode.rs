//! Status records: any chunk decodes to whole records or is refused whole, and records
//! round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_core::wire::{decode_chunk, STATUS_RECORD_LEN};

fuzz_target!(|data: &[u8]| {
    match decode_chunk(data) {
        Ok(records) => {
            let records: Vec<_> = records.collect();
            assert_eq!(records.len() * STATUS_RECORD_LEN, data.len());
            let again: Vec<u8> = records.iter().flat_map(|r| r.encode()).collect();
            assert_eq!(again, data);
        }
        Err(partial) => assert_eq!(partial.bytes, data.len()),
    }
});
