//! The `anvil` built-in: one process (process_limit = 1) holding [`crate::mail::anvil::Anvil`],
//! the connection table and the authentication penalty, for every process that talks to it:
//! the master (KILL when a process dies), each pop3-login and pop3 process (over the socket the
//! master connected for it) and `roost who`.

use std::time::Instant as StdInstant;

use roost_core::time::Instant;

use super::conn::Conn;
use super::error;
use super::server::{self, Service};
use crate::mail::anvil::{Anvil, Decoder, PenaltyPolicy};

struct AnvilService {
    anvil: Anvil,
    start: StdInstant,
}

impl AnvilService {
    fn now(&self) -> Instant {
        Instant::from_millis(self.start.elapsed().as_millis() as u64)
    }
}

impl Service for AnvilService {
    type Client = Decoder;

    fn accepted(
        &mut self,
        stream: std::os::unix::net::UnixStream,
        _listener: usize,
    ) -> Option<(Conn, Decoder)> {
        Some((server::unix_conn(stream)?, Decoder::default()))
    }

    fn input(&mut self, decoder: &mut Decoder, conn: &mut Conn, input: &mut Vec<u8>) -> bool {
        let now = self.now();
        let mut reply = String::new();
        for request in decoder.feed(input) {
            match request {
                Ok(request) => {
                    for line in self.anvil.handle(request, now) {
                        reply.push_str(&line);
                        reply.push('\n');
                    }
                }
                // A peer that speaks nonsense is told so and closed: it is a bug, not load.
                Err(e) => {
                    error(&format!("{e}"));
                    let _ = conn.write(format!("ERROR\t{e}\n").as_bytes());
                    return false;
                }
            }
        }
        input.clear();
        if cfg!(debug_assertions) {
            if let Err(violation) = self.anvil.check_invariants() {
                error(&format!("invariant violated: {violation}"));
            }
        }
        reply.is_empty() || conn.write(reply.as_bytes()).is_ok()
    }

    fn closed(&mut self, _client: Decoder) {}

    fn tick(&mut self, _now: Instant) {
        let now = self.now();
        self.anvil.prune(now);
    }
}

/// `roost --builtin anvil`.
pub fn main() -> i32 {
    super::main_of("anvil", |start| {
        start.restrict("anvil")?;
        let mut service = AnvilService {
            anvil: Anvil::new(PenaltyPolicy::default()),
            start: StdInstant::now(),
        };
        // anvil outlives idle periods: its table is its state (idle_kill is "never" anyway).
        server::run(&start.env, start.child_config(true), &mut service)
            .map_err(|e| format!("anvil: {e}"))
    })
}
