//! Address ranges of pools: CIDRs (`10.0.0.0/24`, `2001:db8::/120`), inclusive ranges (`10.0.0.10-10.0.0.20`)
//! and single addresses. Addresses are handled as integers so that ranges compare and split cheaply.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// An address as (family, integer). Ordering keeps IPv4 before IPv6 and is numeric within a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrKey {
    pub family: Family,
    pub value: u128,
}

impl AddrKey {
    pub fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddrKey { family: Family::Ipv4, value: u128::from(u32::from(v4)) },
            IpAddr::V6(v6) => AddrKey { family: Family::Ipv6, value: u128::from(v6) },
        }
    }

    pub fn to_ip(self) -> IpAddr {
        match self.family {
            // Values of IPv4 keys always come from a u32, so the truncation is exact.
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::from(self.value as u32)),
            Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(self.value)),
        }
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRange {
    pub family: Family,
    pub first: u128,
    pub last: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("'{0}' is not an IP address, a CIDR (10.0.0.0/24) or a range (10.0.0.10-10.0.0.20)")]
    Syntax(String),
    #[error("prefix length /{len} is too long for an {family} address")]
    PrefixTooLong { len: u8, family: Family },
    #[error("'{0}' has host bits set; did you mean {1}?")]
    HostBitsSet(String, String),
    #[error("range start and end are of different address families")]
    MixedFamilies,
    #[error("range start {0} is after its end {1}")]
    Reversed(IpAddr, IpAddr),
}

impl IpRange {
    pub fn single(ip: IpAddr) -> Self {
        let k = AddrKey::from_ip(ip);
        IpRange { family: k.family, first: k.value, last: k.value }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let k = AddrKey::from_ip(ip);
        k.family == self.family && self.first <= k.value && k.value <= self.last
    }

    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.family == other.family && self.first <= other.last && other.first <= self.last
    }

    /// Number of addresses, saturating at u128::MAX for a whole IPv6 space.
    pub fn size(&self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }

    pub fn first_ip(&self) -> IpAddr {
        AddrKey { family: self.family, value: self.first }.to_ip()
    }

    pub fn last_ip(&self) -> IpAddr {
        AddrKey { family: self.family, value: self.last }.to_ip()
    }

    pub fn parse(text: &str) -> Result<IpRange, RangeError> {
        let s = text.trim();
        if let Some((start, end)) = s.split_once('-') {
            let a: IpAddr = start.trim().parse().map_err(|_| RangeError::Syntax(text.into()))?;
            let b: IpAddr = end.trim().parse().map_err(|_| RangeError::Syntax(text.into()))?;
            let (ka, kb) = (AddrKey::from_ip(a), AddrKey::from_ip(b));
            if ka.family != kb.family {
                return Err(RangeError::MixedFamilies);
            }
            if ka.value > kb.value {
                return Err(RangeError::Reversed(a, b));
            }
            return Ok(IpRange { family: ka.family, first: ka.value, last: kb.value });
        }
        if let Some((addr, len)) = s.split_once('/') {
            let ip: IpAddr = addr.trim().parse().map_err(|_| RangeError::Syntax(text.into()))?;
            let len: u8 = len.trim().parse().map_err(|_| RangeError::Syntax(text.into()))?;
            let k = AddrKey::from_ip(ip);
            let bits: u8 = match k.family {
                Family::Ipv4 => 32,
                Family::Ipv6 => 128,
            };
            if len > bits {
                return Err(RangeError::PrefixTooLong { len, family: k.family });
            }
            let host_bits = u32::from(bits - len);
            let host_mask: u128 = if host_bits == 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
            let first = k.value & !host_mask;
            if first != k.value {
                let network = AddrKey { family: k.family, value: first }.to_ip();
                return Err(RangeError::HostBitsSet(text.into(), format!("{network}/{len}")));
            }
            return Ok(IpRange { family: k.family, first, last: first | host_mask });
        }
        let ip: IpAddr = s.parse().map_err(|_| RangeError::Syntax(text.into()))?;
        Ok(IpRange::single(ip))
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first_ip())
        } else {
            write!(f, "{}-{}", self.first_ip(), self.last_ip())
        }
    }
}

/// True for IPv4 addresses ending in .0 or .255, which some old clients and routers mishandle (MetalLB's
/// `avoidBuggyIPs`).
pub fn is_buggy_ipv4(key: AddrKey) -> bool {
    key.family == Family::Ipv4 && matches!(key.value & 0xff, 0 | 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn parses_cidr_range_and_single() {
        let r = IpRange::parse("10.0.0.0/30").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!((r.first_ip(), r.last_ip(), r.size()), (ip("10.0.0.0"), ip("10.0.0.3"), 4));
        let r = IpRange::parse("10.0.0.10 - 10.0.0.20").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(r.size(), 11);
        let r = IpRange::parse("2001:db8::/126").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(r.last_ip(), ip("2001:db8::3"));
        let r = IpRange::parse("::/0").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(r.size(), u128::MAX);
        assert_eq!(IpRange::parse("192.0.2.7").map(|r| r.size()), Ok(1));
    }

    #[test]
    fn rejects_bad_ranges_with_reasons() {
        assert!(matches!(IpRange::parse("10.0.0.1/24"), Err(RangeError::HostBitsSet(_, s)) if s == "10.0.0.0/24"));
        assert!(matches!(IpRange::parse("10.0.0.0/33"), Err(RangeError::PrefixTooLong { .. })));
        assert!(matches!(IpRange::parse("10.0.0.9-10.0.0.1"), Err(RangeError::Reversed(..))));
        assert!(matches!(IpRange::parse("10.0.0.1-::1"), Err(RangeError::MixedFamilies)));
        assert!(matches!(IpRange::parse("banana"), Err(RangeError::Syntax(_))));
    }

    #[test]
    fn overlap_and_buggy() {
        let a = IpRange::parse("10.0.0.0/24").unwrap_or_else(|e| unreachable!("{e}"));
        let b = IpRange::parse("10.0.0.255-10.0.1.3").unwrap_or_else(|e| unreachable!("{e}"));
        let c = IpRange::parse("10.0.1.0/24").unwrap_or_else(|e| unreachable!("{e}"));
        assert!(a.overlaps(&b) && b.overlaps(&c) && !a.overlaps(&c));
        assert!(is_buggy_ipv4(AddrKey::from_ip(ip("10.0.0.255"))));
        assert!(!is_buggy_ipv4(AddrKey::from_ip(ip("10.0.0.1"))));
        assert!(!is_buggy_ipv4(AddrKey::from_ip(ip("::ff"))));
    }
}
