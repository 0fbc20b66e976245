//! The anvil process's state and its line protocol, pure: no IO, time as an argument.
//!
//! State: the connection table (per service, user and remote IP: which pids hold how many
//! connections) and the authentication-failure penalty per remote IP. Invariants: a key is in
//! the table only with a positive count; the per-pid index holds exactly the same entries, so
//! `KILL pid` (the master saw the process die) drops everything the pid held without a scan;
//! the penalty table never exceeds [`PenaltyPolicy::max_entries`] and forgets an IP after a
//! quiet period. BTreeMaps only, so `who` listings are ordered and runs are deterministic.
//!
//! The protocol (roost's own, one request per line, tab separated, `\n` terminated):
//!
//! | request | reply |
//! |---|---|
//! | `CONNECT<TAB>pid<TAB>service<TAB>user<TAB>ip<TAB>limit` | `OK` or `LIMIT<TAB>count` (limit 0 = none) |
//! | `DISCONNECT<TAB>pid<TAB>service<TAB>user<TAB>ip` | none |
//! | `LOOKUP<TAB>service<TAB>user<TAB>ip` | `count` |
//! | `PENALTY-GET<TAB>ip` | `delay_ms` |
//! | `PENALTY-INC<TAB>ip` | none |
//! | `KILL<TAB>pid` | none |
//! | `WHO` | one `user<TAB>count<TAB>pid,pid<TAB>ip,ip` line per user, then an empty line |
//!
//! CONNECT checks and counts in one step, so two logins racing for the last slot cannot both
//! pass (the original's LOOKUP-then-CONNECT has that window).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use roost_core::ids::Pid;
use roost_core::time::Instant;

/// The default `mail_max_userip_connections`.
pub const DEFAULT_MAX_USERIP_CONNECTIONS: u32 = 10;

/// The longest request line accepted by [`Decoder`].
pub const MAX_REQUEST_LINE: usize = 1024;

/// What identifies a group of connections.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnKey {
    /// The service (pop3-login, pop3).
    pub service: String,
    /// The user name.
    pub user: String,
    /// The client's address (the real one when PROXY protocol is used).
    pub ip: IpAddr,
}

/// How the failure penalty grows and is forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PenaltyPolicy {
    /// The longest delay.
    pub max_delay: Duration,
    /// An IP without a failure for this long starts from zero again.
    pub quiet_period: Duration,
    /// The most IPs remembered; beyond it the least recently failing IP is forgotten.
    pub max_entries: usize,
}

impl Default for PenaltyPolicy {
    fn default() -> Self {
        PenaltyPolicy {
            max_delay: Duration::from_secs(15),
            quiet_period: Duration::from_secs(3600),
            max_entries: 65_536,
        }
    }
}

/// Failures of one IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Penalty {
    /// Failures counted so far.
    failures: u32,
    /// When the last one was counted.
    last: Instant,
}

/// The answer to CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// Counted.
    Accepted,
    /// The user already has `count` connections from this IP, the limit: not counted.
    Limit {
        /// The connections already there.
        count: u32,
    },
}

/// One line of the `who` listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoEntry {
    /// The user.
    pub user: String,
    /// Connections over all services and IPs.
    pub count: u32,
    /// The pids holding them.
    pub pids: Vec<Pid>,
    /// The remote IPs.
    pub ips: Vec<IpAddr>,
}

/// The anvil state.
#[derive(Debug, Clone, Default)]
pub struct Anvil {
    /// Connections per key and pid.
    conns: BTreeMap<ConnKey, BTreeMap<Pid, u32>>,
    /// The same entries per pid, for KILL.
    by_pid: BTreeMap<Pid, BTreeMap<ConnKey, u32>>,
    /// Failure penalties per IP.
    penalties: BTreeMap<IpAddr, Penalty>,
    /// The penalty entries ordered by last update, for eviction.
    penalty_order: BTreeMap<(Instant, IpAddr), ()>,
    /// The penalty rules.
    policy: PenaltyPolicy,
}

impl Anvil {
    /// An empty table with this penalty policy.
    pub fn new(policy: PenaltyPolicy) -> Anvil {
        Anvil {
            policy,
            ..Anvil::default()
        }
    }

    /// Connections of `key` over all pids.
    pub fn lookup(&self, key: &ConnKey) -> u32 {
        self.conns.get(key).map_or(0, |pids| pids.values().sum())
    }

