//! roost's own line protocol between login / post-login processes and the auth process.
//!
//! One message per line, tab-separated fields, `\n` terminated. Field text is escaped (`\\`,
//! `\t`, `\n`, `\r`), so a password may hold any character. Every request carries an id the
//! reply echoes, so one connection serves many clients of a login process (client_limit > 1).
//!
//! | request | replies |
//! |---|---|
//! | `AUTH<TAB>id<TAB>service<TAB>user<TAB>password<TAB>remote-ip` | `OK<TAB>id<TAB>user` or `FAIL<TAB>id<TAB>reason` |
//! | `USER<TAB>id<TAB>user` | `USER<TAB>id<TAB>user<TAB>key=value...` or `NOTFOUND<TAB>id<TAB>user` |
//!
//! The FAIL reason is for the log only; the client is told `-ERR [AUTH] Authentication failed.`
//! whatever it is. Lines are read with [`super::pop3::LineReader`] (bounded).

use std::collections::BTreeMap;
use std::net::IpAddr;

/// The longest line either side accepts.
pub const MAX_LINE: usize = 16 * 1024;

/// A request to auth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// Check a password (passdb).
    Auth {
        /// Echoed in the reply.
        id: u32,
        /// The asking service (pop3-login).
        service: String,
        /// The user name as given.
        user: String,
        /// The password.
        password: String,
        /// The client's address (for the log and penalties).
        remote_ip: IpAddr,
    },
    /// Look a user up (userdb), for the post-login process.
    User {
        /// Echoed in the reply.
        id: u32,
        /// The user.
        user: String,
    },
}

/// A reply from auth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthReply {
    /// The password matched.
    Ok {
        /// The request's id.
        id: u32,
        /// The canonical user name.
        user: String,
    },
    /// It did not (or the lookup failed).
    Fail {
        /// The request's id.
        id: u32,
        /// Why, for the log.
        reason: String,
    },
    /// The userdb's answer.
    User {
        /// The request's id.
        id: u32,
        /// The user.
        user: String,
        /// uid, gid, home and the other fields.
        fields: BTreeMap<String, String>,
    },
    /// The userdb does not know the user.
    NotFound {
        /// The request's id.
        id: u32,
        /// The user.
        user: String,
    },
}

/// A line that is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not UTF-8.
    #[error("auth protocol: line is not UTF-8")]
    NotUtf8,
    /// Unknown first word.
    #[error("auth protocol: unknown message {0:?}")]
    Unknown(String),
    /// Wrong number of fields.
    #[error("auth protocol: {0} has the wrong number of fields")]
    Fields(&'static str),
    /// A field is malformed (bad escape, id, address or key=value).
    #[error("auth protocol: {0} has a malformed {1}")]
    Field(&'static str, &'static str),
}

/// Escapes a field.
pub fn escape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    for c in field.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`escape`]; `None` for a dangling or unknown escape.
pub fn unescape(field: &str) -> Option<String> {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '\\' => '\\',
            't' => '\t',
            'n' => '\n',
            'r' => '\r',
            _ => return None,
        });
    }
    Some(out)
}

fn split(line: &[u8]) -> Result<Vec<&str>, WireError> {
    let line = std::str::from_utf8(line).map_err(|_| WireError::NotUtf8)?;
    Ok(line.split('\t').collect())
}

fn text(what: &'static str, field: &str) -> Result<String, WireError> {
    unescape(field).ok_or(WireError::Field(what, "escape"))
}

fn id(what: &'static str, field: &str) -> Result<u32, WireError> {
    field.parse().map_err(|_| WireError::Field(what, "id"))
}

impl AuthRequest {
    /// The line, `\n` included.
    pub fn encode(&self) -> String {
        match self {
            AuthRequest::Auth {
                id,
                service,
                user,
                password,
                remote_ip,
            } => format!(
                "AUTH\t{id}\t{}\t{}\t{}\t{remote_ip}\n",
                escape(service),
                escape(user),
                escape(password)
            ),
            AuthRequest::User { id, user } => format!("USER\t{id}\t{}\n", escape(user)),
        }
    }

    /// Parses a line (without `\n`).
    pub fn parse(line: &[u8]) -> Result<AuthRequest, WireError> {
        let f = split(line)?;
        match f[0] {
            "AUTH" if f.len() == 6 => Ok(AuthRequest::Auth {
                id: id("AUTH", f[1])?,
                service: text("AUTH", f[2])?,
                user: text("AUTH", f[3])?,
                password: text("AUTH", f[4])?,
                remote_ip: f[5]
                    .parse()
                    .map_err(|_| WireError::Field("AUTH", "address"))?,
            }),
            "AUTH" => Err(WireError::Fields("AUTH")),
            "USER" if f.len() == 3 => Ok(AuthRequest::User {
                id: id("USER", f[1])?,
                user: text("USER", f[2])?,
            }),
            "USER" => Err(WireError::Fields("USER")),
            other => Err(WireError::Unknown(other.chars().take(32).collect())),
        }
    }
}

