//! A small authoritative DNS responder for the local stack.
//!
//! It serves the same names Docker Compose's embedded DNS serves (`poc-routing-server-N`, and
//! `server` for all of them), or the Kubernetes headless names, with the same TTL of 600 s. That
//! TTL matters: it is what makes Envoy's DNS caching behave here as it does in Compose. Records
//! can be changed at run time, to move an instance to a new address as a restart does.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

/// The TTL of every answer: Docker's embedded DNS uses 600 s.
pub const TTL: u32 = 600;

type Records = Arc<RwLock<HashMap<String, Vec<Ipv4Addr>>>>;

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

    /// Sets the A records of `name`; an empty list makes the name unknown (NXDOMAIN).
    pub fn set(&self, name: &str, ips: Vec<Ipv4Addr>) {
        let mut records = self.records.write().unwrap_or_else(|e| e.into_inner());
        if ips.is_empty() {
            records.remove(&normalize(name));
        } else {
            records.insert(normalize(name), ips);
        }
    }

    pub fn get(&self, name: &str) -> Vec<Ipv4Addr> {
        let records = self.records.read().unwrap_or_else(|e| e.into_inner());
        records.get(&normalize(name)).cloned().unwrap_or_default()
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

/// Builds the answer to one query: A records for known names, NODATA for other types of a
/// known name, NXDOMAIN for unknown names.
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
    let records = records.read().unwrap_or_else(|e| e.into_inner());
    match records.get(&normalize(&question.name().to_ascii())) {
        None => {
            response.set_response_code(ResponseCode::NXDomain);
        }
        Some(ips) => {
            if question.query_type() == RecordType::A {
                for ip in ips {
                    response.add_answer(Record::from_rdata(
                        question.name().clone(),
                        TTL,
                        RData::A(A(*ip)),
                    ));
                }
            }
            response.set_response_code(ResponseCode::NoError);
        }
    }
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
}
