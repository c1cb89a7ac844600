//! The test API server driven by the real `kube` 5 client and kube-runtime watchers.

// Test helpers outside `#[test]` functions fail the test on a broken expectation.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Config};
use portico_test_apiserver::{Permission, TestApiServer, permissions};
use serde_json::json;
use tokio::sync::mpsc;

fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

async fn client(server: &TestApiServer, token: &str) -> Client {
    install_crypto();
    let kc = Kubeconfig::from_yaml(&server.kubeconfig(token)).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

fn lb_service(name: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "portico.io/lb", "ports": [{"name": "http", "port": 80}]}
    })
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Collects a watcher's events into a channel.
fn spawn_watcher(api: Api<Service>, config: watcher::Config) -> mpsc::UnboundedReceiver<Event<Service>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, config).boxed();
        while let Some(item) = stream.next().await {
            if let Ok(ev) = item
                && tx.send(ev).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Waits for the first event matching `pred`.
async fn expect<F>(rx: &mut mpsc::UnboundedReceiver<Event<Service>>, what: &str, pred: F) -> Event<Service>
where
    F: Fn(&Event<Service>) -> bool,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("watcher ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

fn name(s: &Service) -> &str {
    s.metadata.name.as_deref().unwrap_or_default()
}

fn applied(ev: &Event<Service>, n: &str) -> bool {
    matches!(ev, Event::Apply(s) if name(s) == n)
}

#[tokio::test]
async fn watcher_sees_changes_and_survives_drops_and_restarts() {
    let server = TestApiServer::builder().bookmark_interval(Duration::from_millis(200)).start().await;
    let token = server.add_token("portico", permissions::appliance());
    let client = client(&server, &token).await;
    server.create("Service", Some("default"), lb_service("before")).unwrap();

    let api: Api<Service> = Api::namespaced(client, "default");
    let mut rx = spawn_watcher(api, watcher::Config::default());
    expect(&mut rx, "the initial list", |e| matches!(e, Event::InitApply(s) if name(s) == "before")).await;
    expect(&mut rx, "InitDone", |e| matches!(e, Event::InitDone)).await;

    server.create("Service", Some("default"), lb_service("web")).unwrap();
    expect(&mut rx, "ADDED web", |e| applied(e, "web")).await;
    server.patch("Service", Some("default"), "web", json!({"metadata": {"labels": {"tier": "front"}}})).unwrap();
    expect(&mut rx, "MODIFIED web", |e| {
        matches!(e, Event::Apply(s) if name(s) == "web" && s.metadata.labels.as_ref().is_some_and(|l| l.contains_key("tier")))
    })
    .await;
    server.delete("Service", Some("default"), "web").unwrap();
    expect(&mut rx, "DELETED web", |e| matches!(e, Event::Delete(s) if name(s) == "web")).await;

    // A dropped watch is resumed from the last version, without a relist.
    let lists_before = server.requests().iter().filter(|r| r.param("watch").is_none()).count();
    assert!(server.wait_for_watches("/services", 1, Duration::from_secs(10)).await);
    server.drop_watches();
    assert!(server.wait_for_watches("/services", 1, Duration::from_secs(10)).await, "the watch is re-established");
    server.create("Service", Some("default"), lb_service("after-drop")).unwrap();
    expect(&mut rx, "ADDED after-drop", |e| applied(e, "after-drop")).await;
    let lists_after = server.requests().iter().filter(|r| r.param("watch").is_none()).count();
    assert_eq!(lists_before, lists_after, "a dropped watch must not cause a relist");
    let rewatch = server.requests().into_iter().rev().find(|r| r.param("watch").is_some()).unwrap();
    assert!(rewatch.param("resourceVersion").is_some_and(|rv| rv != "0"), "{rewatch:?}");

    // A restart resets resource versions: the watcher gets 410 and relists.
    let lists_before = server.requests().iter().filter(|r| r.param("watch").is_none()).count();
    server.restart();
    expect(&mut rx, "a relist after the restart", |e| matches!(e, Event::Init)).await;
    expect(&mut rx, "InitDone after the restart", |e| matches!(e, Event::InitDone)).await;
    server.create("Service", Some("default"), lb_service("after-restart")).unwrap();
    expect(&mut rx, "ADDED after-restart", |e| applied(e, "after-restart")).await;
    let lists_after = server.requests().iter().filter(|r| r.param("watch").is_none()).count();
    assert!(lists_after > lists_before, "the restart must cause a relist");
}

#[tokio::test]
async fn paginated_and_streaming_initial_lists() {
    let server = TestApiServer::start().await;
    let token = server.add_token("portico", permissions::appliance());
    let client = client(&server, &token).await;
    for i in 0..5 {
        server.create("Service", Some("default"), lb_service(&format!("s{i}"))).unwrap();
    }
    let api: Api<Service> = Api::namespaced(client.clone(), "default");

    // Paginated list with the most recent semantic (the watcher default), two per page.
    let mut rx = spawn_watcher(api.clone(), watcher::Config::default().page_size(2));
    let mut seen = Vec::new();
    loop {
        match expect(&mut rx, "the paginated initial list", |_| true).await {
            Event::InitApply(s) => seen.push(name(&s).to_string()),
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["s0", "s1", "s2", "s3", "s4"]);
    let lists: Vec<_> = server.requests().into_iter().filter(|r| r.param("limit").as_deref() == Some("2")).collect();
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert!(lists[1].param("continue").is_some());

    // Streaming list (sendInitialEvents) ends with the initial-events-end bookmark.
    let mut rx = spawn_watcher(api.clone(), watcher::Config::default().streaming_lists());
    let mut seen = 0;
    loop {
        match expect(&mut rx, "the streaming initial list", |_| true).await {
            Event::InitApply(_) => seen += 1,
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, 5);
    assert!(server.requests().iter().any(|r| r.param("sendInitialEvents").as_deref() == Some("true")));

    // The "any" semantic (resourceVersion=0) with a label selector.
    let mut rx = spawn_watcher(api, watcher::Config::default().any_semantic().labels("app in (s1,s3)"));
    let mut seen = Vec::new();
    loop {
        match expect(&mut rx, "the selected initial list", |_| true).await {
            Event::InitApply(s) => seen.push(name(&s).to_string()),
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["s1", "s3"]);
    // A label change that moves an object out of the selection is a deletion for that watcher.
    server.patch("Service", Some("default"), "s1", json!({"metadata": {"labels": {"app": "other"}}})).unwrap();
    expect(&mut rx, "s1 leaving the selection", |e| matches!(e, Event::Delete(s) if name(s) == "s1")).await;
}

#[tokio::test]
async fn expired_resource_version_is_a_410_error_event() {
    let server = TestApiServer::builder().history_window(3).start().await;
    let token = server.add_token("admin", permissions::admin());
    let client = client(&server, &token).await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let first = server.create("Service", Some("default"), lb_service("a")).unwrap();
    let rv = first["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    for i in 0..5 {
        server.patch("Service", Some("default"), "a", json!({"metadata": {"labels": {"n": i.to_string()}}})).unwrap();
    }
    let mut stream = api.watch(&WatchParams::default().timeout(5), &rv).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
            assert!(e.message.starts_with("too old resource version"), "{}", e.message);
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    // A recent version still works, and bookmarks carry the newest version.
    let current = server.resource_version().to_string();
    let mut stream = api.watch(&WatchParams::default().timeout(3), &current).await.unwrap().boxed();
    server.patch("Service", Some("default"), "a", json!({"metadata": {"labels": {"n": "last"}}})).unwrap();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Modified(s)) => assert_eq!(s.metadata.labels.unwrap()["n"], "last"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
}

#[tokio::test]
async fn status_patches_merge_and_server_side_apply() {
    let server = TestApiServer::start().await;
    let token = server.add_token("portico", permissions::appliance());
    let client = client(&server, &token).await;
    server.create("Service", Some("default"), lb_service("web")).unwrap();
    let api: Api<Service> = Api::namespaced(client, "default");

    let merged = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}})),
        )
        .await
        .unwrap();
    let ingress = merged.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(ingress[0].ip_mode.as_deref(), Some("VIP"), "ipMode defaults to VIP");

    let applied = api
        .patch_status(
            "web",
            &PatchParams::apply("portico").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.11", "ipMode": "VIP"}]}}
            })),
        )
        .await
        .unwrap();
    let ingress = applied.status.clone().unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("192.0.2.11"));
    let managers = applied.metadata.managed_fields.unwrap();
    assert!(managers.iter().any(|m| m.manager.as_deref() == Some("portico")
        && m.operation.as_deref() == Some("Apply")
        && m.subresource.as_deref() == Some("status")));
    // The spec is untouched by status writes.
    assert_eq!(applied.spec.unwrap().load_balancer_class.as_deref(), Some("portico.io/lb"));

    // Invalid addresses are rejected like the real server does.
    for bad in
        [json!({"ip": "192.0.2.300"}), json!({"ip": "192.0.2.1", "ipMode": "Magic"}), json!({"hostname": "10.0.0.1"})]
    {
        let e = api
            .patch_status(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [bad]}}})),
            )
            .await
            .unwrap_err();
        let s = api_error(e);
        assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{}", s.message);
    }
    assert_eq!(server.count_requests("PATCH", "/api/v1/namespaces/default/services/web/status"), 5);
    // Writing the main resource is not allowed for the appliance.
    let e = api.patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}}))).await;
    assert_eq!(api_error(e.unwrap_err()).code, 403);
}