impl AuthReply {
    /// The line, `\n` included.
    pub fn encode(&self) -> String {
        match self {
            AuthReply::Ok { id, user } => format!("OK\t{id}\t{}\n", escape(user)),
            AuthReply::Fail { id, reason } => format!("FAIL\t{id}\t{}\n", escape(reason)),
            AuthReply::User { id, user, fields } => {
                let mut line = format!("USER\t{id}\t{}", escape(user));
                for (k, v) in fields {
                    line.push('\t');
                    line.push_str(&escape(k));
                    line.push('=');
                    line.push_str(&escape(v));
                }
                line.push('\n');
                line
            }
            AuthReply::NotFound { id, user } => format!("NOTFOUND\t{id}\t{}\n", escape(user)),
        }
    }

    /// Parses a line (without `\n`).
    pub fn parse(line: &[u8]) -> Result<AuthReply, WireError> {
        let f = split(line)?;
        match f[0] {
            "OK" if f.len() == 3 => Ok(AuthReply::Ok {
                id: id("OK", f[1])?,
                user: text("OK", f[2])?,
            }),
            "FAIL" if f.len() == 3 => Ok(AuthReply::Fail {
                id: id("FAIL", f[1])?,
                reason: text("FAIL", f[2])?,
            }),
            "NOTFOUND" if f.len() == 3 => Ok(AuthReply::NotFound {
                id: id("NOTFOUND", f[1])?,
                user: text("NOTFOUND", f[2])?,
            }),
            "USER" if f.len() >= 3 => {
                let mut fields = BTreeMap::new();
                for kv in &f[3..] {
                    // Keys never contain '=' (they are setting names), so the first one splits.
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or(WireError::Field("USER", "key=value"))?;
                    fields.insert(text("USER", k)?, text("USER", v)?);
                }
                Ok(AuthReply::User {
                    id: id("USER", f[1])?,
                    user: text("USER", f[2])?,
                    fields,
                })
            }
            "OK" | "FAIL" | "NOTFOUND" | "USER" => Err(WireError::Fields("reply")),
            other => Err(WireError::Unknown(other.chars().take(32).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::pop3::LineReader;
    use proptest::prelude::*;

    #[test]
    fn requests_and_replies_round_trip_through_the_line_reader() {
        let req = AuthRequest::Auth {
            id: 7,
            service: "pop3-login".into(),
            user: "demo".into(),
            password: "p\\a\ts\ns\r".into(),
            remote_ip: "::1".parse().expect("ip"),
        };
        let reply = AuthReply::User {
            id: 7,
            user: "demo".into(),
            fields: [
                ("uid".to_owned(), "vmail".to_owned()),
                ("home".into(), "/m/demo".into()),
            ]
            .into_iter()
            .collect(),
        };
        let mut reader = LineReader::new(MAX_LINE);
        reader.feed(req.encode().as_bytes());
        reader.feed(reply.encode().as_bytes());
        let line = reader.next_line().expect("a line").expect("short");
        assert_eq!(AuthRequest::parse(&line), Ok(req));
        let line = reader.next_line().expect("a line").expect("short");
        assert_eq!(AuthReply::parse(&line), Ok(reply));
    }

    #[test]
    fn malformed_lines_are_typed_errors() {
        assert_eq!(
            AuthRequest::parse(b"AUTH\t1"),
            Err(WireError::Fields("AUTH"))
        );
        assert_eq!(
            AuthRequest::parse(b"USER\tx\tdemo"),
            Err(WireError::Field("USER", "id"))
        );
        assert_eq!(
            AuthRequest::parse(b"USER\t1\tbad\\q"),
            Err(WireError::Field("USER", "escape"))
        );
        assert_eq!(
            AuthRequest::parse(b"AUTH\t1\ts\tu\tp\tnot-an-ip"),
            Err(WireError::Field("AUTH", "address"))
        );
        assert_eq!(
            AuthReply::parse(b"HELLO"),
            Err(WireError::Unknown("HELLO".into()))
        );
        assert_eq!(
            AuthReply::parse(b"USER\t1\tu\tnoequals"),
            Err(WireError::Field("USER", "key=value"))
        );
    }

    proptest! {
        #[test]
        fn any_strings_round_trip(id in any::<u32>(), user in ".*", password in ".*", reason in ".*") {
            let req = AuthRequest::Auth {
                id,
                service: "pop3-login".into(),
                user: user.clone(),
                password,
                remote_ip: "127.0.0.1".parse().expect("ip"),
            };
            let line = req.encode();
            prop_assert_eq!(line.matches('\n').count(), 1);
            prop_assert_eq!(AuthRequest::parse(line.trim_end_matches('\n').as_bytes()), Ok(req));
            let reply = AuthReply::Fail { id, reason };
            let line = reply.encode();
            prop_assert_eq!(AuthReply::parse(line.trim_end_matches('\n').as_bytes()), Ok(reply));
        }

        #[test]
        fn random_bytes_never_panic(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = AuthRequest::parse(&line);
            let _ = AuthReply::parse(&line);
        }
    }
}