    /// Counts a connection unless the user already has `limit` from this IP (0 = no limit).
    pub fn connect(&mut self, pid: Pid, key: ConnKey, limit: u32) -> ConnectOutcome {
        let count = self.lookup(&key);
        if limit != 0 && count >= limit {
            return ConnectOutcome::Limit { count };
        }
        *self
            .conns
            .entry(key.clone())
            .or_default()
            .entry(pid)
            .or_default() += 1;
        *self.by_pid.entry(pid).or_default().entry(key).or_default() += 1;
        ConnectOutcome::Accepted
    }

    /// Drops one connection; unknown ones are ignored (a late DISCONNECT after KILL).
    pub fn disconnect(&mut self, pid: Pid, key: &ConnKey) {
        let Some(pids) = self.conns.get_mut(key) else {
            return;
        };
        let Some(n) = pids.get_mut(&pid) else { return };
        *n -= 1;
        if *n == 0 {
            pids.remove(&pid);
        }
        if pids.is_empty() {
            self.conns.remove(key);
        }
        if let Some(keys) = self.by_pid.get_mut(&pid) {
            if let Some(n) = keys.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    keys.remove(key);
                }
            }
            if keys.is_empty() {
                self.by_pid.remove(&pid);
            }
        }
    }

    /// The process died: everything it held goes.
    pub fn kill(&mut self, pid: Pid) {
        let Some(keys) = self.by_pid.remove(&pid) else {
            return;
        };
        for key in keys.keys() {
            if let Some(pids) = self.conns.get_mut(key) {
                pids.remove(&pid);
                if pids.is_empty() {
                    self.conns.remove(key);
                }
            }
        }
    }

    /// Forgets a penalty that has been quiet long enough.
    fn penalty_expire(&mut self, ip: IpAddr, now: Instant) -> Option<Penalty> {
        let p = *self.penalties.get(&ip)?;
        if now.saturating_duration_since(p.last) >= self.policy.quiet_period {
            self.penalties.remove(&ip);
            self.penalty_order.remove(&(p.last, ip));
            return None;
        }
        Some(p)
    }

    /// The delay to apply before answering an authentication from `ip`: 0 with no recent
    /// failure, then 2, 4, 8 s... per failure, capped at the policy's maximum.
    pub fn penalty_get(&mut self, ip: IpAddr, now: Instant) -> Duration {
        let ip = penalty_key(ip);
        let failures = self.penalty_expire(ip, now).map_or(0, |p| p.failures);
        penalty_delay(failures, self.policy.max_delay)
    }

    /// Counts a failed authentication from `ip`.
    pub fn penalty_inc(&mut self, ip: IpAddr, now: Instant) {
        let ip = penalty_key(ip);
        let failures = self.penalty_expire(ip, now).map_or(0, |p| p.failures);
        if let Some(old) = self.penalties.get(&ip) {
            self.penalty_order.remove(&(old.last, ip));
        }
        self.penalties.insert(
            ip,
            Penalty {
                failures: failures.saturating_add(1),
                last: now,
            },
        );
        self.penalty_order.insert((now, ip), ());
        while self.penalties.len() > self.policy.max_entries {
            let Some(((_, oldest), ())) = self.penalty_order.pop_first() else {
                break;
            };
            self.penalties.remove(&oldest);
        }
    }

    /// Forgets penalties quiet for the policy's period (call now and then to bound memory).
    pub fn prune(&mut self, now: Instant) {
        while let Some((&(last, ip), ())) = self.penalty_order.first_key_value() {
            if now.saturating_duration_since(last) < self.policy.quiet_period {
                break;
            }
            self.penalty_order.remove(&(last, ip));
            self.penalties.remove(&ip);
        }
    }

    /// Per user: connection count, pids and IPs, ordered by user.
    pub fn who(&self) -> Vec<WhoEntry> {
        /// Per user: count, pids, IPs.
        type Tally = (u32, BTreeMap<Pid, ()>, BTreeMap<IpAddr, ()>);
        let mut users: BTreeMap<&str, Tally> = BTreeMap::new();
        for (key, pids) in &self.conns {
            let entry = users.entry(&key.user).or_default();
            entry.0 += pids.values().sum::<u32>();
            entry.2.insert(key.ip, ());
            for pid in pids.keys() {
                entry.1.insert(*pid, ());
            }
        }
        users
            .into_iter()
            .map(|(user, (count, pids, ips))| WhoEntry {
                user: user.to_owned(),
                count,
                pids: pids.into_keys().collect(),
                ips: ips.into_keys().collect(),
            })
            .collect()
    }

    /// Checks the table's invariants (tests and debug builds).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut mirrored = 0usize;
        for (key, pids) in &self.conns {
            if pids.is_empty() {
                return Err(format!("empty entry for {key:?}"));
            }
            for (pid, n) in pids {
                if *n == 0 || self.by_pid.get(pid).and_then(|k| k.get(key)) != Some(n) {
                    return Err(format!("pid index disagrees for {pid} {key:?}"));
                }
                mirrored += 1;
            }
        }
        if mirrored != self.by_pid.values().map(BTreeMap::len).sum::<usize>() {
            return Err("pid index has extra entries".to_owned());
        }
        if self.penalties.len() != self.penalty_order.len()
            || self.penalties.len() > self.policy.max_entries
        {
            return Err("penalty tables disagree or overflow".to_owned());
        }
        Ok(())
    }

    /// Handles one decoded request; returns the reply lines (each without `\n`).
    pub fn handle(&mut self, request: Request, now: Instant) -> Vec<String> {
        match request {
            Request::Connect { pid, key, limit } => match self.connect(pid, key, limit) {
                ConnectOutcome::Accepted => vec!["OK".to_owned()],
                ConnectOutcome::Limit { count } => vec![format!("LIMIT\t{count}")],
            },
            Request::Disconnect { pid, key } => {
                self.disconnect(pid, &key);
                Vec::new()
            }
            Request::Lookup(key) => vec![self.lookup(&key).to_string()],
            Request::PenaltyGet(ip) => vec![self.penalty_get(ip, now).as_millis().to_string()],
            Request::PenaltyInc(ip) => {
                self.penalty_inc(ip, now);
                Vec::new()
            }
            Request::Kill(pid) => {
                self.kill(pid);
                Vec::new()
            }
            Request::Who => {
                let mut lines: Vec<String> = self
                    .who()
                    .iter()
                    .map(|w| {
                        let pids: Vec<String> = w.pids.iter().map(|p| p.0.to_string()).collect();
                        let ips: Vec<String> = w.ips.iter().map(IpAddr::to_string).collect();
                        format!(
                            "{}\t{}\t{}\t{}",
                            w.user,
                            w.count,
                            pids.join(","),
                            ips.join(",")
                        )
                    })
                    .collect();
                lines.push(String::new());
                lines
            }
        }
    }
}

