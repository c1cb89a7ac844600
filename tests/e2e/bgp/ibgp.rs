//! iBGP with GoBGP: LOCAL_PREF and an empty AS_PATH over an IPv4 session, and an IPv6 VIP as a /128 over an IPv6
//! session.

use super::*;
use crate::bgp_peers::{Afi, Gobgp, GobgpConfig, GobgpNeighbor};

#[tokio::test]
async fn ibgp_with_gobgp_carries_local_pref_and_an_ipv6_vip() {
    let net = PeerNet::new();
    let (a4, a6) = (net.link.a.v4, net.link.a.v6);
    let (b4, b6) = (net.link.b.v4, net.link.b.v6);
    let gobgp = Gobgp::start(
        &net.ns,
        &GobgpConfig::new(OUR_AS, b4)
            .neighbor(GobgpNeighbor::new(a4.into(), OUR_AS).local_address(b4).families(true, false))
            .neighbor(GobgpNeighbor::new(a6.into(), OUR_AS).local_address(b6).families(false, true)),
    );
    let (_app, api) = appliance(Some(net.ours()), None).await;
    add_pool(&api, "v4", &["203.0.113.0/28"]).await;
    add_pool(&api, "v6", &["2001:db8:1::/124"]).await;
    let vip4 = add_service(&api, "web4", "v4", &["192.0.2.10:8080"]).await;
    let vip6 = add_service(&api, "web6", "v6", &["[2001:db8:ff::10]:8080"]).await;
    add_peer(
        &api,
        "gob4",
        b4.into(),
        OUR_AS,
        json!({ "families": ["ipv4-unicast"], "advertise": { "local_pref": 250, "communities": ["65000:4"] } }),
    )
    .await;
    add_peer(
        &api,
        "gob6",
        b6.into(),
        OUR_AS,
        json!({ "families": ["ipv6-unicast"], "advertise": { "local_pref": 300, "med": 7 } }),
    )
    .await;

    let st4 = wait_established(&api, "gob4").await;
    let st6 = wait_established(&api, "gob6").await;
    assert_eq!(st4["negotiated"]["families"], json!(["ipv4-unicast"]), "{st4:#}");
    assert_eq!(st6["negotiated"]["families"], json!(["ipv6-unicast"]), "{st6:#}");
    gobgp.wait_established(a4.into(), WAIT).await;
    gobgp.wait_established(a6.into(), WAIT).await;

    let r4 = gobgp.wait_route(&format!("{vip4}/32"), WAIT).await;
    assert_eq!(r4.local_pref, Some(250), "{r4:?}");
    assert!(r4.as_path.is_empty(), "iBGP: empty AS_PATH: {r4:?}");
    assert_eq!(r4.next_hop, Some(a4.into()), "{r4:?}");
    assert_eq!(r4.communities, ["65000:4"], "{r4:?}");
    assert_eq!(r4.source.as_deref(), Some(a4.to_string().as_str()), "{r4:?}");

    let prefix6 = format!("{vip6}/128");
    let r6 = gobgp.wait_route(&prefix6, WAIT).await;
    assert_eq!(r6.local_pref, Some(300), "{r6:?}");
    assert_eq!(r6.med, Some(7), "{r6:?}");
    assert_eq!(r6.next_hop, Some(a6.into()), "{r6:?}");
    assert_eq!(r6.source.as_deref(), Some(a6.to_string().as_str()), "{r6:?}");
    // Each family only where the peer's families allow it.
    let v4_from_v6: Vec<_> =
        gobgp.routes(Afi::Ipv4).into_iter().filter(|r| r.source.as_deref() == Some(&a6.to_string())).collect();
    assert!(v4_from_v6.is_empty(), "{v4_from_v6:?}");
    let v6_from_v4: Vec<_> =
        gobgp.routes(Afi::Ipv6).into_iter().filter(|r| r.source.as_deref() == Some(&a4.to_string())).collect();
    assert!(v6_from_v4.is_empty(), "{v6_from_v4:?}");
    let a = wait_api(WAIT, "the IPv6 announcement", || async {
        announcement(&api, &prefix6).await.filter(|a| a["peers"] == json!(["gob6"]))
    })
    .await;
    assert_eq!(a["services"], json!(["web6"]), "{a:#}");
}
