//! The golden files pin the wire format: field names, order and encodings. Each type writes
//! exactly its file and reads it back to the same value. `lua/spec/routing_spec.lua` parses the
//! same files, so a change that would break the Lua filter's reading fails there too.
//!
//! After an intended change of format: `UPDATE_GOLDEN=1 cargo test -p poc-routing-wire`, and
//! review the diff of `tests/golden/`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use poc_routing_placement::{IndexMode, Naming, Placement, PlacementSpec};
use poc_routing_wire::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// `value` writes exactly `tests/golden/<name>` and reads back from it unchanged.
fn pinned<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: &T) {
    let written = serde_json::to_string(value).unwrap() + "\n";
    let path = golden(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &written).unwrap();
    }
    let pinned = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == pinned,
        "{name}: the format changed (UPDATE_GOLDEN=1 cargo test -p poc-routing-wire writes it)\nEXPECTED {pinned}\nRECEIVED {written}"
    );
    let read: T = serde_json::from_str(&pinned).unwrap();
    assert_eq!(&read, value, "{name} reads back to the same value");
}

fn rule() -> Placement {
    Placement::new(
        PlacementSpec::new(IndexMode::Hash, Naming::compose()),
        [1, 2, 4],
    )
    .unwrap()
}

#[test]
fn where_answer() {
    let rule = rule();
    pinned(
        "where.json",
        &WhereAnswer {
            client_id: "alice".into(),
            index: 2,
            hostport: rule.hostport(2),
            mode: IndexMode::Hash,
            replicas: 3,
            epoch: rule.epoch().to_string(),
        },
    );
}

#[test]
fn join_answer() {
    let rule = rule();
    pinned(
        "join.json",
        &JoinAnswer {
            client_id: "alice".into(),
            status: "joined".into(),
            instance: 2,
            owner: 2,
            hostport: rule.hostport(2),
            epoch: rule.epoch().to_string(),
            served_under: ServedUnder::Previous,
        },
    );
}

#[test]
fn placement_answer() {
    let rule = rule();
    let previous = rule.with_members([1, 2]).unwrap();
    pinned(
        "placement.json",
        &PlacementAnswer {
            instance: Some(1),
            state: MemberState::Member,
            discovery: Discovery::Dns,
            epoch: Some(rule.epoch().to_string()),
            members: rule.members().to_vec(),
            addresses: BTreeMap::from([
                (1, "172.18.0.3:8081".into()),
                (2, "172.18.0.4:8081".into()),
            ]),
            replicas: 3,
            rule: rule.spec().clone(),
            expected_replicas: None,
            replicas_mismatch: false,
            since_change_ms: Some(1200),
            previous: Some(PreviousView {
                epoch: previous.epoch().to_string(),
                members: previous.members().to_vec(),
                window_left_ms: 3800,
            }),
            peers: vec![
                PeerView {
                    instance: 2,
                    hostport: rule.hostport(2),
                    state: Some(MemberState::Member),
                    epoch: Some(rule.epoch().to_string()),
                    agrees: true,
                },
                PeerView {
                    instance: 4,
                    hostport: rule.hostport(4),
                    state: None,
                    epoch: None,
                    agrees: false,
                },
            ],
            handoff_pending: 12,
            replicas_held: 190,
            replication_pending: 3,
            credential: Some(Fingerprints {
                primary: "3f1c".repeat(16),
                accepted: vec!["3f1c".repeat(16), "9a07".repeat(16)],
            }),
        },
    );
}

#[test]
fn a_joining_instance_has_no_epoch() {
    let rule = rule();
    pinned(
        "placement-joining.json",
        &PlacementAnswer {
            instance: Some(4),
            state: MemberState::Joining,
            discovery: Discovery::Dns,
            epoch: None,
            members: vec![],
            addresses: BTreeMap::new(),
            replicas: 0,
            rule: rule.spec().clone(),
            expected_replicas: Some(3),
            replicas_mismatch: true,
            since_change_ms: None,
            previous: None,
            peers: vec![],
            handoff_pending: 0,
            replicas_held: 0,
            replication_pending: 0,
            credential: Some(Fingerprints {
                primary: "3f1c".repeat(16),
                accepted: vec!["3f1c".repeat(16)],
            }),
        },
    );
}

