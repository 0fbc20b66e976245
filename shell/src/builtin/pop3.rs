//! The `pop3` built-in: the post-login process. It takes logged-in clients handed over on its
//! `login/pop3` listener ([`super::handoff`]), looks the user up in auth's userdb, becomes the
//! user (as root), registers the session with anvil (mail_max_userip_connections), and serves
//! [`crate::mail::pop3::Session`] over the user's Maildir.
//!
//! One uid per process (core's `post_login` rule): a process started as root takes the uid of
//! its first user for good. A later client of another uid is passed on to the listener again (at
//! most [`MAX_HOPS`] times) and the process stops accepting, so whatever service_count says, no
//! process ever serves two uids.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use roost_core::post_login::{UidBinding, UidDecision, MAX_HOPS};

use super::conn::{Conn, Stream};
use super::handoff::{self, Handoff};
use super::server::{self, Service};
use super::{error, info, Start};
use crate::mail::anvil::DEFAULT_MAX_USERIP_CONNECTIONS;
use crate::mail::authwire::{AuthReply, AuthRequest};
use crate::mail::maildir::Maildir;
use crate::mail::pop3::{BodyEncoder, LineReader, Mailbox, Session, SessionReply, MAX_LINE};

/// A logged-in client that sends nothing for this long is disconnected (the original's 10
/// minutes).
const AUTOLOGOUT: Duration = Duration::from_secs(600);

/// How long a peer (login process, auth, anvil) may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

struct Pop3Service {
    start: Start,
    /// The uid this process became (root only): core's rule of one uid per process.
    binding: UidBinding,
    /// A client of another uid was passed on: accept nothing more.
    retiring: bool,
    /// The anvil connection, in blocking mode.
    anvil: Option<BufReader<UnixStream>>,
    next_id: u32,
}

/// One logged-in client.
pub struct Pop3Client {
    user: String,
    remote_ip: Option<IpAddr>,
    session: Session<Maildir>,
    lines: LineReader,
    /// A RETR/TOP reply being streamed.
    body: Option<(Box<dyn Read + Send>, BodyEncoder)>,
    /// QUIT (or too many errors) was answered: close once the reply is out.
    closing: bool,
    /// Registered with anvil.
    counted: bool,
}

/// The userdb's fields of a user.
type Fields = std::collections::BTreeMap<String, String>;

/// The uid and gid of the userdb's `uid` (a number or a name) and `gid` fields. auth sends
/// numbers: with both given, no user database is read here.
fn resolve_identity(uid: &str, gid: Option<&String>) -> Result<(u32, u32), Refusal> {
    match (uid.parse::<u32>(), gid) {
        (Ok(uid), Some(gid)) => Ok((uid, resolve_group(gid).map_err(switch_failed)?)),
        _ => {
            let user = resolve_user(uid).map_err(switch_failed)?;
            match gid {
                Some(gid) => Ok((user.0, resolve_group(gid).map_err(switch_failed)?)),
                None => Ok(user),
            }
        }
    }
}

/// A refusal for a user this process could not become.
fn switch_failed(log: String) -> Refusal {
    Refusal {
        client_text: "[SYS/TEMP] Internal error switching user",
        log,
    }
}

/// Why a handed-over client could not be served; the text goes to the client after `-ERR `.
struct Refusal {
    client_text: &'static str,
    log: String,
}

impl Pop3Service {
    fn anvil_request(&mut self, line: &str, expect_reply: bool) -> Option<String> {
        let anvil = self.anvil.as_mut()?;
        if anvil.get_mut().write_all(line.as_bytes()).is_err() {
            error("anvil connection lost");
            self.anvil = None;
            return None;
        }
        if !expect_reply {
            return Some(String::new());
        }
        let mut reply = String::new();
        match anvil.read_line(&mut reply) {
            Ok(n) if n > 0 => Some(reply.trim_end().to_owned()),
            _ => {
                error("anvil did not answer");
                self.anvil = None;
                None
            }
        }
    }

