//! The per-request decision: from the request's `:path` and the current snapshot to the
//! owner's hostport and epoch, or to a refusal with the same status, code and message as
//! `lua/routing.lua` and the server give.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use poc_routing_placement::{client_id_from_query, ClientId, IdError};

use crate::snapshot::Snapshot;

/// Where a join goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    pub hostport: &'a str,
    pub epoch: &'a str,
}

/// A join answered by the filter itself, never forwarded.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn bad_id(e: &IdError) -> Self {
        Self {
            status: 400,
            code: e.code(),
            message: e.to_string(),
        }
    }

    /// The filter itself failed (a panic was caught): nothing is forwarded.
    pub fn routing_error() -> Self {
        Self {
            status: 500,
            code: "routing_error",
            message: "the routing filter failed; the request was not forwarded".into(),
        }
    }

    /// The JSON body: `{"error": code, "message": message}`, as every error of the project.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.code, "message": self.message }).to_string()
    }
}

/// The single valid `client_id` in a request path, by the placement crate's rules.
///
/// The path is bytes: a query that is not UTF-8 keeps its UTF-8 parameters, and a `client_id`
/// holding raw non-UTF-8 bytes is refused as such, as the servers refuse it.
pub fn client_id(path: &[u8]) -> Result<ClientId, IdError> {
    let Some(start) = path.iter().position(|&b| b == b'?') else {
        return client_id_from_query(None);
    };
    let query = &path[start + 1..];
    if let Ok(query) = std::str::from_utf8(query) {
        return client_id_from_query(Some(query));
    }
    let mut kept = Vec::new();
    for pair in query.split(|&b| b == b'&') {
        match std::str::from_utf8(pair) {
            Ok(pair) => kept.push(pair),
            Err(_) if pair.starts_with(b"client_id=") || pair == b"client_id" => {
                return Err(IdError::NotUtf8)
            }
            Err(_) => {}
        }
    }
    client_id_from_query(Some(&kept.join("&")))
}

/// Routes one join: the id is checked first (a bad id is the client's error whatever the
/// state of the placement), then the snapshot must exist and be younger than `stale_after`.
pub fn route<'s>(
    path: &[u8],
    snapshot: Option<&'s Snapshot>,
    stale_after: Duration,
    now: Instant,
) -> Result<Route<'s>, Refusal> {
    let id = client_id(path).map_err(|e| Refusal::bad_id(&e))?;
    let Some(snapshot) = snapshot else {
        return Err(Refusal {
            status: 503,
            code: "placement_unavailable",
            message: "no server instance has published the placement yet; retry shortly".into(),
        });
    };
    let age = now.saturating_duration_since(snapshot.fetched_at());
    if age > stale_after {
        return Err(Refusal {
            status: 503,
            code: "placement_unavailable",
            message: format!(
                "the placement was last fetched {} ms ago (limit {} ms); no server instance answers GET /placement",
                age.as_millis(),
                stale_after.as_millis()
            ),
        });
    }
    let hostport = snapshot.owner(&id).map_err(|e| Refusal::bad_id(&e))?;
    Ok(Route {
        hostport,
        epoch: snapshot.epoch(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::answer;

    const STALE: Duration = Duration::from_secs(10);

    fn snapshot(mode: &str, members: &[u64]) -> Snapshot {
        Snapshot::parse(answer(mode, members, None).as_bytes(), Instant::now()).unwrap()
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
            (b"/join", Err((400, "missing_client_id", "no client_id"))),
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
            let got = route(path, Some(&s), STALE, Instant::now());
            let shown = String::from_utf8_lossy(path);
            match expected {
                Ok(id) => {
                    let id = ClientId::try_from(id).unwrap();
                    let want = s.owner(&id).unwrap();
                    assert_eq!(got.unwrap().hostport, want, "{shown}");
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
        let r = route(b"/join?client_id=7", Some(&s), STALE, Instant::now()).unwrap();
        assert_eq!(r.epoch, s.epoch());
        assert!(["poc-routing-server-1:8081", "poc-routing-server-3:8081"].contains(&r.hostport));
    }

    #[test]
    fn numeric_mode_refuses_words_with_the_servers_message() {
        let s = snapshot("numeric", &[1, 2]);
        let r = route(b"/join?client_id=bob", Some(&s), STALE, Instant::now()).unwrap_err();
        assert_eq!((r.status, r.code), (400, "invalid_client_id"));
        assert!(r.message.contains("decimal digits"));
    }

    #[test]
    fn no_or_stale_placement_is_503_but_a_bad_id_is_still_400() {
        let r = route(b"/join?client_id=a", None, STALE, Instant::now()).unwrap_err();
        assert_eq!((r.status, r.code), (503, "placement_unavailable"));
        let r = route(b"/join", None, STALE, Instant::now()).unwrap_err();
        assert_eq!(r.status, 400);
        let s = snapshot("hash", &[1]);
        let later = Instant::now() + STALE + Duration::from_secs(1);
        let r = route(b"/join?client_id=a", Some(&s), STALE, later).unwrap_err();
        assert_eq!((r.status, r.code), (503, "placement_unavailable"));
        assert!(r.message.contains("limit 10000 ms"), "{}", r.message);
    }

    #[test]
    fn bodies_are_json_with_a_code() {
        let body: serde_json::Value =
            serde_json::from_str(&Refusal::routing_error().body()).unwrap();
        assert_eq!(body["error"], "routing_error");
        assert!(body["message"].as_str().unwrap().contains("not forwarded"));
    }
}