#[test]
fn misdirected_error() {
    let rule = rule();
    let misdirected = Misdirected {
        client_id: "alice".into(),
        instance: 1,
        owner: 2,
        owner_hostport: rule.hostport(2),
        epoch: rule.epoch().to_string(),
        routed_epoch: Some("0123456789abcdef".into()),
    };
    let body = ErrorBody::new(
        "misdirected",
        "client \"alice\" is owned by instance 2".into(),
    )
    .with(&misdirected);
    pinned("misdirected.json", &body);
    assert_eq!(body.misdirected(), Some(misdirected));
}

#[test]
fn plain_error() {
    let body = ErrorBody::new("missing_client_id", "no client_id in the query".into());
    pinned("error.json", &body);
    assert_eq!(body.misdirected(), None);
}

#[test]
fn peer_gossip() {
    let rule = rule();
    let epoch = rule.epoch().to_string();
    pinned(
        "peer-table.json",
        &PeerTable {
            from: Some(1),
            cards: vec![
                PeerCard {
                    instance: 1,
                    version: 1_795_000_000_000_001,
                    state: MemberState::Member,
                    epoch: Some(epoch.clone()),
                    previous: None,
                    previous_left_ms: 0,
                    removed: vec![PeerRemoval {
                        instance: 2,
                        version: 1_794_999_000_000_000,
                    }],
                },
                PeerCard {
                    instance: 3,
                    version: 1_795_000_000_500_000,
                    state: MemberState::Joining,
                    epoch: None,
                    previous: None,
                    previous_left_ms: 0,
                    removed: vec![],
                },
            ],
            views: vec![PeerViewMembers {
                epoch,
                members: vec![1, 2, 4],
            }],
        },
    );
    pinned(
        "peer-digest.json",
        &PeerDigest {
            instance: Some(1),
            digest: "00ff00ff00ff00ff".into(),
        },
    );
}

#[test]
fn registration_hand_off() {
    let registration = Registration {
        client_id: "123".into(),
        first_join_us: 1_795_000_000_000_000,
        last_join_us: 1_795_000_000_900_000,
        joins: vec![
            JoinCount {
                instance: 1,
                tag: 77,
                count: 3,
            },
            JoinCount {
                instance: 2,
                tag: 9,
                count: 1,
            },
        ],
        served: vec![ServedBy {
            instance: 2,
            epoch: rule().epoch().to_string(),
            last_us: 1_795_000_000_900_000,
        }],
        // The built-in application's records carry no state, and write none.
        state: None,
    };
    pinned(
        "handoff.json",
        &HandOff {
            from: 1,
            epoch: rule().epoch().to_string(),
            registrations: vec![registration],
        },
    );
    pinned(
        "handoff-ack.json",
        &HandOffAck {
            instance: 2,
            accepted: 1,
        },
    );
    pinned(
        "registrations.json",
        &RegistrationsReport {
            via: Some(1),
            epoch: Some(rule().epoch().to_string()),
            instances: vec![
                InstanceRegistrations {
                    instance: 1,
                    epoch: Some(rule().epoch().to_string()),
                    pending: 0,
                    ids: vec!["123".into(), "abc".into()],
                    replicas: Some(vec!["xyz".into()]),
                    replication_pending: 2,
                    error: None,
                },
                InstanceRegistrations {
                    instance: 2,
                    epoch: None,
                    pending: 0,
                    ids: vec![],
                    replicas: None,
                    replication_pending: 0,
                    error: Some("connection refused".into()),
                },
            ],
        },
    );
}

/// App mode: a record carrying the application's state (base64), the release a new owner
/// asks for, a state write's answer and an ownership event.
#[test]
fn app_mode() {
    let with_state = |value: Option<Vec<u8>>| Registration {
        client_id: "room-1".into(),
        first_join_us: 1_795_000_000_000_000,
        last_join_us: 1_795_000_000_000_000,
        joins: vec![],
        served: vec![],
        state: Some(KeyState {
            version: 7,
            written_us: 1_795_000_000_500_000,
            writer: 2,
            value,
        }),
    };
    pinned(
        "handoff-app-state.json",
        &HandOff {
            from: 2,
            epoch: rule().epoch().to_string(),
            registrations: vec![
                with_state(Some(b"{\"messages\":[]}".to_vec())),
                with_state(None),
            ],
        },
    );
    pinned(
        "release.json",
        &Release {
            from: 4,
            key: "room-1".into(),
        },
    );
    pinned(
        "state-written.json",
        &StateWritten {
            key: "room-1".into(),
            version: 8,
            replicated: true,
        },
    );
    pinned(
        "ownership-event.json",
        &OwnershipEvent {
            event: OwnershipChange::Arrived,
            keys: vec!["room-1".into(), "room-2".into()],
            epoch: Some(rule().epoch().to_string()),
        },
    );
}
