//! The mail host's building blocks: POP3, Maildir, passdb, anvil, PROXY protocol and TLS.
//!
//! Each is sans-IO or works over `std::io` traits, so the built-in processes (pop3-login,
//! pop3, auth, anvil) stay thin and every parser is unit-testable and fuzzable.
pub mod anvil;
pub mod maildir;
pub mod passdb;
pub mod pop3;
pub mod proxy;
pub mod tls;