/// The address a penalty is counted for: an IPv4 address (IPv4-mapped IPv6 included) as is,
/// an IPv6 address as its /64, since one client usually holds a whole /64 and could otherwise
/// take a fresh address for every guess.
pub fn penalty_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// The delay for `failures` failures: 0, 2, 4, 8 s... capped at `max`.
pub fn penalty_delay(failures: u32, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let secs = 1u64 << failures.min(20);
    Duration::from_secs(secs).min(max)
}

/// One request to anvil.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Count a connection, refusing it at `limit`.
    Connect {
        /// The process holding it.
        pid: Pid,
        /// Service, user, IP.
        key: ConnKey,
        /// mail_max_userip_connections (0 = none).
        limit: u32,
    },
    /// Drop one connection.
    Disconnect {
        /// The process that held it.
        pid: Pid,
        /// Service, user, IP.
        key: ConnKey,
    },
    /// How many connections a key has.
    Lookup(ConnKey),
    /// The penalty delay of an IP.
    PenaltyGet(IpAddr),
    /// Count a failure of an IP.
    PenaltyInc(IpAddr),
    /// A process died (from the master).
    Kill(Pid),
    /// The `who` listing.
    Who,
}

/// A request line anvil could not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The line is longer than [`MAX_REQUEST_LINE`]; it is skipped.
    #[error("anvil request longer than {MAX_REQUEST_LINE} bytes")]
    TooLong,
    /// Not UTF-8.
    #[error("anvil request is not UTF-8")]
    NotUtf8,
    /// Unknown command word.
    #[error("unknown anvil command {0:?}")]
    UnknownCommand(String),
    /// Wrong number of fields.
    #[error("anvil {command}: expected {expected} fields, got {got}")]
    FieldCount {
        /// The command.
        command: &'static str,
        /// Fields expected after the command.
        expected: usize,
        /// Fields present.
        got: usize,
    },
    /// A field did not parse.
    #[error("anvil {command}: bad {field} {value:?}")]
    BadField {
        /// The command.
        command: &'static str,
        /// Which field.
        field: &'static str,
        /// Its text.
        value: String,
    },
}

