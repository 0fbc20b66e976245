//! PROXY protocol v1/v2 headers from a trusted peer: any bytes, split anywhere, decode to a
//! header or a clean error, never a panic and never more than the header's bound buffered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::mail::proxy::{ProxyDecoder, TrustedNetworks};

fuzz_target!(|input: (u8, &[u8])| {
    let (split, data) = input;
    let trusted: TrustedNetworks = "127.0.0.0/8 ::1/128".parse().expect("valid networks");
    let peer = "127.0.0.1:40000".parse().expect("address");
    let local = "127.0.0.1:110".parse().expect("address");
    let mut decoder = ProxyDecoder::new(peer, local, &trusted).expect("loopback is trusted");
    let at = usize::from(split).min(data.len());
    match decoder.feed(&data[..at]) {
        Ok(Some(_)) | Err(_) => return,
        Ok(None) => {}
    }
    let _ = decoder.feed(&data[at..]);
});
