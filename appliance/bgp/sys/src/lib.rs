//! Socket options for BGP that neither `socket2`, `nix` nor `rustix` expose: the TCP-MD5 signature key
//! (RFC 2385, `TCP_MD5SIG`) and the minimum TTL / hop limit of received packets (GTSM, RFC 5082:
//! `IP_MINTTL`, `IPV6_MINHOPCOUNT`).
//!
//! Every unsafe block is a single `setsockopt(2)` on a borrowed, open descriptor with a buffer owned by the
//! caller's stack frame; the kernel copies the buffer and keeps no pointer to it.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

/// `struct tcp_md5sig` from `<linux/tcp.h>`: a `sockaddr_storage` (128 bytes), flags, prefix length,
/// key length, interface index, 80 key bytes. Built as bytes so no `repr(C)` layout has to be trusted.
const MD5SIG_LEN: usize = 216;
const MD5SIG_KEYLEN_OFFSET: usize = 130;
const MD5SIG_KEY_OFFSET: usize = 136;
/// The kernel's limit on a TCP-MD5 key.
pub const MD5_MAX_KEY_LEN: usize = 80;

fn md5sig_buffer(peer: IpAddr, key: &[u8]) -> io::Result<[u8; MD5SIG_LEN]> {
    if key.len() > MD5_MAX_KEY_LEN {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "TCP-MD5 keys are at most 80 bytes"));
    }
    let mut buf = [0u8; MD5SIG_LEN];
    match peer {
        IpAddr::V4(v4) => {
            // sa_family is in host byte order, the port (left 0) and address in network order.
            buf[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            buf[4..8].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            buf[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            buf[8..24].copy_from_slice(&v6.octets());
        }
    }
    // The key length fits: it was checked against 80 above.
    buf[MD5SIG_KEYLEN_OFFSET..MD5SIG_KEYLEN_OFFSET + 2].copy_from_slice(&(key.len() as u16).to_ne_bytes());
    buf[MD5SIG_KEY_OFFSET..MD5SIG_KEY_OFFSET + key.len()].copy_from_slice(key);
    Ok(buf)
}

fn setsockopt_bytes<F: AsFd>(fd: &F, level: libc::c_int, name: libc::c_int, value: &[u8]) -> io::Result<()> {
    let len = libc::socklen_t::try_from(value.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "socket option too large"))?;
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: `raw` comes from a live `BorrowedFd` for the duration of the call; `value` is a valid,
    // initialized buffer of `len` bytes that outlives the call, and setsockopt only reads it.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setsockopt(raw, level, name, value.as_ptr().cast::<libc::c_void>(), len) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Sets (or, with an empty key, removes) the TCP-MD5 key for connections with `peer` on a socket. On a
/// listening socket it applies to connections accepted from that address, one key per peer.
pub fn set_tcp_md5sig<F: AsFd>(fd: &F, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    let buf = md5sig_buffer(peer, key)?;
    setsockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &buf)
}

/// Drops received packets whose TTL (IPv4) or hop limit (IPv6) is below `min`: the receiving half of GTSM.
pub fn set_min_ttl<F: AsFd>(fd: &F, ipv6: bool, min: u8) -> io::Result<()> {
    let value = libc::c_int::from(min).to_ne_bytes();
    if ipv6 {
        setsockopt_bytes(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &value)
    } else {
        setsockopt_bytes(fd, libc::IPPROTO_IP, libc::IP_MINTTL, &value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};

    #[test]
    fn keys_are_laid_out_like_the_kernel_struct() {
        let buf = md5sig_buffer(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), b"secret").unwrap();
        assert_eq!(&buf[4..8], &[192, 0, 2, 1]);
        assert_eq!(u16::from_ne_bytes([buf[130], buf[131]]), 6);
        assert_eq!(&buf[136..142], b"secret");
        assert!(md5sig_buffer(IpAddr::V6(Ipv6Addr::LOCALHOST), &[0; 81]).is_err());
    }

    #[test]
    fn the_kernel_accepts_the_options() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        set_tcp_md5sig(&l, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), b"secret").unwrap();
        set_tcp_md5sig(&l, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), b"").unwrap();
        set_min_ttl(&l, false, 254).unwrap();
        let l6 = TcpListener::bind("[::1]:0").unwrap();
        set_tcp_md5sig(&l6, IpAddr::V6(Ipv6Addr::LOCALHOST), b"k").unwrap();
        set_min_ttl(&l6, true, 255).unwrap();
    }
}