#[tokio::test]
async fn permissions_revocation_and_access_reviews() {
    let server = TestApiServer::start().await;
    let token = server.add_token("portico", permissions::appliance());
    let client = client(&server, &token).await;
    let services: Api<Service> = Api::all(client.clone());
    services.list(&ListParams::default()).await.unwrap();

    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = |verb: &str, resource: &str, sub: Option<&str>| SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_string()),
                resource: Some(resource.to_string()),
                subresource: sub.map(str::to_string),
                group: Some(String::new()),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let ok = reviews.create(&PostParams::default(), &review("watch", "services", None)).await.unwrap();
    assert!(ok.status.unwrap().allowed);
    let ok = reviews.create(&PostParams::default(), &review("patch", "services", Some("status"))).await.unwrap();
    assert!(ok.status.unwrap().allowed);
    let no = reviews.create(&PostParams::default(), &review("delete", "services", None)).await.unwrap();
    assert!(!no.status.unwrap().allowed);

    // Permissions changed at runtime: 403 with the real message shape.
    server.set_permissions(&token, vec![Permission::new("list", "", "secrets")]);
    let s = api_error(services.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        s.message,
        "services is forbidden: User \"portico\" cannot list resource \"services\" in API group \"\" at the cluster scope"
    );
    // A revoked token is a 401.
    server.revoke_token(&token);
    let s = api_error(services.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(s.code, 401);
}

