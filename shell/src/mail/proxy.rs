//! PROXY protocol v1 and v2 on `haproxy = yes` listeners, parsed by the `ppp` crate.
//!
//! The sender is checked against `haproxy_trusted_networks` before a single byte is parsed:
//! an untrusted peer gets an error (the driver closes the connection), so nobody outside the
//! list can claim another address. [`ProxyDecoder`] then buffers the header incrementally and
//! bounded (v1: 107 bytes, v2: 16 bytes plus its announced length), tells an incomplete header
//! from an invalid one, and hands back the real client and server addresses (the socket's own
//! for a LOCAL command, a v1 `UNKNOWN` or an address family without IP) with the bytes that
//! followed the header, which belong to the protocol (POP3, TLS).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// The longest v1 header, CRLF included (the spec's limit).
pub const V1_MAX: usize = 107;

/// The fixed part of a v2 header.
pub const V2_FIXED: usize = 16;

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// One network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (bits past the prefix are ignored).
    addr: IpAddr,
    /// The prefix length.
    prefix: u8,
}

/// A network that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("haproxy_trusted_networks: invalid network {0:?}")]
pub struct CidrError(pub String);

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry (a dual-stack socket
/// reports `::ffff:10.0.0.1` for an IPv4 peer).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(err)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// True when `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (canonical(self.addr), canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                // A /24 written as an IPv4-mapped /120 keeps its meaning.
                let prefix = if self.addr.is_ipv6() {
                    self.prefix.saturating_sub(96)
                } else {
                    self.prefix
                };
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `haproxy_trusted_networks`: a space- or comma-separated list of networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedNetworks(pub Vec<Cidr>);

impl FromStr for TrustedNetworks {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<TrustedNetworks, CidrError> {
        s.split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<_, _>>()
            .map(TrustedNetworks)
    }
}

impl TrustedNetworks {
    /// True when `ip` may send a PROXY header.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }
}

/// Why a PROXY connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The peer is not in haproxy_trusted_networks.
    #[error("haproxy: client not trusted: {0}")]
    Untrusted(IpAddr),
    /// The bytes are not a PROXY header.
    #[error("haproxy: invalid PROXY header: {0}")]
    Invalid(String),
    /// The header is longer than the protocol allows.
    #[error("haproxy: PROXY header too long")]
    TooLong,
    /// The connection ended before the header was complete.
    #[error("haproxy: connection closed in the middle of the PROXY header")]
    Truncated,
}

/// A complete header's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo {
    /// The real client (the socket's peer for LOCAL).
    pub client: SocketAddr,
    /// The address the client connected to (the socket's own for LOCAL).
    pub server: SocketAddr,
    /// The sender said LOCAL (or UNKNOWN): a health check, addresses kept.
    pub local: bool,
    /// Bytes after the header: the start of the protocol stream.
    pub rest: Vec<u8>,
}

/// Reads one PROXY header from a trusted peer, incrementally.
#[derive(Debug, Clone)]
pub struct ProxyDecoder {
    /// The socket's peer address.
    peer: SocketAddr,
    /// The socket's local address.
    local: SocketAddr,
    /// Bytes of the header so far (never more than its bound, plus what the last feed added).
    buf: Vec<u8>,
}

impl ProxyDecoder {
    /// Starts decoding for a connection from `peer` to `local`; refuses an untrusted peer
    /// before anything is read.
    pub fn new(
        peer: SocketAddr,
        local: SocketAddr,
        trusted: &TrustedNetworks,
    ) -> Result<ProxyDecoder, ProxyError> {
        if !trusted.contains(peer.ip()) {
            return Err(ProxyError::Untrusted(peer.ip()));
        }
        Ok(ProxyDecoder {
            peer,
            local,
            buf: Vec::new(),
        })
    }

