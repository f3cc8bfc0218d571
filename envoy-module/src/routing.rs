//! The per-request decision: from the request's `:path` and the current snapshot to the
//! owner (its name, its address and the epoch), or to a refusal with the same status, code and
//! message as `lua/routing.lua`, the server and `envoy.yaml`'s own answers give.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use poc_routing_placement::{ClientId, IdError, KeyError};
use poc_routing_wire::ErrorBody;

use crate::snapshot::{InFlight, Snapshot};

/// Where a join goes: its owner in the snapshot it was decided by (held, so that the decision
/// needs no lock while Envoy is told).
#[derive(Debug)]
pub struct Route {
    snapshot: Arc<Snapshot>,
    position: usize,
    /// Counts the join in flight to its owner until the stream ends, and names the owner.
    pub in_flight: InFlight,
}

impl Route {
    /// `ip:port`: the one host of the `owners` cluster the join may go to.
    pub fn address(&self) -> &str {
        self.snapshot.owners()[self.position]
            .address
            .as_deref()
            .expect("a route is made only for an owner with an address")
    }

    /// The epoch the join was routed by.
    pub fn epoch(&self) -> &str {
        self.snapshot.epoch()
    }
}

/// A join answered by the filter itself, never forwarded.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// The owner's name, when the refusal is about it.
    pub owner: Option<String>,
    /// `retry-after` in seconds, when trying again shortly is the remedy.
    pub retry_after: Option<u32>,
    /// The key source, when the refusal is about the key.
    pub source: Option<String>,
}

impl LocalReply {
    fn new(status: u16, code: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            message,
            owner: None,
            retry_after: None,
            source: None,
        }
    }

    fn bad_id(e: &IdError) -> Self {
        Self::new(400, e.code(), e.to_string())
    }

    /// No usable key where the route's source says it is: 400, the source in the body.
    fn bad_key(e: &KeyError) -> Self {
        Self {
            source: Some(e.source.to_string()),
            ..Self::new(400, e.code(), e.to_string())
        }
    }

    /// The filter itself failed (a panic was caught): nothing is forwarded.
    pub fn routing_error() -> Self {
        Self::new(
            500,
            "routing_error",
            "the routing filter failed; the request was not forwarded".into(),
        )
    }

    /// The owner is not found where the servers look (crashed or restarting), or Envoy could
    /// not take its address: the same answer `envoy.yaml` gives when it cannot reach it.
    pub fn owner_unavailable(owner: &str) -> Self {
        Self {
            owner: Some(owner.to_owned()),
            ..Self::new(
                503,
                "owner_unavailable",
                "the instance that owns this client is unreachable".into(),
            )
        }
    }

    fn overloaded(owner: &str, limit: u32, session: bool) -> Self {
        let what = if session {
            "WebSocket sessions open"
        } else {
            "requests in flight"
        };
        Self {
            owner: Some(owner.to_owned()),
            retry_after: Some(1),
            ..Self::new(
                503,
                "overloaded",
                format!("more than {limit} {what} to the owner; retry after 1 s"),
            )
        }
    }

    /// The JSON body: `{"error": code, "message": message}` (and `owner`), as every error of
    /// the project.
    pub fn body(&self) -> String {
        let mut body = ErrorBody::new(self.code, self.message.clone());
        if let Some(owner) = &self.owner {
            body.details.insert("owner".into(), owner.as_str().into());
        }
        if let Some(source) = &self.source {
            body.details.insert("source".into(), source.as_str().into());
        }
        serde_json::to_string(&body).expect("an error body is plain JSON")
    }
}

/// How a join is decided, from the filter's settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A snapshot older than this is not used.
    pub stale_after: Duration,
    /// The most joins in flight to one owner.
    pub max_in_flight: u32,
    /// The most WebSocket sessions open to one owner.
    pub max_sessions: u32,
}

