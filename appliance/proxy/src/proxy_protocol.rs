//! PROXY protocol v1 (text) and v2 (binary) headers, with the `ppp` crate: building the header sent to a
//! backend, and recognising the header an upstream balancer sends to a listener. Engine-neutral: the engines do
//! the I/O and call these functions on the bytes.
//!
//! TCP only, as in HAProxy and nginx: a UDP datagram has no stream to carry a header in front of.

use ppp::v2;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The largest header accepted from upstream. v1 is at most 107 bytes; v2 is 16 bytes plus addresses and TLVs,
/// which balancers in practice keep to a few hundred bytes (AWS adds a VPC endpoint id, Azure a link id).
pub const MAX_HEADER: usize = 4096;

/// Which header a listener writes to its backends before any client byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendProxy {
    #[default]
    None,
    /// Text: `PROXY TCP4 <client> <vip> <client port> <vip port>\r\n`.
    V1,
    /// Binary, command PROXY, TCP over IPv4 or IPv6.
    V2,
}

/// PROXY protocol settings of one TCP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    pub send: SendProxy,
    /// The listener sits behind another balancer that sends a header (v1 or v2, either is taken) first; the
    /// header's client address is then used for balancing and passed on. A connection without a valid header
    /// within `header_timeout` is reset and counted (`ListenerStats::proxy_header_errors`).
    pub accept: bool,
    pub header_timeout: Duration,
}

impl Default for ProxyProtocol {
    fn default() -> ProxyProtocol {
        ProxyProtocol { send: SendProxy::None, accept: false, header_timeout: Duration::from_secs(5) }
    }
}

/// The result of looking at the first bytes of a connection that must start with a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Could still become a valid header with more bytes.
    Incomplete,
    /// Not a header, or one we refuse (too long, unknown family).
    Invalid(String),
    /// A header of `len` bytes. `addresses` is (client, destination) for a proxied TCP connection; `None` for a
    /// v2 LOCAL command (a health check of the upstream balancer) or v1 `UNKNOWN`: the real peer counts.
    Header { len: usize, addresses: Option<(SocketAddr, SocketAddr)> },
}

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

/// Recognises a v1 or v2 header at the start of `buf` (which may hold client bytes after it).
pub fn parse(buf: &[u8]) -> Parsed {
    let is_prefix = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    if is_prefix(V2_SIGNATURE) {
        if buf.len() < 16 {
            return Parsed::Incomplete;
        }
        // The advertised length decides where the header ends; anything after it is client data.
        let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if total > MAX_HEADER {
            return Parsed::Invalid(format!("v2 header of {total} bytes, more than {MAX_HEADER}"));
        }
        if buf.len() < total {
            return Parsed::Incomplete;
        }
        return match v2::Header::try_from(&buf[..total]) {
            Ok(h) => match (h.command, h.addresses) {
                (v2::Command::Local, _) => Parsed::Header { len: total, addresses: None },
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Parsed::Header {
                    len: total,
                    addresses: Some((
                        SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                        SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
                    )),
                },
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Parsed::Header {
                    len: total,
                    addresses: Some((
                        SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                        SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
                    )),
                },
                // UNSPEC with PROXY: the sender does not know the addresses (spec §2.2): the real peer counts.
                (v2::Command::Proxy, v2::Addresses::Unspecified) => Parsed::Header { len: total, addresses: None },
                (v2::Command::Proxy, v2::Addresses::Unix(_)) => {
                    Parsed::Invalid("v2 header with UNIX addresses on a TCP listener".into())
                }
            },
            Err(e) => Parsed::Invalid(format!("v2 header: {e}")),
        };
    }
    if is_prefix(V1_PREFIX) {
        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
            // v1 headers are at most 107 bytes including CRLF.
            return if buf.len() >= 107 {
                Parsed::Invalid("v1 header without CRLF in 107 bytes".into())
            } else {
                Parsed::Incomplete
            };
        };
        let len = end + 2;
        if len > 107 {
            return Parsed::Invalid("v1 header longer than 107 bytes".into());
        }
        return match ppp::v1::Header::try_from(&buf[..len]) {
            Ok(h) => match h.addresses {
                ppp::v1::Addresses::Unknown => Parsed::Header { len, addresses: None },
                ppp::v1::Addresses::Tcp4(a) => Parsed::Header {
                    len,
                    addresses: Some((
                        SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                        SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
                    )),
                },
                ppp::v1::Addresses::Tcp6(a) => Parsed::Header {
                    len,
                    addresses: Some((
                        SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                        SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
                    )),
                },
            },
            Err(e) => Parsed::Invalid(format!("v1 header: {e}")),
        };
    }
    Parsed::Invalid("no PROXY protocol header".into())
}

/// Puts both addresses in one family, as both header versions require: IPv4-mapped IPv6 addresses become IPv4
/// when the other side is IPv4 (or mapped too); otherwise IPv4 becomes mapped IPv6.
fn same_family(client: SocketAddr, dest: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (c, d) = (canon(client), canon(dest));
    match (c, d) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => (c, d),
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
                IpAddr::V6(_) => a,
            };
            (v6(c), v6(d))
        }
    }
}

/// The header to write to a backend for a connection from `client` to `dest` (the VIP), if any.
pub fn header(send: SendProxy, client: SocketAddr, dest: SocketAddr) -> Option<Vec<u8>> {
    let (c, d) = same_family(client, dest);
    match send {
        SendProxy::None => None,
        SendProxy::V1 => Some(ppp::v1::Addresses::from((c, d)).to_string().into_bytes()),
        SendProxy::V2 => {
            let addresses = v2::Addresses::from((c, d));
            // Building into a Vec cannot fail (no I/O); an error would only be a length overflow.
            v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, v2::Protocol::Stream, addresses)
                .build()
                .ok()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_round_trip() {
        for (c, d) in [("192.0.2.1:5000", "198.51.100.2:443"), ("[2001:db8::1]:5000", "[2001:db8::2]:80")] {
            for send in [SendProxy::V1, SendProxy::V2] {
                let mut h = header(send, a(c), a(d)).unwrap();
                let len = h.len();
                h.extend_from_slice(b"GET / HTTP/1.1\r\n");
                assert_eq!(parse(&h), Parsed::Header { len, addresses: Some((a(c), a(d))) }, "{send:?}");
                for cut in 0..len {
                    assert_eq!(parse(&h[..cut]), Parsed::Incomplete, "{send:?} cut at {cut}");
                }
            }
        }
        assert!(header(SendProxy::None, a("192.0.2.1:1"), a("192.0.2.2:2")).is_none());
    }

    #[test]
    fn mixed_families_are_unified() {
        let h = header(SendProxy::V1, a("[::ffff:192.0.2.1]:1"), a("192.0.2.2:2")).unwrap();
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n");
        let h = header(SendProxy::V1, a("192.0.2.1:1"), a("[2001:db8::2]:2")).unwrap();
        assert_eq!(h, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1 2\r\n");
    }

    #[test]
    fn local_unknown_and_garbage() {
        let local = v2::Builder::new(v2::Version::Two | v2::Command::Local, 0).build().unwrap();
        assert_eq!(parse(&local), Parsed::Header { len: 16, addresses: None });
        assert_eq!(parse(b"PROXY UNKNOWN\r\nhello"), Parsed::Header { len: 15, addresses: None });
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Invalid(_)));
        assert!(matches!(parse(b"PROXY TCP4 1.2.3.4 nonsense\r\n"), Parsed::Invalid(_)));
        assert!(matches!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20)), Parsed::Invalid(_)));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge), Parsed::Invalid(_)));
    }
}