    fn userdb_lookup(&mut self, user: &str) -> Result<Fields, Refusal> {
        let path = self.start.socket_path("auth-userdb");
        let temp = |log: String| Refusal {
            client_text: "[SYS/TEMP] Temporary user lookup failure",
            log,
        };
        let mut stream = UnixStream::connect(&path)
            .map_err(|e| temp(format!("connect({}) failed: {e}", path.display())))?;
        let _ = stream.set_read_timeout(Some(PEER_TIMEOUT));
        self.next_id = self.next_id.wrapping_add(1);
        let request = AuthRequest::User {
            id: self.next_id,
            user: user.to_owned(),
        };
        stream
            .write_all(request.encode().as_bytes())
            .map_err(|e| temp(format!("userdb request failed: {e}")))?;
        let mut line = Vec::new();
        BufReader::new(&mut stream)
            .read_until(b'\n', &mut line)
            .map_err(|e| temp(format!("userdb lookup timed out or failed: {e}")))?;
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        match AuthReply::parse(line) {
            Ok(AuthReply::User { fields, .. }) => Ok(fields),
            Ok(AuthReply::NotFound { .. }) => Err(Refusal {
                client_text: "[SYS/PERM] User does not exist",
                log: format!("userdb: user {user} not found"),
            }),
            Ok(other) => Err(temp(format!("unexpected userdb reply {other:?}"))),
            Err(e) => Err(temp(format!("userdb reply: {e}"))),
        }
    }

