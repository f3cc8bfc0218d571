//! A small authoritative DNS responder for the local stack.
//!
//! It serves what Docker Compose's embedded DNS serves (`poc-routing-server-N`, `server` for all
//! of them, and the reverse (PTR) name of each address), or what Kubernetes' DNS serves for a
//! headless Service (each pod's name, and SRV records naming every pod), with the TTL of 600 s
//! that Docker uses. That TTL matters: it is what makes Envoy's DNS caching behave here as it
//! does in Compose. Records can be changed at run time, to move an instance to a new address as
//! a restart does, or to add and remove instances as scaling does.
//!
//! Large answers are served as Docker's DNS and CoreDNS serve them: a UDP reply that would not
//! fit (512 bytes, or the EDNS size the query offers) is sent empty with the truncation bit
//! set, and the same port answers over TCP, where the whole answer fits.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

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
    tcp_task: tokio::task::JoinHandle<()>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsResponder {
    /// Binds UDP and TCP on `bind` (port 0 picks a port free for both) and starts answering.
    pub async fn start(bind: SocketAddr) -> std::io::Result<Self> {
        let (socket, listener) = bind_both(bind).await?;
        let addr = socket.local_addr()?;
        let records: Records = Arc::default();
        let task = tokio::spawn(serve(socket, records.clone()));
        let tcp_task = tokio::spawn(serve_tcp(listener, records.clone()));
        Ok(Self {
            addr,
            records,
            task,
            tcp_task,
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
        self.tcp_task.abort();
    }
}

/// UDP and TCP on the same port: with port 0, tries ports until one is free for both.
async fn bind_both(bind: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let socket = UdpSocket::bind(bind).await?;
        match TcpListener::bind(socket.local_addr()?).await {
            Ok(listener) => return Ok((socket, listener)),
            Err(e) if bind.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free for UDP and TCP")))
}

/// The largest UDP reply a query accepts: 512 bytes, or what its EDNS record offers.
fn udp_limit(query: &Message) -> usize {
    query
        .extensions()
        .as_ref()
        .map_or(512, |edns| usize::from(edns.max_payload()).max(512))
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
        let mut response = answer(&query, &records);
        let Ok(mut bytes) = response.to_vec() else {
            continue;
        };
        if bytes.len() > udp_limit(&query) {
            // As Docker's DNS and CoreDNS do: no partial list, the truncation bit, and the
            // whole answer over TCP.
            response.take_answers();
            response.take_additionals();
            response.set_truncated(true);
            let Ok(short) = response.to_vec() else {
                continue;
            };
            bytes = short;
        }
        let _ = socket.send_to(&bytes, peer).await;
    }
}

async fn serve_tcp(listener: TcpListener, records: Records) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(answer_tcp(stream, records.clone()));
    }
}

/// Answers the length-prefixed queries of one TCP connection until the client closes it.
async fn answer_tcp(mut stream: TcpStream, records: Records) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Ok(query) = Message::from_vec(&buf) else {
            return;
        };
        let Ok(bytes) = answer(&query, &records).to_vec() else {
            return;
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&bytes).await.is_err() {
            return;
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

    #[tokio::test]
    async fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
        let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let ips: Vec<Ipv4Addr> = (1..=100).map(|i| Ipv4Addr::new(127, 0, 9, i)).collect();
        dns.set("server", ips.clone());
        let m = ask(dns.addr(), "server.", RecordType::A).await;
        assert!(m.truncated(), "100 A records do not fit in 512 bytes");
        assert!(m.answers().is_empty(), "no partial list over UDP");

        let mut stream = TcpStream::connect(dns.addr()).await.unwrap();
        let mut q = Message::new();
        q.set_id(9).add_query(Query::query(
            Name::from_str("server.").unwrap(),
            RecordType::A,
        ));
        let bytes = q.to_vec().unwrap();
        stream.write_u16(bytes.len() as u16).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        assert!(!m.truncated());
        assert_eq!(m.answers().len(), 100);
    }
}
