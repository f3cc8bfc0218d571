//! Every case in `tests/data/placement.json` and `tests/data/members.json`, the vectors
//! `scripts/gen-vectors.py` writes.

use poc_routing_placement::{
    fnv1a32, fnv1a64, jump_consistent_hash, ClientId, IndexMode, Naming, Placement, PlacementSpec,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    fnv: Vec<FnvCase>,
    jump: Vec<JumpCase>,
    placement: Vec<PlacementCase>,
}

#[derive(Deserialize)]
struct FnvCase {
    input: String,
    fnv1a32: u32,
    fnv1a64: u64,
}

#[derive(Deserialize)]
struct JumpCase {
    key: u64,
    buckets: u32,
    bucket: u32,
}

#[derive(Deserialize)]
struct PlacementCase {
    mode: String,
    replicas: u32,
    base: u32,
    client_id: String,
    index: Option<u64>,
}

fn vectors() -> Vectors {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/placement.json");
    let text = std::fs::read_to_string(path).expect("read placement vectors");
    serde_json::from_str(&text).expect("parse placement vectors")
}

#[test]
fn fnv_vectors() {
    let v = vectors();
    assert!(v.fnv.len() > 100);
    for case in &v.fnv {
        assert_eq!(
            fnv1a32(case.input.as_bytes()),
            case.fnv1a32,
            "{:?}",
            case.input
        );
        assert_eq!(
            fnv1a64(case.input.as_bytes()),
            case.fnv1a64,
            "{:?}",
            case.input
        );
    }
}

#[test]
fn jump_vectors() {
    let v = vectors();
    assert!(!v.jump.is_empty());
    for case in &v.jump {
        assert_eq!(
            jump_consistent_hash(case.key, case.buckets),
            case.bucket,
            "key {} buckets {}",
            case.key,
            case.buckets
        );
    }
}

#[test]
fn placement_vectors() {
    let v = vectors();
    assert!(v.placement.len() > 4000);
    let mut invalid = 0;
    for case in &v.placement {
        let mode: IndexMode = case.mode.parse().unwrap();
        let placement =
            Placement::contiguous(spec(mode, "p", "", 1, case.base), case.replicas).unwrap();
        let got = ClientId::try_from(case.client_id.as_str())
            .and_then(|id| placement.index(&id))
            .ok();
        assert_eq!(
            got, case.index,
            "mode {} replicas {} base {} id {:?}",
            case.mode, case.replicas, case.base, case.client_id
        );
        invalid += usize::from(got.is_none());
    }
    assert!(invalid > 0, "the vectors include invalid ids");
}

#[derive(Deserialize)]
struct MemberVectors {
    members: Vec<MemberCase>,
    epochs: Vec<EpochCase>,
}

#[derive(Deserialize)]
struct MemberCase {
    mode: String,
    members: Vec<u64>,
    client_id: String,
    index: Option<u64>,
}

#[derive(Deserialize)]
struct EpochCase {
    mode: String,
    prefix: String,
    suffix: String,
    port: u16,
    members: Vec<u64>,
    epoch: String,
}

fn member_vectors() -> MemberVectors {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/members.json");
    let text = std::fs::read_to_string(path).expect("read member vectors");
    serde_json::from_str(&text).expect("parse member vectors")
}

/// Member lists with gaps, written by scripts/gen-vectors.py from the rules' definitions.
#[test]
fn member_list_vectors() {
    let v = member_vectors();
    assert!(v.members.len() > 2000);
    for case in &v.members {
        let mode: IndexMode = case.mode.parse().unwrap();
        let placement =
            Placement::new(spec(mode, "p", "", 1, 0), case.members.iter().copied()).unwrap();
        let got = ClientId::try_from(case.client_id.as_str())
            .and_then(|id| placement.index(&id))
            .ok();
        assert_eq!(
            got, case.index,
            "mode {} members {:?} id {:?}",
            case.mode, case.members, case.client_id
        );
    }
    assert!(v.epochs.len() >= 48);
    for case in &v.epochs {
        let mode: IndexMode = case.mode.parse().unwrap();
        let spec = spec(mode, &case.prefix, &case.suffix, case.port, 0);
        let placement = Placement::new(spec, case.members.iter().copied()).unwrap();
        assert_eq!(
            placement.epoch().to_string(),
            case.epoch,
            "{case:?}",
            case = case.members
        );
    }
}

/// The checked-in vectors (the reference placement.json and members.json) are exactly what the
/// generator writes today: nobody edited them by hand, and the generator still agrees.
#[test]
fn vectors_are_what_the_generator_writes() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let status = std::process::Command::new("python3")
        .args(["scripts/gen-vectors.py", "--check"])
        .current_dir(root)
        .status()
        .expect("python3 runs the vector generator (apt-get install python3)");
    assert!(
        status.success(),
        "placement/tests/data/ is stale: run python3 scripts/gen-vectors.py"
    );
}

/// A spec from its parts, as the vector files spell them.
fn spec(mode: IndexMode, prefix: &str, suffix: &str, port: u16, base: u32) -> PlacementSpec {
    PlacementSpec::new(
        mode,
        Naming {
            prefix: prefix.into(),
            suffix: suffix.into(),
            port,
            base,
        },
    )
}