    /// Applies core's rule (`post_login::UidBinding`) to a client of the user of `fields`,
    /// passed on `hops` times: becomes the user's uid and gid when the rule says so, or says
    /// why not.
    fn become_user(&mut self, fields: &Fields, hops: u32) -> Result<UidDecision, Refusal> {
        let as_root = nix::unistd::geteuid().is_root();
        let user = match fields.get("uid") {
            // Unprivileged, nothing is switched: the name need not even resolve.
            Some(uid_text) if as_root || self.binding.bound().is_some() => {
                Some(resolve_identity(uid_text, fields.get("gid"))?)
            }
            _ => None,
        };
        let decision = self.binding.decide(user.map(|(uid, _)| uid), hops, as_root);
        if let (UidDecision::Become, Some((uid, gid))) = (decision, user) {
            let gid = nix::unistd::Gid::from_raw(gid);
            nix::unistd::setgroups(&[gid])
                .and_then(|()| nix::unistd::setgid(gid))
                .and_then(|()| nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)))
                .map_err(|e| switch_failed(format!("setuid({uid}) failed: {e}")))?;
            self.binding.bind(uid);
        }
        Ok(decision)
    }

    /// Passes a client this process cannot serve (another uid) on to the listener again,
    /// with its hop count after this pass.
    fn pass_on(
        &mut self,
        mut handoff: Handoff,
        hops: u32,
        client: &OwnedFd,
    ) -> Result<(), Refusal> {
        handoff.hops = hops;
        let refuse = |log: String| Refusal {
            client_text: "[SYS/TEMP] Internal error handing over the session",
            log,
        };
        let path = self.start.socket_path(&listener_path(&self.start));
        let stream = UnixStream::connect(&path)
            .map_err(|e| refuse(format!("connect({}): {e}", path.display())))?;
        // No waiting for the answer: the process that takes it may be one the master has yet
        // to start, and this one accepts nothing more. The fd in flight outlives our end.
        handoff::send(stream.as_raw_fd(), &handoff, client.as_raw_fd())
            .map_err(|e| refuse(format!("pass on: {e}")))?;
        info(&format!(
            "user=<{}>: served as another uid here: passed on to another process",
            handoff.user
        ));
        // Accept nothing more; exit once the current clients are done. The master starts
        // fresh processes for what waits.
        self.retiring = true;
        Ok(())
    }

    /// Serves a handed-over client: `Ok(None)` when it was passed on, `Err` with the client
    /// back when it is refused.
    fn serve_handoff(
        &mut self,
        handoff: Handoff,
        client: OwnedFd,
    ) -> Result<Option<(Conn, Pop3Client)>, (Refusal, OwnedFd)> {
        let fields = match self.userdb_lookup(&handoff.user) {
            Ok(fields) => fields,
            Err(refusal) => return Err((refusal, client)),
        };
        match self.become_user(&fields, handoff.hops) {
            Ok(UidDecision::Serve | UidDecision::Become) => {}
            Ok(UidDecision::PassOn { hops }) => {
                return match self.pass_on(handoff, hops, &client) {
                    Ok(()) => Ok(None),
                    Err(refusal) => Err((refusal, client)),
                };
            }
            Ok(UidDecision::Refuse) => {
                let log = format!(
                    "user {} passed on {MAX_HOPS} times: no process for its uid",
                    handoff.user
                );
                return Err((
                    Refusal {
                        client_text: "[SYS/TEMP] Internal error handing over the session",
                        log,
                    },
                    client,
                ));
            }
            Err(refusal) => return Err((refusal, client)),
        }
        let home = fields.get("home").cloned().unwrap_or_default();
        let location = fields
            .get("mail")
            .cloned()
            .unwrap_or_else(|| self.start.global("mail_location", ""));
        let root = match maildir_root(&location, &home, &handoff.user) {
            Ok(root) => root,
            Err(log) => {
                return Err((
                    Refusal {
                        client_text: "[SYS/TEMP] Mailbox is not configured",
                        log,
                    },
                    client,
                ))
            }
        };
        let limit: u32 = self
            .start
            .global("mail_max_userip_connections", "")
            .parse()
            .unwrap_or(DEFAULT_MAX_USERIP_CONNECTIONS);
        let ip = handoff
            .remote_ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "0.0.0.0".to_owned());
        let service = self.start.env.service.clone();
        let pid = std::process::id();
        let mut counted = false;
        if let Some(reply) = self.anvil_request(
            &format!(
                "CONNECT\t{pid}\t{service}\t{}\t{ip}\t{limit}\n",
                escape_field(&handoff.user)
            ),
            true,
        ) {
            if reply.starts_with("LIMIT") {
                return Err((
                    Refusal {
                        client_text: "[IN-USE] Maximum number of connections from user+IP exceeded (mail_max_userip_connections)",
                        log: format!("user {} from {ip}: mail_max_userip_connections={limit} reached", handoff.user),
                    },
                    client,
                ));
            }
            counted = reply == "OK";
        }
        let maildir = match Maildir::open(&root) {
            Ok(maildir) => maildir,
            Err(e) => {
                if counted {
                    self.disconnect_anvil(&handoff.user, handoff.remote_ip);
                }
                return Err((
                    Refusal {
                        client_text: "[SYS/TEMP] Mailbox cannot be opened",
                        log: format!("user {}: {e}", handoff.user),
                    },
                    client,
                ));
            }
        };
        let stream = UnixStream::from(client);
        if stream.set_nonblocking(true).is_err() {
            return Ok(None);
        }
        let mut conn = Conn::new(
            Stream::Unix(mio::net::UnixStream::from_std(stream)),
            Vec::new(),
        );
        let session = Session::new(maildir);
        info(&format!(
            "Logged in: user=<{}>, {} messages, rip={ip}, pid={pid}, uid={}",
            handoff.user,
            session.mailbox().messages().len(),
            nix::unistd::getuid()
        ));
        let _ = conn.write(&session.greeting());
        let mut client = Pop3Client {
            user: handoff.user,
            remote_ip: handoff.remote_ip,
            session,
            lines: LineReader::new(MAX_LINE),
            body: None,
            closing: false,
            counted,
        };
        for line in handoff.pipelined {
            client.lines.feed(&line);
            client.lines.feed(b"\r\n");
        }
        if !self.run_lines(&mut client, &mut conn) {
            client.closing = true;
        }
        Ok(Some((conn, client)))
    }

    fn disconnect_anvil(&mut self, user: &str, remote_ip: Option<IpAddr>) {
        let ip = remote_ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "0.0.0.0".to_owned());
        let service = self.start.env.service.clone();
        self.anvil_request(
            &format!(
                "DISCONNECT\t{}\t{service}\t{}\t{ip}\n",
                std::process::id(),
                escape_field(user)
            ),
            false,
        );
    }

    /// Handles the complete lines while no reply is streaming. Returns false once the session
    /// is over (QUIT or too many errors).
    fn run_lines(&mut self, client: &mut Pop3Client, conn: &mut Conn) -> bool {
        while client.body.is_none() && !client.closing {
            let Some(line) = client.lines.next_line() else {
                return true;
            };
            let reply = match line {
                Ok(line) => client.session.handle_line(&line),
                Err(e) => client.session.handle_line_error(&e),
            };
            match reply {
                SessionReply::Send(bytes) => {
                    if conn.write(&bytes).is_err() {
                        return false;
                    }
                }
                SessionReply::Message {
                    header,
                    body,
                    encoder,
                } => {
                    if conn.write(&header).is_err() {
                        return false;
                    }
                    client.body = Some((body, encoder));
                    if !pump(client, conn) {
                        return false;
                    }
                }
                SessionReply::Quit(bytes) | SessionReply::Disconnect(bytes) => {
                    let _ = conn.write(&bytes);
                    client.closing = true;
                    return false;
                }
            }
        }
        true
    }
}