fn field<T: std::str::FromStr>(
    command: &'static str,
    name: &'static str,
    value: &str,
) -> Result<T, RequestError> {
    value.parse().map_err(|_| RequestError::BadField {
        command,
        field: name,
        value: value.to_owned(),
    })
}

/// Parses one request line (without `\n`).
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let line = std::str::from_utf8(line).map_err(|_| RequestError::NotUtf8)?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut fields = line.split('\t');
    let command = fields.next().unwrap_or("");
    let args: Vec<&str> = fields.collect();
    let want = |command: &'static str, expected: usize| {
        if args.len() == expected {
            Ok(command)
        } else {
            Err(RequestError::FieldCount {
                command,
                expected,
                got: args.len(),
            })
        }
    };
    let key = |c: &'static str, a: &[&str]| -> Result<ConnKey, RequestError> {
        Ok(ConnKey {
            service: a[0].to_owned(),
            user: a[1].to_owned(),
            ip: field(c, "ip", a[2])?,
        })
    };
    Ok(match command {
        "CONNECT" => {
            let c = want("CONNECT", 5)?;
            Request::Connect {
                pid: Pid(field(c, "pid", args[0])?),
                key: key(c, &args[1..4])?,
                limit: field(c, "limit", args[4])?,
            }
        }
        "DISCONNECT" => {
            let c = want("DISCONNECT", 4)?;
            Request::Disconnect {
                pid: Pid(field(c, "pid", args[0])?),
                key: key(c, &args[1..4])?,
            }
        }
        "LOOKUP" => {
            let c = want("LOOKUP", 3)?;
            Request::Lookup(key(c, &args)?)
        }
        "PENALTY-GET" => Request::PenaltyGet(field(want("PENALTY-GET", 1)?, "ip", args[0])?),
        "PENALTY-INC" => Request::PenaltyInc(field(want("PENALTY-INC", 1)?, "ip", args[0])?),
        "KILL" => Request::Kill(Pid(field(want("KILL", 1)?, "pid", args[0])?)),
        "WHO" => {
            want("WHO", 0)?;
            Request::Who
        }
        other => {
            return Err(RequestError::UnknownCommand(
                other.chars().take(32).collect(),
            ))
        }
    })
}

/// Formats a request as its line (with `\n`): the client side of the protocol.
pub fn format_request(request: &Request) -> String {
    let key = |k: &ConnKey| format!("{}\t{}\t{}", k.service, k.user, k.ip);
    match request {
        Request::Connect { pid, key: k, limit } => {
            format!("CONNECT\t{}\t{}\t{limit}\n", pid.0, key(k))
        }
        Request::Disconnect { pid, key: k } => format!("DISCONNECT\t{}\t{}\n", pid.0, key(k)),
        Request::Lookup(k) => format!("LOOKUP\t{}\n", key(k)),
        Request::PenaltyGet(ip) => format!("PENALTY-GET\t{ip}\n"),
        Request::PenaltyInc(ip) => format!("PENALTY-INC\t{ip}\n"),
        Request::Kill(pid) => format!("KILL\t{}\n", pid.0),
        Request::Who => "WHO\n".to_owned(),
    }
}

/// An incremental request decoder: feed what a read returned, take the requests. Never
/// panics, and keeps at most [`MAX_REQUEST_LINE`] bytes of an incomplete line.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    /// The incomplete line.
    partial: Vec<u8>,
    /// Skipping the rest of an overlong line.
    discarding: bool,
}