    /// Adds bytes read from the socket: `Ok(None)` while the header is incomplete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<ProxyInfo>, ProxyError> {
        self.buf.extend_from_slice(bytes);
        let head = &self.buf[..self.buf.len().min(V2_SIGNATURE.len())];
        if V2_SIGNATURE.starts_with(head) {
            self.feed_v2()
        } else if b"PROXY ".starts_with(&self.buf[..self.buf.len().min(6)]) {
            self.feed_v1()
        } else {
            Err(ProxyError::Invalid("no PROXY signature".to_owned()))
        }
    }

    /// The connection ended: an incomplete header is an error.
    pub fn eof(&self) -> ProxyError {
        ProxyError::Truncated
    }

    fn done(&mut self, len: usize, addrs: Option<(SocketAddr, SocketAddr)>) -> ProxyInfo {
        let rest = self.buf.split_off(len);
        self.buf.clear();
        match addrs {
            Some((client, server)) => ProxyInfo {
                client,
                server,
                local: false,
                rest,
            },
            None => ProxyInfo {
                client: self.peer,
                server: self.local,
                local: true,
                rest,
            },
        }
    }

    fn feed_v1(&mut self) -> Result<Option<ProxyInfo>, ProxyError> {
        let window = &self.buf[..self.buf.len().min(V1_MAX)];
        let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
            return if self.buf.len() >= V1_MAX {
                Err(ProxyError::TooLong)
            } else {
                Ok(None)
            };
        };
        let len = cr + 2;
        let header = ppp::v1::Header::try_from(&self.buf[..len])
            .map_err(|e| ProxyError::Invalid(e.to_string()))?;
        let addrs = match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            ppp::v1::Addresses::Tcp6(a) => Some((
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            ppp::v1::Addresses::Unknown => None,
        };
        Ok(Some(self.done(len, addrs)))
    }

    fn feed_v2(&mut self) -> Result<Option<ProxyInfo>, ProxyError> {
        if self.buf.len() < V2_FIXED {
            return Ok(None);
        }
        let len = V2_FIXED + usize::from(u16::from_be_bytes([self.buf[14], self.buf[15]]));
        if self.buf.len() < len {
            return Ok(None);
        }
        let header = ppp::v2::Header::try_from(&self.buf[..len])
            .map_err(|e| ProxyError::Invalid(e.to_string()))?;
        let addrs = match (header.command, header.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => Some((
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => Some((
                SocketAddr::new(a.source_address.into(), a.source_port),
                SocketAddr::new(a.destination_address.into(), a.destination_port),
            )),
            // UNSPEC or unix sockets carry no IP: the receiver keeps the socket's addresses.
            (ppp::v2::Command::Proxy, _) => None,
        };
        Ok(Some(self.done(len, addrs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sock(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn trusted() -> TrustedNetworks {
        "127.0.0.0/8 ::1, 10.1.0.0/16".parse().expect("valid list")
    }

    fn decoder() -> ProxyDecoder {
        ProxyDecoder::new(sock("127.0.0.1:40000"), sock("127.0.0.1:1110"), &trusted())
            .expect("trusted")
    }

    #[test]
    fn cidr_parsing_and_matching_for_v4_v6_and_mapped() {
        let nets = trusted();
        assert!(nets.contains("127.9.9.9".parse().expect("ip")));
        assert!(nets.contains("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!nets.contains("10.2.0.1".parse().expect("ip")));
        assert!(nets.contains("::1".parse().expect("ip")));
        assert!(!nets.contains("::2".parse().expect("ip")));
        let all: Cidr = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains("203.0.113.1".parse().expect("ip")));
        let v6: Cidr = "2001:db8::/32".parse().expect("valid");
        assert!(v6.contains("2001:db8:ffff::1".parse().expect("ip")));
        assert!(!v6.contains("2001:db9::1".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "::/129", "foo", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
        assert_eq!(
            "10.0.0.0/8 bogus".parse::<TrustedNetworks>(),
            Err(CidrError("bogus".into()))
        );
    }

    #[test]
    fn an_untrusted_sender_is_refused_before_parsing() {
        let err = ProxyDecoder::new(sock("192.0.2.1:5"), sock("127.0.0.1:1110"), &trusted())
            .expect_err("untrusted");
        assert_eq!(err, ProxyError::Untrusted("192.0.2.1".parse().expect("ip")));
        assert_eq!(err.to_string(), "haproxy: client not trusted: 192.0.2.1");
    }

    #[test]
    fn v1_incremental_with_trailing_protocol_bytes() {
        let mut d = decoder();
        let wire = b"PROXY TCP4 198.51.100.7 127.0.0.1 55555 1110\r\nCAPA\r\n";
        for b in &wire[..20] {
            assert_eq!(d.feed(&[*b]), Ok(None));
        }
        let info = d.feed(&wire[20..]).expect("valid").expect("complete");
        assert_eq!(info.client, sock("198.51.100.7:55555"));
        assert_eq!(info.server, sock("127.0.0.1:1110"));
        assert!(!info.local);
        assert_eq!(info.rest, b"CAPA\r\n");
    }

    #[test]
    fn v1_unknown_keeps_socket_addresses() {
        let info = decoder()
            .feed(b"PROXY UNKNOWN\r\n")
            .expect("valid")
            .expect("complete");
        assert!(info.local);
        assert_eq!(info.client, sock("127.0.0.1:40000"));
    }

    #[test]
    fn v1_too_long_and_garbage_are_errors() {
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        assert_eq!(decoder().feed(&long), Err(ProxyError::TooLong));
        assert!(matches!(
            decoder().feed(b"USER demo\r\n"),
            Err(ProxyError::Invalid(_))
        ));
        assert!(matches!(
            decoder().feed(b"PROXY TCP4 1.2.3.4 nope 1 2\r\n"),
            Err(ProxyError::Invalid(_))
        ));
    }

    #[test]
    fn v2_proxy_and_local_commands() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (sock("[2001:db8::7]:4444"), sock("[::1]:1110")),
        )
        .build()
        .expect("builder");
        let mut wire = header.clone();
        wire.extend_from_slice(b"+rest");
        let mut d = decoder();
        assert_eq!(d.feed(&wire[..10]), Ok(None));
        assert_eq!(d.feed(&wire[10..20]), Ok(None));
        let info = d.feed(&wire[20..]).expect("valid").expect("complete");
        assert_eq!(info.client, sock("[2001:db8::7]:4444"));
        assert_eq!(info.server, sock("[::1]:1110"));
        assert_eq!(info.rest, b"+rest");

        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .expect("builder");
        let info = decoder().feed(&local).expect("valid").expect("complete");
        assert!(info.local);
        assert_eq!(info.server, sock("127.0.0.1:1110"));
    }

    #[test]
    fn v2_with_a_bad_version_is_invalid() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x31, 0x11, 0, 0]);
        assert!(matches!(
            decoder().feed(&header),
            Err(ProxyError::Invalid(_))
        ));
    }

    proptest! {
        #[test]
        fn any_valid_header_split_anywhere_decodes_to_its_addresses(
            v6 in any::<bool>(),
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
            ports in any::<(u16, u16)>(),
            version2 in any::<bool>(),
            split in any::<prop::sample::Index>(),
        ) {
            let (client, server): (SocketAddr, SocketAddr) = if v6 {
                (
                    SocketAddr::new(std::net::Ipv6Addr::from(src).into(), ports.0),
                    SocketAddr::new(std::net::Ipv6Addr::from(dst).into(), ports.1),
                )
            } else {
                (
                    SocketAddr::new(std::net::Ipv4Addr::new(src[0], src[1], src[2], src[3]).into(), ports.0),
                    SocketAddr::new(std::net::Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]).into(), ports.1),
                )
            };
            let mut wire = if version2 {
                ppp::v2::Builder::with_addresses(
                    ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                    ppp::v2::Protocol::Stream,
                    (client, server),
                )
                .build()
                .expect("builder")
            } else {
                ppp::v1::Addresses::from((client, server)).to_string().into_bytes()
            };
            wire.extend_from_slice(b"USER x\r\n");
            let at = split.index(wire.len());
            let mut d = decoder();
            let (info, unfed) = match d.feed(&wire[..at]).expect("a prefix is never invalid") {
                Some(info) => (info, &wire[at..]),
                None => (d.feed(&wire[at..]).expect("valid").expect("complete"), &b""[..]),
            };
            prop_assert_eq!(info.client, client);
            prop_assert_eq!(info.server, server);
            prop_assert!(!info.local);
            let mut rest = info.rest;
            rest.extend_from_slice(unfed);
            prop_assert_eq!(rest, b"USER x\r\n".to_vec());
        }

        #[test]
        fn random_bytes_never_panic_and_stay_bounded(
            prefix in 0usize..3,
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..6)
        ) {
            let mut d = decoder();
            let start: &[u8] = [&b""[..], b"PROXY ", &V2_SIGNATURE[..]][prefix];
            let mut result = d.feed(start);
            for chunk in &chunks {
                if !matches!(result, Ok(None)) {
                    break;
                }
                result = d.feed(chunk);
                prop_assert!(d.buf.len() <= V2_FIXED + 65_535 + chunk.len());
            }
        }
    }
}