/// Streams the body being sent while the socket takes it. Returns false on an error (the reply
/// is cut and the connection closed: the client sees no final `.`, so it knows).
fn pump(client: &mut Pop3Client, conn: &mut Conn) -> bool {
    let mut chunk = vec![0u8; 64 * 1024];
    while conn.pending_out() == 0 {
        let Some((body, encoder)) = &mut client.body else {
            return true;
        };
        let mut out = Vec::with_capacity(chunk.len() + 1024);
        match body.read(&mut chunk) {
            Ok(0) => {
                encoder.finish(&mut out);
                client.body = None;
            }
            Ok(n) => {
                encoder.encode(&chunk[..n], &mut out);
                if encoder.is_stopped() {
                    encoder.finish(&mut out);
                    client.body = None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error(&format!(
                    "user=<{}>: reading a message failed: {e}",
                    client.user
                ));
                return false;
            }
        }
        if conn.write(&out).is_err() {
            return false;
        }
    }
    true
}

fn escape_field(text: &str) -> String {
    crate::mail::authwire::escape(text)
}

/// The unix listener this service takes handoffs on (its first), relative to base_dir.
fn listener_path(start: &Start) -> String {
    start
        .service
        .unix_listeners
        .first()
        .map(|l| l.path.clone())
        .unwrap_or_else(|| format!("login/{}", start.service.name))
}

/// The Maildir of `mail_location` (`maildir:~/Maildir`, `maildir:/var/mail/%u`, options after
/// `:` ignored), with `~` the user's home.
pub fn maildir_root(location: &str, home: &str, user: &str) -> Result<PathBuf, String> {
    let rest = location
        .strip_prefix("maildir:")
        .ok_or_else(|| format!("mail_location {location:?}: roost serves maildir: only"))?;
    let path = rest.split(':').next().unwrap_or("");
    let path = crate::mail::passdb::expand(path, user);
    let path = if let Some(tail) = path.strip_prefix('~') {
        if home.is_empty() {
            return Err(format!(
                "mail_location {location:?} needs a home, and the userdb gave {user} none"
            ));
        }
        format!("{home}{tail}")
    } else {
        path
    };
    if !path.starts_with('/') {
        return Err(format!("mail_location {location:?}: not an absolute path"));
    }
    Ok(PathBuf::from(path))
}

fn resolve_user(text: &str) -> Result<(u32, u32), String> {
    if let Ok(uid) = text.parse::<u32>() {
        let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(uid, |u| u.gid.as_raw());
        return Ok((uid, gid));
    }
    match nix::unistd::User::from_name(text) {
        Ok(Some(user)) => Ok((user.uid.as_raw(), user.gid.as_raw())),
        _ => Err(format!("userdb: unknown user {text:?} in uid")),
    }
}

fn resolve_group(text: &str) -> Result<u32, String> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(text) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(format!("userdb: unknown group {text:?} in gid")),
    }
}