impl Decoder {
    /// Decodes the complete lines in `bytes`, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Result<Request, RequestError>> {
        let mut out = Vec::new();
        let mut segments = bytes.split(|&b| b == b'\n').peekable();
        while let Some(segment) = segments.next() {
            let complete = segments.peek().is_some();
            if !self.discarding {
                if self.partial.len() + segment.len() > MAX_REQUEST_LINE {
                    self.partial.clear();
                    self.discarding = true;
                    out.push(Err(RequestError::TooLong));
                } else {
                    self.partial.extend_from_slice(segment);
                }
            }
            if complete {
                if self.discarding {
                    self.discarding = false;
                } else {
                    let line = std::mem::take(&mut self.partial);
                    out.push(parse_request(&line));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(user: &str, ip: &str) -> ConnKey {
        ConnKey {
            service: "pop3".into(),
            user: user.into(),
            ip: ip.parse().expect("test ip"),
        }
    }

    fn at(secs: u64) -> Instant {
        Instant::from_millis(secs * 1000)
    }

    #[test]
    fn mail_max_userip_connections_refuses_the_eleventh() {
        let mut a = Anvil::default();
        for i in 0..DEFAULT_MAX_USERIP_CONNECTIONS {
            assert_eq!(
                a.connect(Pid(100 + i as i32), key("demo", "10.0.0.1"), 10),
                ConnectOutcome::Accepted
            );
        }
        assert_eq!(
            a.connect(Pid(200), key("demo", "10.0.0.1"), 10),
            ConnectOutcome::Limit { count: 10 }
        );
        // Another IP of the same user is another count.
        assert_eq!(
            a.connect(Pid(200), key("demo", "10.0.0.2"), 10),
            ConnectOutcome::Accepted
        );
        a.disconnect(Pid(100), &key("demo", "10.0.0.1"));
        assert_eq!(
            a.connect(Pid(201), key("demo", "10.0.0.1"), 10),
            ConnectOutcome::Accepted
        );
        a.check_invariants().expect("consistent");
    }

    #[test]
    fn kill_drops_every_entry_of_the_pid() {
        let mut a = Anvil::default();
        a.connect(Pid(7), key("a", "::1"), 0);
        a.connect(Pid(7), key("a", "::1"), 0);
        a.connect(Pid(7), key("b", "127.0.0.1"), 0);
        a.connect(Pid(8), key("a", "::1"), 0);
        a.kill(Pid(7));
        assert_eq!(a.lookup(&key("a", "::1")), 1);
        assert_eq!(a.lookup(&key("b", "127.0.0.1")), 0);
        a.check_invariants().expect("consistent");
        // A late DISCONNECT from the dead pid changes nothing.
        a.disconnect(Pid(7), &key("a", "::1"));
        assert_eq!(a.lookup(&key("a", "::1")), 1);
    }

    #[test]
    fn penalty_grows_caps_at_fifteen_seconds_and_decays_after_quiet() {
        let mut a = Anvil::default();
        let ip: IpAddr = "192.0.2.9".parse().expect("test ip");
        let mut delays = vec![a.penalty_get(ip, at(0)).as_secs()];
        for t in 1..6 {
            a.penalty_inc(ip, at(t));
            delays.push(a.penalty_get(ip, at(t)).as_secs());
        }
        assert_eq!(delays, vec![0, 2, 4, 8, 15, 15]);
        assert_eq!(a.penalty_get(ip, at(5 + 3599)).as_secs(), 15);
        assert_eq!(a.penalty_get(ip, at(5 + 3600)).as_secs(), 0);
        a.check_invariants().expect("consistent");
    }

    #[test]
    fn ipv6_penalties_count_per_64_and_mapped_v4_as_v4() {
        let mut a = Anvil::default();
        a.penalty_inc("2001:db8:1:2::1".parse().expect("ip"), at(0));
        assert_eq!(
            a.penalty_get("2001:db8:1:2:ffff::9".parse().expect("ip"), at(1))
                .as_secs(),
            2
        );
        assert_eq!(
            a.penalty_get("2001:db8:1:3::1".parse().expect("ip"), at(1))
                .as_secs(),
            0
        );
        a.penalty_inc("::ffff:192.0.2.1".parse().expect("ip"), at(0));
        assert_eq!(
            a.penalty_get("192.0.2.1".parse().expect("ip"), at(1))
                .as_secs(),
            2
        );
    }

    #[test]
    fn penalty_table_is_bounded_and_pruned() {
        let mut a = Anvil::new(PenaltyPolicy {
            max_entries: 3,
            ..PenaltyPolicy::default()
        });
        for i in 0..5u8 {
            a.penalty_inc(IpAddr::from([10, 0, 0, i]), at(u64::from(i)));
        }
        assert_eq!(a.penalties.len(), 3);
        assert_eq!(
            a.penalty_get(IpAddr::from([10, 0, 0, 0]), at(5)),
            Duration::ZERO
        );
        a.prune(at(4 + 3600));
        assert!(a.penalties.is_empty());
        a.check_invariants().expect("consistent");
    }

    #[test]
    fn who_lists_users_with_counts_pids_and_ips() {
        let mut a = Anvil::default();
        a.connect(Pid(3), key("demo", "10.0.0.2"), 0);
        a.connect(Pid(2), key("demo", "10.0.0.1"), 0);
        a.connect(Pid(2), key("ann", "10.0.0.1"), 0);
        let who = a.who();
        assert_eq!(who.len(), 2);
        assert_eq!(who[1].user, "demo");
        assert_eq!(who[1].count, 2);
        assert_eq!(who[1].pids, vec![Pid(2), Pid(3)]);
        assert_eq!(who[1].ips.len(), 2);
        let lines = a.handle(Request::Who, at(0));
        assert_eq!(lines[1], "demo\t2\t2,3\t10.0.0.1,10.0.0.2");
        assert_eq!(lines.last().map(String::as_str), Some(""));
    }

    #[test]
    fn protocol_round_trips_and_replies() {
        let requests = vec![
            Request::Connect {
                pid: Pid(5),
                key: key("demo", "::1"),
                limit: 1,
            },
            Request::Lookup(key("demo", "::1")),
            Request::Disconnect {
                pid: Pid(5),
                key: key("demo", "::1"),
            },
            Request::PenaltyInc("::1".parse().expect("ip")),
            Request::PenaltyGet("::1".parse().expect("ip")),
            Request::Kill(Pid(5)),
            Request::Who,
        ];
        let wire: String = requests.iter().map(format_request).collect();
        let mut d = Decoder::default();
        // Fed one byte at a time: the decoder must reassemble lines.
        let decoded: Vec<_> = wire.as_bytes().chunks(1).flat_map(|c| d.feed(c)).collect();
        let decoded: Vec<Request> = decoded.into_iter().map(|r| r.expect("valid")).collect();
        assert_eq!(decoded, requests);
        let mut a = Anvil::default();
        let replies: Vec<Vec<String>> = decoded.into_iter().map(|r| a.handle(r, at(0))).collect();
        assert_eq!(replies[0], vec!["OK"]);
        assert_eq!(replies[1], vec!["1"]);
        assert_eq!(replies[4], vec!["2000"]);
    }

    #[test]
    fn bad_requests_are_typed_errors() {
        assert_eq!(
            parse_request(b"NOPE"),
            Err(RequestError::UnknownCommand("NOPE".into()))
        );
        assert!(matches!(
            parse_request(b"KILL\tx"),
            Err(RequestError::BadField { field: "pid", .. })
        ));
        assert!(matches!(
            parse_request(b"LOOKUP\ta"),
            Err(RequestError::FieldCount {
                expected: 3,
                got: 1,
                ..
            })
        ));
        let mut d = Decoder::default();
        let out = d.feed(&vec![b'A'; 5000]);
        assert_eq!(out, vec![Err(RequestError::TooLong)]);
        assert!(d.partial.is_empty());
        assert_eq!(d.feed(b"\nWHO\n"), vec![Ok(Request::Who)]);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_decoder(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 0..8)) {
            let mut d = Decoder::default();
            let mut a = Anvil::new(PenaltyPolicy { max_entries: 4, ..PenaltyPolicy::default() });
            for (i, chunk) in chunks.iter().enumerate() {
                for request in d.feed(chunk).into_iter().flatten() {
                    let _ = a.handle(request, at(i as u64));
                }
                prop_assert!(d.partial.len() <= MAX_REQUEST_LINE);
                prop_assert!(a.check_invariants().is_ok());
            }
        }

        #[test]
        fn random_connect_disconnect_kill_keeps_the_table_consistent(
            ops in proptest::collection::vec((0u8..3, 0i32..4, 0u8..3, 0u8..2), 0..60)
        ) {
            let mut a = Anvil::default();
            for (op, pid, user, ip) in ops {
                let k = key(["a", "b", "c"][usize::from(user)], ["10.0.0.1", "::1"][usize::from(ip)]);
                match op {
                    0 => { a.connect(Pid(pid), k, 3); }
                    1 => a.disconnect(Pid(pid), &k),
                    _ => a.kill(Pid(pid)),
                }
                prop_assert!(a.check_invariants().is_ok());
                for w in a.who() {
                    prop_assert!(w.count > 0);
                }
            }
        }
    }
}
