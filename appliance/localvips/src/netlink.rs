//! The netlink side: the dummy interface and its addresses, through rtnetlink on the caller's tokio runtime.
//! Many address requests are kept in flight at once on one socket (netlink matches replies by sequence number),
//! which is what makes 10,000 addresses a matter of milliseconds rather than of round trips.

use crate::Error;
use crate::plan::{Address, managed};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkDummy, LinkIfb, LinkUnspec};
use std::collections::BTreeSet;
use std::net::IpAddr;
use tokio::task::JoinHandle;

/// Requests in flight at once. Enough to hide the round trip; few enough that the replies fit in the socket's
/// receive buffer.
const IN_FLIGHT: usize = 128;

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EACCES: i32 = 13;
const EADDRNOTAVAIL: i32 = 99;
const EOPNOTSUPP: i32 = 95;

/// The errno of a netlink error reply, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

pub fn is_permission(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(EPERM | EACCES))
}

pub fn is_no_device(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENODEV))
}

/// Turns a netlink error into ours, naming what was being done.
pub fn wrap(action: impl Into<String>, e: rtnetlink::Error) -> Error {
    let action = action.into();
    if is_permission(&e) { Error::Permission { action } } else { Error::Netlink { action, source: e } }
}

/// An open netlink connection; the connection task lives on the runtime it was opened on.
pub struct Netlink {
    pub handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What we need to know of an existing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub flags: LinkFlags,
    /// `dummy`, `veth`…; `None` for a link without a kind (a physical NIC, loopback).
    pub kind: Option<String>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let kind = m.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Kind(k) => Some(kind_name(k)),
                _ => None,
            }),
            _ => None,
        });
        Link { index: m.header.index, flags: m.header.flags, kind }
    }

    /// A kind this crate may use: `dummy`, or `ifb` where the kernel has no dummy driver (see
    /// [`Netlink::create_dummy`]).
    pub fn is_usable_kind(&self) -> bool {
        matches!(self.kind.as_deref(), Some("dummy" | "ifb"))
    }

    pub fn is_up_noarp(&self) -> bool {
        self.flags.contains(LinkFlags::Up) && self.flags.contains(LinkFlags::Noarp)
    }
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Dummy => "dummy".to_string(),
        InfoKind::Ifb => "ifb".to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace. Must run inside a tokio runtime.
    pub fn connect() -> Result<Netlink, Error> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
        let task = tokio::spawn(connection);
        Ok(Netlink { handle, task })
    }

    /// The link of that name, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, Error> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(m)) => Ok(Some(Link::from_message(&m))),
            Ok(None) => Ok(None),
            Err(e) if is_no_device(&e) => Ok(None),
            Err(e) => Err(wrap(format!("look up interface {name}"), e)),
        }
    }

    /// Creates a dummy link, down and without ARP (it is brought up by [`Netlink::up_noarp`] once its sysctls
    /// are set); returns its kind. A kernel built without the dummy driver (some VM kernels: "Unknown device
    /// type") gets an `ifb` link instead, which behaves the same for local addresses: no traffic of its own
    /// ever enters or leaves it.
    pub async fn create_dummy(&self, name: &str) -> Result<&'static str, Error> {
        let message = LinkDummy::new(name).arp(false).build();
        match self.handle.link().add(message).execute().await {
            Ok(()) => Ok("dummy"),
            Err(e) if errno(&e) == Some(EOPNOTSUPP) => {
                let message = LinkIfb::new(name).arp(false).build();
                match self.handle.link().add(message).execute().await {
                    Ok(()) => Ok("ifb"),
                    Err(e) => Err(wrap(format!("create interface {name} (the kernel has no dummy driver; ifb)"), e)),
                }
            }
            Err(e) => Err(wrap(format!("create dummy interface {name}"), e)),
        }
    }

    pub async fn up_noarp(&self, index: u32, name: &str) -> Result<(), Error> {
        let message = LinkUnspec::new_with_index(index).arp(false).up().build();
        self.handle.link().set(message).execute().await.map_err(|e| wrap(format!("bring {name} up (noarp)"), e))
    }

    pub async fn delete_link(&self, index: u32, name: &str) -> Result<(), Error> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_no_device(&e) => Ok(()),
            Err(e) => Err(wrap(format!("delete interface {name}"), e)),
        }
    }

    /// The managed addresses on the link (see [`managed`]).
    pub async fn addresses(&self, index: u32, name: &str) -> Result<BTreeSet<Address>, Error> {
        let dump = self.handle.address().get().set_link_index_filter(index).execute();
        let messages: Vec<AddressMessage> =
            dump.try_collect().await.map_err(|e| wrap(format!("list the addresses of {name}"), e))?;
        Ok(messages.iter().filter_map(address_of).filter(managed).collect())
    }

    /// Adds each address; returns those that failed with their error. An address that is already there counts as
    /// added.
    pub async fn add(&self, index: u32, addresses: &[Address]) -> Vec<(Address, rtnetlink::Error)> {
        let results = futures::stream::iter(addresses.iter().copied())
            .map(|a| {
                let mut request = self.handle.address().add(index, a.ip, a.prefix_len);
                let m = request.message_mut();
                if a.ip.is_ipv6() {
                    // A VIP must be usable at once: no duplicate address detection (the interface has no link
                    // layer anyway, and the responder answers for it). No prefix route either: the kernel's
                    // local route is all delivery needs, and 10,000 /128 routes in the main table would double
                    // the cost of every later delete (each one walks the IPv6 routing table).
                    m.header.flags |= AddressHeaderFlags::Nodad;
                    m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad | AddressFlags::Noprefixroute));
                }
                async move { (a, request.execute().await) }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        results
            .into_iter()
            .filter_map(|(a, r)| match r {
                Err(e) if errno(&e) != Some(EEXIST) => Some((a, e)),
                _ => None,
            })
            .collect()
    }

    /// Deletes each address; returns those that failed with their error. An address that is already gone counts
    /// as deleted.
    pub async fn remove(&self, index: u32, addresses: &[Address]) -> Vec<(Address, rtnetlink::Error)> {
        let results = futures::stream::iter(addresses.iter().copied())
            .map(|a| {
                let request = self.handle.address().del(message_for(index, a));
                async move { (a, request.execute().await) }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        results
            .into_iter()
            .filter_map(|(a, r)| match r {
                Err(e) if !matches!(errno(&e), Some(EADDRNOTAVAIL | ENOENT | ENODEV)) => Some((a, e)),
                _ => None,
            })
            .collect()
    }
}

/// The address message that names one address of a link (for a delete).
fn message_for(index: u32, a: Address) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = a.prefix_len;
    m.header.family = if a.ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.attributes.push(AddressAttribute::Local(a.ip));
    m.attributes.push(AddressAttribute::Address(a.ip));
    m
}

/// The local address of an address message (`IFA_LOCAL`, or `IFA_ADDRESS` where there is none, as for IPv6).
fn address_of(m: &AddressMessage) -> Option<Address> {
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    let ip: IpAddr = local.or(address)?;
    Some(Address { ip, prefix_len: m.header.prefix_len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn delete_message_names_address_and_length() {
        let a = Address::host(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
        let m = message_for(5, a);
        assert_eq!(m.header.index, 5);
        assert_eq!(m.header.prefix_len, 32);
        assert_eq!(address_of(&m), Some(a));
    }
}
