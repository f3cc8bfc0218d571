//! A small authoritative DNS responder for the local stack.
//!
//! It serves what Docker Compose's embedded DNS serves (`poc-routing-server-N`, `server` for all
//! of them, and the reverse (PTR) name of each address), or what Kubernetes' DNS serves for a
//! headless Service (each pod's name, and SRV records naming every pod), with the TTL of 600 s
//! that Docker uses. That TTL matters: it is what makes Envoy's DNS caching behave here as it
//! does in Compose. Records can be changed at run time, to move an instance to a new address as
//! a restart does, or to add and remove instances as scaling does.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// The TTL of every answer: Docker's embedded DNS uses 600 s.
pub const TTL: u32 = 600;

/// Every record, by normalized name.
#[derive(Debug, Default)]
struct Zone {
    a: HashMap<String, Vec<Ipv4Addr>>,
    /// Reverse names (`d.c.b.a.in-addr.arpa`) to the name they point at.
    ptr: HashMap<String, String>,
    /// SRV names to `(target, port)`.
    srv: HashMap<String, Vec<(String, u16)>>,
}

type Records = Arc<RwLock<Zone>>;

/// A running responder. Dropping it stops it.
pub struct DnsResponder {
    addr: SocketAddr,
    records: Records,
    task: tokio::task::JoinHandle<()>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsResponder {
    /// Binds UDP on `bind` (port 0 picks a free port) and starts answering.
    pub async fn start(bind: SocketAddr) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(bind).await?;
        let addr = socket.local_addr()?;
        let records: Records = Arc::default();
        let task = tokio::spawn(serve(socket, records.clone()));
        Ok(Self {
            addr,
            records,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn zone(&self) -> std::sync::RwLockWriteGuard<'_, Zone> {
        self.records.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the A records of `name`; an empty list makes the name unknown (NXDOMAIN).
    pub fn set(&self, name: &str, ips: Vec<Ipv4Addr>) {
        let mut zone = self.zone();
        if ips.is_empty() {
            zone.a.remove(&normalize(name));
        } else {
            zone.a.insert(normalize(name), ips);
        }
    }

    pub fn get(&self, name: &str) -> Vec<Ipv4Addr> {
        let zone = self.records.read().unwrap_or_else(|e| e.into_inner());
        zone.a.get(&normalize(name)).cloned().unwrap_or_default()
    }

    /// Sets (or with `None` removes) the reverse record of `ip`.
    pub fn set_ptr(&self, ip: Ipv4Addr, name: Option<&str>) {
        let [a, b, c, d] = ip.octets();
        let reverse = format!("{d}.{c}.{b}.{a}.in-addr.arpa");
        let mut zone = self.zone();
        match name {
            Some(name) => zone.ptr.insert(reverse, normalize(name)),
            None => zone.ptr.remove(&reverse),
        };
    }

    /// Sets the SRV records of `name`; an empty list makes the name unknown.
    pub fn set_srv(&self, name: &str, targets: Vec<(String, u16)>) {
        let mut zone = self.zone();
        if targets.is_empty() {
            zone.srv.remove(&normalize(name));
        } else {
            zone.srv.insert(normalize(name), targets);
        }
    }
}

impl DnsResponder {
    /// Replaces every A and SRV record at once (PTR records stay), so that a reader never sees
    /// half of an update.
    pub fn replace(
        &self,
        a: HashMap<String, Vec<Ipv4Addr>>,
        srv: HashMap<String, Vec<(String, u16)>>,
    ) {
        let mut zone = self.zone();
        zone.a = a.into_iter().map(|(k, v)| (normalize(&k), v)).collect();
        zone.srv = srv.into_iter().map(|(k, v)| (normalize(&k), v)).collect();
    }
}

impl Drop for DnsResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: UdpSocket, records: Records) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue; // not DNS: ignore, as a real server would
        };
        if let Ok(bytes) = answer(&query, &records).to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

/// Builds the answer to one query: A, PTR and SRV records for known names, NODATA for other
/// types of a known name, NXDOMAIN for unknown names.
fn answer(query: &Message, records: &Records) -> Message {
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true);
    let Some(question) = query.queries().first() else {
        response.set_response_code(ResponseCode::FormErr);
        return response;
    };
    response.add_query(question.clone());
    let zone = records.read().unwrap_or_else(|e| e.into_inner());
    let name = normalize(&question.name().to_ascii());
    let owner = question.name().clone();
    let mut answers = Vec::new();
    let mut known = false;
    if let Some(ips) = zone.a.get(&name) {
        known = true;
        if question.query_type() == RecordType::A {
            answers.extend(ips.iter().map(|ip| RData::A(A(*ip))));
        }
    }
    if let Some(target) = zone.ptr.get(&name) {
        known = true;
        if question.query_type() == RecordType::PTR {
            if let Ok(target) = Name::from_ascii(format!("{target}.")) {
                answers.push(RData::PTR(PTR(target)));
            }
        }
    }
    if let Some(targets) = zone.srv.get(&name) {
        known = true;
        if question.query_type() == RecordType::SRV {
            for (target, port) in targets {
                if let Ok(target) = Name::from_ascii(format!("{target}.")) {
                    answers.push(RData::SRV(SRV::new(0, 100, *port, target)));
                }
            }
        }
    }
    for rdata in answers {
        response.add_answer(Record::from_rdata(owner.clone(), TTL, rdata));
    }
    response.set_response_code(if known {
        ResponseCode::NoError
    } else {
        ResponseCode::NXDomain
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    async fn ask(addr: SocketAddr, name: &str, rtype: RecordType) -> Message {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut q = Message::new();
        q.set_id(7)
            .add_query(Query::query(Name::from_str(name).unwrap(), rtype));
        socket.send_to(&q.to_vec().unwrap(), addr).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let len = tokio::time::timeout(std::time::Duration::from_secs(2), socket.recv(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        Message::from_vec(&buf[..len]).unwrap()
    }

    #[tokio::test]
    async fn answers_known_names_with_ttl_600_and_updates() {
        let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        dns.set("Server-1", vec![Ipv4Addr::new(127, 0, 0, 11)]);
        let m = ask(dns.addr(), "server-1.", RecordType::A).await;
        assert_eq!(m.id(), 7);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(m.answers().len(), 1);
        assert_eq!(m.answers()[0].ttl(), TTL);
        assert_eq!(
            m.answers()[0].data(),
            Some(&RData::A(A(Ipv4Addr::new(127, 0, 0, 11))))
        );

        let m = ask(dns.addr(), "server-1.", RecordType::AAAA).await;
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());

        let m = ask(dns.addr(), "nope.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);

        dns.set("server-1", vec![Ipv4Addr::new(127, 0, 0, 21)]);
        let m = ask(dns.addr(), "server-1.", RecordType::A).await;
        assert_eq!(
            m.answers()[0].data(),
            Some(&RData::A(A(Ipv4Addr::new(127, 0, 0, 21))))
        );
        dns.set("server-1", vec![]);
        let m = ask(dns.addr(), "server-1.", RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn answers_reverse_and_srv_queries() {
        let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        dns.set_ptr(
            Ipv4Addr::new(127, 0, 3, 12),
            Some("poc-routing-server-2.poc-routing_default"),
        );
        let m = ask(dns.addr(), "12.3.0.127.in-addr.arpa.", RecordType::PTR).await;
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(
            m.answers()[0].data(),
            Some(&RData::PTR(PTR(Name::from_ascii(
                "poc-routing-server-2.poc-routing_default."
            )
            .unwrap())))
        );
        dns.set_ptr(Ipv4Addr::new(127, 0, 3, 12), None);
        let m = ask(dns.addr(), "12.3.0.127.in-addr.arpa.", RecordType::PTR).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);

        let srv = "_http._tcp.server-headless.poc-routing.svc.cluster.local";
        dns.set_srv(
            srv,
            vec![("server-0.h".into(), 8081), ("server-3.h".into(), 8081)],
        );
        let m = ask(dns.addr(), &format!("{srv}."), RecordType::SRV).await;
        let targets: Vec<String> = m
            .answers()
            .iter()
            .map(|r| match r.data() {
                Some(RData::SRV(s)) => format!("{}:{}", s.target(), s.port()),
                other => panic!("not SRV: {other:?}"),
            })
            .collect();
        assert_eq!(targets, ["server-0.h.:8081", "server-3.h.:8081"]);
    }
}