impl Service for Pop3Service {
    type Client = Pop3Client;

    fn accepted(&mut self, stream: UnixStream, _listener: usize) -> Option<(Conn, Pop3Client)> {
        let _ = stream.set_read_timeout(Some(PEER_TIMEOUT));
        let (handoff, client) = match handoff::receive(stream.as_raw_fd()) {
            Ok(received) => received,
            Err(e) => {
                error(&format!("handoff failed: {e}"));
                return None;
            }
        };
        let user = handoff.user.clone();
        let answer = |text: &str| {
            let _ = (&stream).write_all(text.as_bytes());
        };
        match self.serve_handoff(handoff, client) {
            Ok(Some(served)) => {
                answer("OK\n");
                Some(served)
            }
            Ok(None) => {
                answer("OK\n");
                None
            }
            Err((refusal, client)) => {
                error(&format!("user=<{user}>: {}", refusal.log));
                let mut file = std::fs::File::from(client);
                let _ = file.write_all(format!("-ERR {}\r\n", refusal.client_text).as_bytes());
                answer("OK\n");
                None
            }
        }
    }

    fn input(&mut self, client: &mut Pop3Client, conn: &mut Conn, input: &mut Vec<u8>) -> bool {
        client.lines.feed(input);
        input.clear();
        self.run_lines(client, conn) || (client.closing && conn.pending_out() > 0)
    }

    fn drained(&mut self, client: &mut Pop3Client, conn: &mut Conn) -> bool {
        if client.closing {
            return false;
        }
        if client.body.is_some() && !pump(client, conn) {
            return false;
        }
        self.run_lines(client, conn) || (client.closing && conn.pending_out() > 0)
    }

    fn wants_more(&self) -> bool {
        !self.retiring
    }

    fn idle_timeout(&self) -> Option<Duration> {
        Some(AUTOLOGOUT)
    }

    fn timed_out(&mut self, client: &mut Pop3Client, conn: &mut Conn) {
        info(&format!(
            "Disconnected for inactivity: user=<{}>",
            client.user
        ));
        let _ = conn.write(b"-ERR Disconnected for inactivity.\r\n");
    }

    fn done(&self) -> bool {
        self.retiring
    }

    fn closed(&mut self, client: Pop3Client) {
        if client.counted {
            self.disconnect_anvil(&client.user, client.remote_ip);
        }
        info(&format!("Disconnected: user=<{}>", client.user));
    }
}

/// `roost --builtin pop3`.
pub fn main() -> i32 {
    super::main_of("pop3", |start| {
        start.restrict("pop3")?;
        let anvil = start.anvil_fd.and_then(|fd| {
            // SAFETY: the master gave us this fd for our own use.
            let stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            stream.set_nonblocking(false).ok()?;
            stream.set_read_timeout(Some(PEER_TIMEOUT)).ok()?;
            Some(BufReader::new(stream))
        });
        let config = start.child_config(false);
        let env = start.env.clone();
        let mut service = Pop3Service {
            start,
            binding: UidBinding::default(),
            retiring: false,
            anvil,
            next_id: 0,
        };
        server::run(&env, config, &mut service).map_err(|e| format!("pop3: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_location_becomes_the_maildir_of_the_user() {
        assert_eq!(
            maildir_root("maildir:~/Maildir", "/home/demo", "demo"),
            Ok(PathBuf::from("/home/demo/Maildir"))
        );
        assert_eq!(
            maildir_root("maildir:/var/mail/%u:LAYOUT=fs", "", "ann"),
            Ok(PathBuf::from("/var/mail/ann"))
        );
        assert!(maildir_root("mbox:~/mail", "/home/x", "x").is_err());
        assert!(maildir_root("maildir:~/Maildir", "", "x")
            .expect_err("no home")
            .contains("needs a home"));
        assert!(maildir_root("maildir:Maildir", "/h", "x").is_err());
    }
}
