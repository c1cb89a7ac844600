//! Interfaces and sockets: finding an interface (index, MAC, state) through `getifaddrs` (netlink, so it
//! sees the calling thread's network namespace, unlike `/sys`), and opening the filtered `AF_PACKET` socket
//! bound to it — all through safe `nix` and `socket2` calls.

use crate::wire::Mac;
use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use nix::sys::socket::SockaddrStorage;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// `ETH_P_ALL` in network byte order, as `socket(2)` wants it.
const ETH_P_ALL_BE: i32 = (0x0003u16).to_be() as i32;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot list interfaces: {0}")]
    List(nix::Error),
    #[error("interface {0} has no Ethernet address")]
    NoMac(String),
    #[error("cannot open a packet socket: {0}")]
    Socket(io::Error),
    #[error("cannot attach the BPF filter: {0}")]
    Filter(io::Error),
    #[error("cannot bind to {0}: {1}")]
    Bind(String, nix::Error),
    #[error("cannot join {0} on {1}: {2}")]
    Join(Ipv6Addr, String, io::Error),
}

/// What the responder needs to know of an interface.
#[derive(Debug, Clone)]
pub struct Link {
    pub ifindex: u32,
    pub mac: Mac,
    /// Administratively up and running (carrier / operstate up).
    pub up: bool,
    /// The link-layer address as `getifaddrs` gives it; binding to it binds to the interface.
    addr: SockaddrStorage,
}

/// Looks the interface up; `Ok(None)` when it does not exist (now).
pub fn lookup(name: &str) -> Result<Option<Link>, LinkError> {
    for ifa in getifaddrs().map_err(LinkError::List)? {
        if ifa.interface_name != name {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let Some(ll) = addr.as_link_addr() else { continue };
        if ll.halen() != 6 {
            return Err(LinkError::NoMac(name.to_owned()));
        }
        let Some(mac) = ll.addr() else { return Err(LinkError::NoMac(name.to_owned())) };
        let Ok(ifindex) = u32::try_from(ll.ifindex()) else { continue };
        let up = ifa.flags.contains(InterfaceFlags::IFF_UP) && ifa.flags.contains(InterfaceFlags::IFF_RUNNING);
        return Ok(Some(Link { ifindex, mac, up, addr }));
    }
    Ok(None)
}

/// A raw Ethernet socket bound to one interface.
#[derive(Debug)]
pub struct PacketSocket {
    pub socket: Socket,
}

impl PacketSocket {
    /// Opens an `ETH_P_ALL` packet socket on `link`; with `filtered`, the responder's BPF program is attached
    /// before binding, so no unfiltered frame is ever queued. Reads time out after `read_timeout`.
    pub fn open(name: &str, link: &Link, filtered: bool, read_timeout: Duration) -> Result<PacketSocket, LinkError> {
        let socket =
            Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(ETH_P_ALL_BE))).map_err(LinkError::Socket)?;
        if filtered {
            socket.attach_filter(&crate::filter::program()).map_err(LinkError::Filter)?;
        }
        // Room for a burst: a flood must overflow this queue before it can delay anything.
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket.set_read_timeout(Some(read_timeout)).map_err(LinkError::Socket)?;
        // The address from getifaddrs has protocol 0, which makes bind keep the socket's protocol.
        nix::sys::socket::bind(socket.as_raw_fd(), &link.addr).map_err(|e| LinkError::Bind(name.to_owned(), e))?;
        Ok(PacketSocket { socket })
    }

    /// Sends one whole Ethernet frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.socket.send(frame)
    }

    /// Receives one frame into `buf` (blocking up to the read timeout).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &self.socket, buf)
    }
}

/// The solicited-node groups an interface has joined, through an IPv6 UDP socket: joining makes the kernel
/// program the NIC's multicast filter (33:33:ff:xx:xx:xx), so solicitations for our VIPs reach the packet
/// socket at all.
#[derive(Debug)]
pub struct Groups {
    socket: Socket,
    ifindex: u32,
    joined: std::collections::BTreeSet<Ipv6Addr>,
}

impl Groups {
    pub fn new(ifindex: u32) -> io::Result<Groups> {
        let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        Ok(Groups { socket, ifindex, joined: Default::default() })
    }

    /// Joins and leaves so that exactly `want` is joined; returns the first error.
    pub fn reconcile(&mut self, want: &std::collections::BTreeSet<Ipv6Addr>, name: &str) -> Result<(), LinkError> {
        let mut first = None;
        let leave: Vec<Ipv6Addr> = self.joined.difference(want).copied().collect();
        for g in leave {
            if let Err(e) = self.socket.leave_multicast_v6(&g, self.ifindex) {
                tracing::debug!(interface = name, group = %g, error = %e, "leaving a solicited-node group");
            }
            self.joined.remove(&g);
        }
        for g in want {
            if self.joined.contains(g) {
                continue;
            }
            match self.socket.join_multicast_v6(g, self.ifindex) {
                Ok(()) => {
                    self.joined.insert(*g);
                }
                Err(e) => {
                    first.get_or_insert(LinkError::Join(*g, name.to_owned(), e));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}
