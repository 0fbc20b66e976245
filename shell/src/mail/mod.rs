//! The mail host's building blocks: POP3, Maildir, passdb, anvil, PROXY protocol and TLS.
//!
//! Each is sans-IO or works over `std::io` traits, so the built-in processes (pop3-login,
//! pop3, auth, anvil) stay thin drivers and every parser is unit-testable and fuzzable:
//!
//! - [`pop3`]: the command parser and bounded [`pop3::LineReader`]; the pre-login machine
//!   [`pop3::Login`] (greeting, CAPA, USER/PASS, AUTH PLAIN, STLS, the plaintext policy, the
//!   `Connection queue full` kill) and the post-login [`pop3::Session`] over a
//!   [`pop3::Mailbox`], whose message bodies stream through [`pop3::BodyEncoder`].
//! - [`maildir`]: the Maildir [`pop3::Mailbox`].
//! - [`passdb`]: passwd-file passdb and static / passwd-file userdb.
//! - [`authwire`]: roost's own login/post-login ↔ auth line protocol.
//! - [`anvil`]: the connection table, the per-IP failure penalty and their line protocol.
//! - [`proxy`]: PROXY protocol v1/v2 from haproxy_trusted_networks.
//! - [`tls`]: the rustls server configuration and the embedded default's certificate.
//!
//! A pop3-login driver's turn: read → [`proxy::ProxyDecoder::feed`] (haproxy listeners, until
//! complete) → TLS (`ssl = yes`) → [`pop3::LineReader::feed`] → [`pop3::Login::handle_line`] →
//! drain [`pop3::Login::poll_output`]: `Send` is written, `Authenticate` goes to auth after
//! anvil's `PENALTY-GET` delay (a failure is reported with `PENALTY-INC`), `StartTls` starts the
//! handshake (and drops buffered plaintext), `LoggedIn` hands the connection over with the
//! pipelined lines, `Disconnect` closes.

#![warn(missing_docs)]

pub mod anvil;
pub mod authwire;
pub mod maildir;
pub mod passdb;
pub mod pop3;
pub mod proxy;
pub mod tls;
