//! TCP for BGP: outgoing connections from a chosen source, TTL and GTSM (RFC 5082), TCP-MD5 (RFC 2385) on
//! both the connecting and the listening socket, and a dual-stack listener.

use model::bgp::BgpPeer;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The TTL our packets leave with: 255 under GTSM, else `multihop_ttl`, else 1 for eBGP and 64 for iBGP.
pub fn ttl_for(peer: &BgpPeer, ibgp: bool) -> u8 {
    if peer.gtsm { 255 } else { peer.multihop_ttl.unwrap_or(if ibgp { 64 } else { 1 }) }
}

/// The lowest TTL accepted under GTSM: the peer sends 255, and each allowed hop takes one off.
pub fn min_ttl_for(peer: &BgpPeer) -> Option<u8> {
    peer.gtsm.then(|| 255u8.saturating_sub(peer.multihop_ttl.unwrap_or(1).saturating_sub(1)))
}

fn set_ttl(sock: SockRef<'_>, ipv6: bool, ttl: u8) -> io::Result<()> {
    if ipv6 { sock.set_unicast_hops_v6(u32::from(ttl)) } else { sock.set_ttl_v4(u32::from(ttl)) }
}

/// Applies TTL and GTSM to a connected or accepted socket.
pub fn configure_stream(stream: &TcpStream, peer: &BgpPeer, ibgp: bool) -> io::Result<()> {
    let ipv6 = stream.peer_addr()?.is_ipv6();
    set_ttl(SockRef::from(stream), ipv6, ttl_for(peer, ibgp))?;
    if let Some(min) = min_ttl_for(peer) {
        bgp_sys::set_min_ttl(stream, ipv6, min)?;
    }
    stream.set_nodelay(true)
}

/// Connects to the peer from its `source_address`, with MD5, TTL and GTSM set before the SYN leaves.
pub async fn connect(peer: &BgpPeer, ibgp: bool, timeout: Duration) -> io::Result<TcpStream> {
    let ip = peer.ip();
    let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    set_ttl(SockRef::from(&socket), ip.is_ipv6(), ttl_for(peer, ibgp))?;
    if let Some(min) = min_ttl_for(peer) {
        bgp_sys::set_min_ttl(&socket, ip.is_ipv6(), min)?;
    }
    if let Some(pw) = &peer.password {
        bgp_sys::set_tcp_md5sig(&socket, ip, pw.as_bytes())?;
    }
    if let Some(src) = peer.source_address.as_deref().and_then(|s| s.parse::<IpAddr>().ok()) {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(SocketAddr::new(ip, peer.port)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Binds the listener; `::` accepts IPv4 too (as mapped addresses).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let IpAddr::V6(v6) = addr.ip() {
        socket.set_only_v6(!v6.is_unspecified())?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

/// Sets (or with an empty key removes) a peer's TCP-MD5 key on the listening socket.
pub fn set_listener_key(listener: &TcpListener, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    let v6_listener = listener.local_addr()?.is_ipv6();
    // A dual-stack socket sees IPv4 peers as mapped addresses, and the kernel keys them that way.
    let addr = match peer {
        IpAddr::V4(v4) if v6_listener => IpAddr::V6(v4.to_ipv6_mapped()),
        other => other,
    };
    bgp_sys::set_tcp_md5sig(listener, addr, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(json: serde_json::Value) -> BgpPeer {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn ttls_follow_the_session_kind_and_gtsm() {
        let p = peer(serde_json::json!({"name": "a", "address": "127.0.0.2", "asn": 1}));
        assert_eq!((ttl_for(&p, false), ttl_for(&p, true), min_ttl_for(&p)), (1, 64, None));
        let p = peer(serde_json::json!({"name": "a", "address": "127.0.0.2", "asn": 1, "multihop_ttl": 3}));
        assert_eq!(ttl_for(&p, false), 3);
        let p = peer(serde_json::json!({"name": "a", "address": "127.0.0.2", "asn": 1, "gtsm": true}));
        assert_eq!((ttl_for(&p, false), min_ttl_for(&p)), (255, Some(255)));
        let p =
            peer(serde_json::json!({"name": "a", "address": "127.0.0.2", "asn": 1, "gtsm": true, "multihop_ttl": 3}));
        assert_eq!(min_ttl_for(&p), Some(253));
    }

    #[tokio::test]
    async fn a_dual_stack_listener_takes_md5_keys_for_both_families() {
        let l = listen("[::]:0".parse().unwrap()).unwrap();
        set_listener_key(&l, "127.0.0.2".parse().unwrap(), b"secret").unwrap();
        set_listener_key(&l, "::1".parse().unwrap(), b"secret").unwrap();
        let port = l.local_addr().unwrap().port();
        let s = TcpStream::connect(("127.0.0.1", port)).await;
        // The kernel drops SYNs without a signature only from keyed peers; 127.0.0.1 has no key.
        assert!(s.is_ok());
    }
}
