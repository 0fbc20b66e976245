//! The control protocol's decoders, both directions, never panic on any bytes, however split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost_core::wire::control::{ReplyDecoder, RequestDecoder};

fuzz_target!(|input: (u8, &[u8])| {
    let (split, data) = input;
    let at = usize::from(split).min(data.len());
    let mut requests = RequestDecoder::new();
    requests.feed(&data[..at]);
    while let Some(result) = requests.next_request() {
        if result.is_err() && requests.is_failed() {
            break;
        }
    }
    requests.feed(&data[at..]);
    while let Some(result) = requests.next_request() {
        if result.is_err() && requests.is_failed() {
            break;
        }
    }
    let mut replies = ReplyDecoder::new();
    replies.feed(data);
    while let Some(result) = replies.next_reply() {
        if result.is_err() {
            break;
        }
    }
});
