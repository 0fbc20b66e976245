//! A POP3 login connection: any bytes, split anywhere, through the bounded line reader into the
//! login machine, never panic; no password is handed to auth over plaintext when that is
//! disallowed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::mail::pop3::{LineReader, Login, LoginOutput, LoginSettings, MAX_LINE};

fuzz_target!(|input: (bool, bool, Vec<Vec<u8>>)| {
    let (tls_available, disable_plaintext_auth, chunks) = input;
    let settings = LoginSettings { tls_available, tls_active: false, secured: false, disable_plaintext_auth };
    let mut login = Login::new(settings);
    let mut reader = LineReader::new(MAX_LINE);
    for chunk in chunks.iter().take(64) {
        reader.feed(chunk);
        while let Some(line) = reader.next_line() {
            match line {
                Ok(line) => login.handle_line(&line),
                Err(error) => login.handle_line_error(&error),
            }
            while let Some(output) = login.poll_output() {
                if let LoginOutput::Authenticate { .. } = output {
                    assert!(!disable_plaintext_auth, "a password over plaintext reached auth");
                    login.auth_failed();
                }
            }
        }
    }
});