/// Routes one join by its key, as the route's source found it: the key is checked first (a
/// bad key is the client's error whatever the state of the placement), then the snapshot must exist and be younger than `stale_after`,
/// the owner must have an address, and fewer than `max_in_flight` joins may be in flight to it
/// (for a WebSocket session, `session`: fewer than `max_sessions` sessions open to it).
pub fn route(
    key: Result<ClientId, KeyError>,
    snapshot: Option<&Arc<Snapshot>>,
    limits: Limits,
    now: Instant,
    session: bool,
) -> Result<Route, LocalReply> {
    let id = key.map_err(|e| LocalReply::bad_key(&e))?;
    let Some(snapshot) = snapshot else {
        return Err(LocalReply::new(
            503,
            "placement_unavailable",
            "no server instance has published the placement yet; retry shortly".into(),
        ));
    };
    let age = now.saturating_duration_since(snapshot.fetched_at());
    if age > limits.stale_after {
        return Err(LocalReply::new(
            503,
            "placement_unavailable",
            format!(
                "the placement was last fetched {} ms ago (limit {} ms); no server instance answers GET /placement",
                age.as_millis(),
                limits.stale_after.as_millis()
            ),
        ));
    }
    let position = snapshot
        .owner_position(&id)
        .map_err(|e| LocalReply::bad_id(&e))?;
    let owner = &snapshot.owners()[position];
    if owner.address.is_none() {
        return Err(LocalReply::owner_unavailable(owner.hostport()));
    }
    let limit = if session {
        limits.max_sessions
    } else {
        limits.max_in_flight
    };
    let in_flight = InFlight::try_start(owner, limit, session)
        .ok_or_else(|| LocalReply::overloaded(owner.hostport(), limit, session))?;
    Ok(Route {
        snapshot: snapshot.clone(),
        position,
        in_flight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::{address, answer};
    use poc_routing_placement::KeySource;

    /// The key of `path` by the default source, `client_id` in the query.
    fn query(path: &[u8]) -> Result<ClientId, KeyError> {
        KeySource::default().extract(path, &[])
    }

    const STALE: Limits = Limits {
        stale_after: Duration::from_secs(10),
        max_in_flight: 128,
        max_sessions: 10_000,
    };

    fn snapshot(mode: &str, members: &[u64]) -> Arc<Snapshot> {
        Arc::new(
            Snapshot::parse(answer(mode, members, None).as_bytes(), Instant::now(), None).unwrap(),
        )
    }

    /// A case: the path, and the id it routes by or (status, code, part of the message).
    type Case<'a> = (&'a [u8], Result<&'a str, (u16, &'a str, &'a str)>);

    /// The same table as the Lua filter's and the server's id rules.
    #[test]
    fn ids_are_checked_like_everywhere_else() {
        let s = snapshot("hash", &[1, 2, 3]);
        let long = format!("/join?client_id={}", "a".repeat(257));
        let cases: Vec<Case> = vec![
            (b"/join?client_id=alice", Ok("alice")),
            (b"/join?client_id=a+b", Ok("a b")),
            (b"/join?client%5Fid=x", Ok("x")),
            (b"/join?x=1&client_id=%C3%A9", Ok("é")),
            (b"/join?x=\xff&client_id=ok", Ok("ok")),
            (
                b"/join",
                Err((400, "missing_client_id", "no query parameter client_id")),
            ),
            (
                b"/join?client_id=",
                Err((400, "invalid_client_id", "empty")),
            ),
            (
                b"/join?client_id=a&client_id=a",
                Err((400, "duplicate_client_id", "more than once")),
            ),
            (
                b"/join?client_id=%0a",
                Err((400, "invalid_client_id", "control character at byte 0")),
            ),
            (
                b"/join?client_id=%ff",
                Err((400, "invalid_client_id", "not valid UTF-8")),
            ),
            (
                b"/join?client_id=\xff",
                Err((400, "invalid_client_id", "not valid UTF-8")),
            ),
            (
                long.as_bytes(),
                Err((400, "invalid_client_id", "257 bytes long")),
            ),
        ];
        for (path, expected) in cases {
            let got = route(query(path), Some(&s), STALE, Instant::now(), false);
            let shown = String::from_utf8_lossy(path);
            match expected {
                Ok(id) => {
                    let id = ClientId::try_from(id).unwrap();
                    let want = s.owner(&id).unwrap();
                    let got = got.unwrap();
                    assert_eq!(got.in_flight.hostport(), want.hostport(), "{shown}");
                    assert_eq!(Some(got.address()), want.address.as_deref(), "{shown}");
                }
                Err((status, code, message)) => {
                    let r = got.unwrap_err();
                    assert_eq!((r.status, r.code), (status, code), "{shown}");
                    assert!(
                        r.message.contains(message),
                        "{shown}: EXPECTED {message:?} RECEIVED {:?}",
                        r.message
                    );
                }
            }
        }
    }

    #[test]
    fn routes_carry_the_snapshot_epoch() {
        let s = snapshot("jump", &[1, 3]);
        let r = route(
            query(b"/join?client_id=7"),
            Some(&s),
            STALE,
            Instant::now(),
            false,
        )
        .unwrap();
        assert_eq!(r.epoch(), s.epoch());
        assert!(["poc-routing-server-1:8081", "poc-routing-server-3:8081"]
            .contains(&r.in_flight.hostport()));
        assert!([address(1), address(3)].contains(&r.address().to_owned()));
    }

    #[test]
    fn an_owner_without_an_address_or_with_too_many_joins_in_flight_is_refused() {
        let body = answer("hash", &[1], None).replace(&format!("\"1\":\"{}\"", address(1)), "");
        let s = Arc::new(Snapshot::parse(body.as_bytes(), Instant::now(), None).unwrap());
        let r = route(
            query(b"/join?client_id=a"),
            Some(&s),
            STALE,
            Instant::now(),
            false,
        )
        .unwrap_err();
        assert_eq!((r.status, r.code), (503, "owner_unavailable"));
        assert_eq!(r.owner.as_deref(), Some("poc-routing-server-1:8081"));
        let body: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(body["owner"], "poc-routing-server-1:8081");

        let s = snapshot("hash", &[1]);
        let two = Limits {
            max_in_flight: 2,
            ..STALE
        };
        let first = route(
            query(b"/join?client_id=a"),
            Some(&s),
            two,
            Instant::now(),
            false,
        )
        .unwrap();
        let second = route(
            query(b"/join?client_id=b"),
            Some(&s),
            two,
            Instant::now(),
            false,
        )
        .unwrap();
        let r = route(
            query(b"/join?client_id=c"),
            Some(&s),
            two,
            Instant::now(),
            false,
        )
        .unwrap_err();
        assert_eq!(
            (r.status, r.code, r.retry_after),
            (503, "overloaded", Some(1))
        );
        drop((first, second));
        assert!(route(
            query(b"/join?client_id=c"),
            Some(&s),
            two,
            Instant::now(),
            false
        )
        .is_ok());

        // Sessions are counted apart: joins in flight do not stop a session, nor the reverse.
        let one_session = Limits {
            max_in_flight: 1,
            max_sessions: 1,
            ..STALE
        };
        let join = route(
            query(b"/join?client_id=a"),
            Some(&s),
            one_session,
            Instant::now(),
            false,
        );
        let session = route(
            query(b"/join?client_id=a"),
            Some(&s),
            one_session,
            Instant::now(),
            true,
        );
        assert!(join.is_ok() && session.is_ok());
        let r = route(
            query(b"/join?client_id=b"),
            Some(&s),
            one_session,
            Instant::now(),
            true,
        )
        .unwrap_err();
        assert_eq!((r.status, r.code), (503, "overloaded"));
        assert!(r.body().contains("WebSocket sessions"), "{}", r.body());
        drop(session);
        assert!(route(
            query(b"/join?client_id=b"),
            Some(&s),
            one_session,
            Instant::now(),
            true
        )
        .is_ok());
    }

    #[test]
    fn numeric_mode_refuses_words_with_the_servers_message() {
        let s = snapshot("numeric", &[1, 2]);
        let r = route(
            query(b"/join?client_id=bob"),
            Some(&s),
            STALE,
            Instant::now(),
            false,
        )
        .unwrap_err();
        assert_eq!((r.status, r.code), (400, "invalid_client_id"));
        assert!(r.message.contains("decimal digits"));
    }

    #[test]
    fn no_or_stale_placement_is_503_but_a_bad_id_is_still_400() {
        let r = route(
            query(b"/join?client_id=a"),
            None,
            STALE,
            Instant::now(),
            false,
        )
        .unwrap_err();
        assert_eq!((r.status, r.code), (503, "placement_unavailable"));
        let r = route(query(b"/join"), None, STALE, Instant::now(), false).unwrap_err();
        assert_eq!(r.status, 400);
        let s = snapshot("hash", &[1]);
        let later = Instant::now() + STALE.stale_after + Duration::from_secs(1);
        let r = route(query(b"/join?client_id=a"), Some(&s), STALE, later, false).unwrap_err();
        assert_eq!((r.status, r.code), (503, "placement_unavailable"));
        assert!(r.message.contains("limit 10000 ms"), "{}", r.message);
    }

    #[test]
    fn bodies_are_json_with_a_code() {
        let body: serde_json::Value =
            serde_json::from_str(&LocalReply::routing_error().body()).unwrap();
        assert_eq!(body["error"], "routing_error");
        assert!(body["message"].as_str().unwrap().contains("not forwarded"));
    }

    /// The key-source vectors the placement crate and the Lua spec share: through the
    /// per-route config and the routing decision, each request goes to its key's owner, or
    /// is refused with the vector's code and a message naming the source.
    #[test]
    fn the_shared_key_vectors_route_or_refuse_alike() {
        let s = snapshot("hash", &[1, 2, 3]);
        let vectors = include_str!("../../placement/tests/data/keys.tsv");
        let mut checked = 0;
        for line in vectors
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let f: Vec<&str> = line.split('\t').collect();
            let config = format!("{{\"key\":{:?}}}", f[0]);
            let settings = crate::settings::RouteSettings::parse(config.as_bytes()).unwrap();
            let values: Vec<&[u8]> = match f[2] {
                "-" => vec![],
                v => v.split(" | ").map(str::as_bytes).collect(),
            };
            let key = settings.key.extract(f[1].as_bytes(), &values);
            let got = route(key, Some(&s), STALE, Instant::now(), false);
            match f[3].split_at(1) {
                ("=", id) => {
                    let want = s.owner(&ClientId::try_from(id).unwrap()).unwrap();
                    assert_eq!(got.unwrap().in_flight.hostport(), want.hostport(), "{line}");
                }
                (_, code) => {
                    let r = got.unwrap_err();
                    assert_eq!((r.status, r.code), (400, code), "{line}");
                    let body: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
                    assert_eq!(body["source"], settings.key.to_string(), "{line}");
                }
            }
            checked += 1;
        }
        assert!(checked >= 40);
    }
}