#[tokio::test]
async fn discovery_events_and_faults() {
    let server = TestApiServer::start().await;
    let token = server.add_token("admin", permissions::admin());
    let client = client(&server, &token).await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    let discovery = kube::discovery::Discovery::new(client.clone()).run().await.unwrap();
    let kinds: Vec<String> =
        discovery.groups().flat_map(|g| g.recommended_resources()).map(|(ar, _)| ar.kind).collect();
    for k in ["Service", "EndpointSlice", "Ingress", "IngressClass", "Node", "Secret"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from discovery: {kinds:?}");
    }

    // kube-runtime's event recorder: a create, then a patch with a series.
    let svc = server.create("Service", Some("default"), lb_service("web")).unwrap();
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        uid: svc["metadata"]["uid"].as_str().map(str::to_string),
        ..Default::default()
    };
    let recorder = Recorder::new(client.clone(), Reporter::from("portico.io/cluster"));
    let event = KEvent {
        type_: EventType::Normal,
        reason: "IPAllocated".into(),
        note: Some("allocated 192.0.2.10".into()),
        action: "Allocate".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let events = server.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "IPAllocated");
    assert_eq!(events[0]["series"]["count"], 2);
    assert_eq!(events[0]["regarding"]["name"], "web");

    // Injected 500s, then recovery.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    server.fail_next(1, Some("/endpointslices"));
    let s = api_error(slices.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    slices.list(&ListParams::default()).await.unwrap();

    // Unreachable, then back on the same port.
    server.stop_listening().await;
    assert!(slices.list(&ListParams::default()).await.is_err());
    server.resume_listening().await.unwrap();
    let mut ok = false;
    for _ in 0..20 {
        if slices.list(&ListParams::default()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the server did not come back");
}

#[tokio::test]
async fn api_conventions_seen_by_the_client() {
    let server = TestApiServer::builder().bookmark_interval(Duration::from_millis(100)).start().await;
    let token = server.add_token("admin", permissions::admin());
    let client = client(&server, &token).await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(lb_service("web")).unwrap();
    let created = api.create(&PostParams::default(), &svc).await.unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert!(created.spec.as_ref().unwrap().cluster_ip.is_some(), "a cluster IP is allocated");

    let s = api_error(api.create(&PostParams::default(), &svc).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(s.message, "services \"web\" already exists");
    let s = api_error(api.get("nope").await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str(), s.message.as_str()), (404, "NotFound", "services \"nope\" not found"));
    assert!(api.get_opt("nope").await.unwrap().is_none());

    // PUT with a stale resourceVersion.
    let mut stale = created.clone();
    server.patch("Service", Some("default"), "web", json!({"metadata": {"labels": {"touched": "yes"}}})).unwrap();
    stale.metadata.labels.get_or_insert_default().insert("mine".into(), "1".into());
    let s = api_error(api.replace("web", &PostParams::default(), &stale).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));

    // Invalid names and bad selectors.
    let bad: Service = serde_json::from_value(lb_service("Bad_Name")).unwrap();
    let s = api_error(api.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!(s.code, 422);
    assert!(s.message.starts_with("Service \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""));
    let s = api_error(api.list(&ListParams::default().labels("app in web")).await.unwrap_err());
    assert_eq!(s.code, 400);
    let s = api_error(api.list(&ListParams::default().fields("spec.type=LoadBalancer")).await.unwrap_err());
    assert_eq!((s.code, s.message.as_str()), (400, "field label not supported: spec.type"));

    // Pagination, and a continue token that outlived its version.
    for i in 0..4 {
        server.create("Service", Some("default"), lb_service(&format!("p{i}"))).unwrap();
    }
    let page = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.metadata.remaining_item_count, Some(3));
    let token = page.metadata.continue_.clone().unwrap();
    let next = api.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(next.metadata.resource_version, page.metadata.resource_version);
    server.patch("Service", Some("default"), "p0", json!({"metadata": {"labels": {"x": "y"}}})).unwrap();
    server.compact();
    let s = api_error(api.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));

    // Bookmarks carry the newest version when allowed.
    let current = server.resource_version().to_string();
    let mut stream = api.watch(&WatchParams::default().timeout(10), &current).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Bookmark(b)) => assert_eq!(b.metadata.resource_version, current),
        other => panic!("expected a BOOKMARK, got {other:?}"),
    }

    // Metadata-only watcher (PartialObjectMetadata).
    let meta_api: Api<PartialObjectMeta<Service>> = Api::namespaced(client.clone(), "default");
    let mut meta = watcher::watcher(meta_api, watcher::Config::default()).boxed();
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), meta.try_next()).await.unwrap().unwrap() {
            Some(Event::InitApply(m)) => names.push(m.metadata.name.unwrap_or_default()),
            Some(Event::InitDone) => break,
            _ => {}
        }
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "web"]);

    // A delete answers the object; the watcher's DELETED carries it.
    api.delete("web", &Default::default()).await.unwrap();
    assert!(server.get("Service", Some("default"), "web").is_none());
}

