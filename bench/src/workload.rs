//! Large, valid configurations that look like a real appliance's: three pools (IPv4 auto-assign, IPv6 on
//! request, a small pool for fixed addresses) and static services with named ports and many backends.

use model::config::{Announce, Backend, Config, Pool, Protocol, Service, ServicePort, Settings};
use std::net::Ipv4Addr;

/// The IPv4 pool most services get their VIP from: 198.18.0.0/15 (131,072 addresses, .0 and .255 avoided).
pub const V4_POOL: &str = "vips";
/// An IPv6 pool that only services naming it use (one service in ten).
pub const V6_POOL: &str = "vips6";
/// Addresses that services ask for explicitly (one service in a hundred, while the /24 lasts).
pub const FIXED_POOL: &str = "fixed";

fn pool(name: &str, addresses: &[&str], auto_assign: bool, avoid_buggy_ips: bool) -> Pool {
    Pool { auto_assign, avoid_buggy_ips, ..Pool::new(name, addresses) }
}

/// The pools of every generated configuration; big enough for well over 100,000 services.
pub fn pools() -> Vec<Pool> {
    vec![
        pool(V4_POOL, &["198.18.0.0/15"], true, true),
        pool(V6_POOL, &["2001:db8:100::/104"], false, false),
        pool(FIXED_POOL, &["203.0.113.0/24"], false, false),
    ]
}

/// The name of service number `index`; names sort in index order.
pub fn service_name(index: usize) -> String {
    format!("svc-{index:06}")
}

/// Service number `index`, with `backends` distinct backends. Every index gives a different service, so
/// indices past those of a seeded configuration make new services that fit next to it.
pub fn service(index: usize, backends: usize) -> Service {
    let mut ports = vec![
        ServicePort { name: Some("http".into()), port: 80, protocol: Protocol::Tcp, target_port: Some(8080) },
        ServicePort { name: Some("https".into()), port: 443, protocol: Protocol::Tcp, target_port: Some(8443) },
    ];
    if index.is_multiple_of(5) {
        ports.push(ServicePort { name: Some("dns".into()), port: 53, protocol: Protocol::Udp, target_port: None });
    }
    let (pool, addresses) = if index.is_multiple_of(100) && index / 100 < 254 {
        (None, vec![format!("203.0.113.{}", index / 100 + 1)])
    } else if index % 10 == 5 {
        (Some(V6_POOL.to_string()), Vec::new())
    } else {
        (None, Vec::new())
    };
    let backends = (0..backends)
        .map(|j| {
            // 10.0.0.0/8, one address per (service, backend) for the first 1.6 million backends.
            let n = u32::try_from((index * backends + j) & 0x00ff_ffff).unwrap_or(0);
            let ip = Ipv4Addr::from(0x0a00_0000 | n);
            match j % 4 {
                3 => Backend { address: format!("{ip}:9000"), weight: Some(2) },
                1 => Backend { address: ip.to_string(), weight: Some(10) },
                _ => Backend { address: ip.to_string(), weight: None },
            }
        })
        .collect();
    Service {
        name: service_name(index),
        pool,
        addresses,
        ports,
        backends,
        announce: Announce::default(),
        proxy: Default::default(),
    }
}

/// A configuration with services `0..services`, normalized (sorted by name) as the control plane keeps it.
pub fn config(services: usize, backends: usize) -> Config {
    let mut config = Config {
        pools: pools(),
        services: (0..services).map(|i| service(i, backends)).collect(),
        settings: Settings::default(),
        ..Config::default()
    };
    config.normalize();
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::ipam;

    #[test]
    fn generated_configuration_is_valid_and_gets_every_vip() {
        let config = config(1_000, 10);
        config.validate().unwrap();
        let allocations = ipam::plan(&config.pools, &ipam::static_requests(&config), &[]).unwrap();
        assert_eq!(allocations.len(), 1_000);
        assert_eq!(allocations.iter().filter(|a| a.pool == V6_POOL).count(), 100);
        assert_eq!(allocations.iter().filter(|a| a.pool == FIXED_POOL).count(), 10);
        // Services past the seeded ones fit next to them.
        let mut more = config.clone();
        more.services.extend((1_000..1_100).map(|i| service(i, 10)));
        more.validate().unwrap();
        assert!(ipam::plan(&more.pools, &ipam::static_requests(&more), &allocations).is_ok());
    }
}
