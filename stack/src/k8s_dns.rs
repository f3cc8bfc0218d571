//! Test infrastructure: a stand-in for the Kubernetes cluster DNS (CoreDNS cannot be obtained
//! here), for `make test-k8s`. It reads Services and Endpoints from the API server and serves
//! the records CoreDNS serves for them, through the same [`DnsResponder`] as the local stack:
//!
//! - `<service>.<ns>.svc.<domain>`: the ClusterIP, or for a headless Service every address of
//!   its Endpoints;
//! - `<hostname>.<service>.<ns>.svc.<domain>`: a pod with `hostname`/`subdomain` (StatefulSet
//!   pods of a headless Service);
//! - `_<port>._<proto>.<service>.<ns>.svc.<domain>` SRV: those pod names with the named port.
//!
//! It is not a DNS server for anything else: other names are NXDOMAIN.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::dns::DnsResponder;

#[derive(Deserialize)]
struct List<T> {
    items: Vec<T>,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    namespace: String,
}

#[derive(Deserialize)]
struct Service {
    metadata: Meta,
    spec: ServiceSpec,
}

#[derive(Deserialize)]
struct ServiceSpec {
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<String>,
}

#[derive(Deserialize)]
struct Endpoints {
    metadata: Meta,
    #[serde(default)]
    subsets: Vec<Subset>,
}

#[derive(Deserialize)]
struct Subset {
    #[serde(default)]
    addresses: Vec<Address>,
    #[serde(default)]
    ports: Vec<Port>,
}

#[derive(Deserialize)]
struct Address {
    ip: String,
    #[serde(default)]
    hostname: Option<String>,
}

#[derive(Deserialize)]
struct Port {
    #[serde(default)]
    name: Option<String>,
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
}

/// A records by name, and SRV records by name as (target, port).
type Records = (
    HashMap<String, Vec<Ipv4Addr>>,
    HashMap<String, Vec<(String, u16)>>,
);

/// The A and SRV records for these Services and Endpoints.
fn records(services: &List<Service>, endpoints: &List<Endpoints>, domain: &str) -> Records {
    let mut a: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
    let mut srv: HashMap<String, Vec<(String, u16)>> = HashMap::new();
    let mut headless = Vec::new();
    for s in &services.items {
        let name = format!("{}.{}.svc.{domain}", s.metadata.name, s.metadata.namespace);
        match s.spec.cluster_ip.as_deref() {
            Some("None") => headless.push(name),
            Some(ip) => {
                if let Ok(ip) = ip.parse() {
                    a.insert(name, vec![ip]);
                }
            }
            None => {}
        }
    }
    for e in &endpoints.items {
        let service = format!("{}.{}.svc.{domain}", e.metadata.name, e.metadata.namespace);
        let is_headless = headless.contains(&service);
        for subset in &e.subsets {
            for address in &subset.addresses {
                let Ok(ip) = address.ip.parse::<Ipv4Addr>() else {
                    continue;
                };
                if is_headless {
                    a.entry(service.clone()).or_default().push(ip);
                }
                let Some(hostname) = &address.hostname else {
                    continue;
                };
                let pod = format!("{hostname}.{service}");
                a.entry(pod.clone()).or_default().push(ip);
                for port in &subset.ports {
                    let Some(port_name) = &port.name else {
                        continue;
                    };
                    let proto = port
                        .protocol
                        .as_deref()
                        .unwrap_or("TCP")
                        .to_ascii_lowercase();
                    srv.entry(format!("_{port_name}._{proto}.{service}"))
                        .or_default()
                        .push((pod.clone(), port.port));
                }
            }
        }
    }
    (a, srv)
}

/// One list from the API server.
async fn get<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> Result<T> {
    http.get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {url}"))?
        .json()
        .await
        .with_context(|| format!("GET {url}: not a list"))
}

/// Serves the cluster's names on `dns` from the API server at `api` (e.g.
/// `http://127.0.0.1:8080`), refreshed every `every`, until the task is dropped.
pub async fn follow(dns: &DnsResponder, api: &str, domain: &str, every: Duration) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    loop {
        let services: List<Service> = get(&http, &format!("{api}/api/v1/services")).await?;
        let endpoints: List<Endpoints> = get(&http, &format!("{api}/api/v1/endpoints")).await?;
        let (a, srv) = records(&services, &endpoints, domain);
        dns.replace(a, srv);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_what_coredns_serves_for_our_manifests() {
        let services: List<Service> = serde_json::from_value(serde_json::json!({"items": [
            {"metadata": {"name": "server", "namespace": "poc-routing"}, "spec": {"clusterIP": "10.96.0.20"}},
            {"metadata": {"name": "server-headless", "namespace": "poc-routing"}, "spec": {"clusterIP": "None"}},
        ]}))
        .unwrap();
        let endpoints: List<Endpoints> = serde_json::from_value(serde_json::json!({"items": [
            {"metadata": {"name": "server-headless", "namespace": "poc-routing"}, "subsets": [{
                "addresses": [
                    {"ip": "172.17.0.3", "hostname": "server-0"},
                    {"ip": "172.17.0.4", "hostname": "server-1"}
                ],
                "ports": [{"name": "http", "port": 8081, "protocol": "TCP"}]
            }]},
            {"metadata": {"name": "server", "namespace": "poc-routing"}, "subsets": [{
                "addresses": [{"ip": "172.17.0.3"}], "ports": [{"name": "http", "port": 8081}]
            }]},
        ]}))
        .unwrap();
        let (a, srv) = records(&services, &endpoints, "cluster.local");
        assert_eq!(
            a["server.poc-routing.svc.cluster.local"],
            ["10.96.0.20".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(a["server-headless.poc-routing.svc.cluster.local"].len(), 2);
        assert_eq!(
            a["server-1.server-headless.poc-routing.svc.cluster.local"],
            ["172.17.0.4".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            srv["_http._tcp.server-headless.poc-routing.svc.cluster.local"],
            [
                (
                    "server-0.server-headless.poc-routing.svc.cluster.local".to_owned(),
                    8081
                ),
                (
                    "server-1.server-headless.poc-routing.svc.cluster.local".to_owned(),
                    8081
                )
            ]
        );
        assert!(
            !srv.keys()
                .any(|k| k.ends_with("._tcp.server.poc-routing.svc.cluster.local")),
            "no pod names for a ClusterIP Service's endpoints without hostnames"
        );
    }
}