/// Lists and watches every kind the appliance watches, cluster-wide, with the selectors it uses.
#[tokio::test]
async fn every_watched_kind_lists_and_watches() {
    use k8s_openapi::api::core::v1::{Node, Secret};
    use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

    async fn first_init<K>(api: Api<K>, config: watcher::Config) -> Vec<K>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let mut w = watcher::watcher(api, config).boxed();
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), w.try_next()).await.unwrap().unwrap() {
                Some(Event::InitApply(o)) => out.push(o),
                Some(Event::InitDone) => return out,
                _ => {}
            }
        }
    }

    let server = TestApiServer::start().await;
    let token = server.add_token("portico", permissions::appliance());
    let client = client(&server, &token).await;
    server
        .create(
            "Node",
            None,
            json!({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "a"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}),
        )
        .unwrap();
    server
        .create(
            "IngressClass",
            None,
            json!({"metadata": {"name": "portico"}, "spec": {"controller": "portico.io/ingress"}}),
        )
        .unwrap();
    server
        .create(
            "Ingress",
            Some("web"),
            json!({"metadata": {"name": "site"}, "spec": {"ingressClassName": "portico",
            "tls": [{"hosts": ["a.example.com"], "secretName": "cert"}],
            "rules": [{"host": "a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
        )
        .unwrap();
    server
        .create(
            "Secret",
            Some("web"),
            json!({"metadata": {"name": "cert"}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": "CERT", "tls.key": "KEY"}}),
        )
        .unwrap();
    server.create("Secret", Some("web"), json!({"metadata": {"name": "opaque"}, "stringData": {"a": "b"}})).unwrap();
    let e = server.create("Secret", Some("web"), json!({"metadata": {"name": "bad"}, "type": "kubernetes.io/tls"}));
    assert_eq!(e.unwrap_err().code, 422, "a TLS secret needs tls.crt and tls.key");
    server
        .create(
            "EndpointSlice",
            Some("web"),
            json!({"metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": true}, "nodeName": "n1", "zone": "a"}]}),
        )
        .unwrap();

    let nodes = first_init(Api::<Node>::all(client.clone()), watcher::Config::default()).await;
    assert_eq!(nodes.len(), 1);
    let classes = first_init(Api::<IngressClass>::all(client.clone()), watcher::Config::default()).await;
    assert_eq!(classes[0].spec.as_ref().unwrap().controller.as_deref(), Some("portico.io/ingress"));
    let ingresses = first_init(Api::<Ingress>::all(client.clone()), watcher::Config::default()).await;
    assert_eq!(ingresses[0].metadata.generation, Some(1));
    let secrets =
        first_init(Api::<Secret>::all(client.clone()), watcher::Config::default().fields("type=kubernetes.io/tls"))
            .await;
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].data.as_ref().unwrap()["tls.crt"].0, b"CERT");
    let slices = first_init(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels("kubernetes.io/service-name=web"),
    )
    .await;
    assert_eq!(slices[0].endpoints[0].addresses, ["10.1.0.5"]);

    // Ingress status through the status subresource.
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "web");
    let patched = ingresses
        .patch_status(
            "site",
            &PatchParams::apply("portico").force(),
            &Patch::Apply(
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "site"},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.20"}]}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0].ip.as_deref(), Some("192.0.2.20"));
    assert_eq!(patched.metadata.generation, Some(1), "status writes do not bump the generation");
}
