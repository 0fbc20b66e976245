//! Text formats of the mail host: passwd-file lines and anvil's request protocol never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::mail::anvil::Decoder;
use roost::mail::passdb::{PasswdFile, Scheme};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = PasswdFile::parse("fuzz-passwd", &text, Scheme::Plain);
    let mut decoder = Decoder::default();
    let _ = decoder.feed(data);
});
