//! Every case in `tests/data/placement.json`, the reference vectors shared with the Lua port.

use poc_routing_placement::{
    fnv1a32, fnv1a64, jump_consistent_hash, ClientId, IndexMode, Placement,
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
        let placement = Placement::new(mode, case.replicas, case.base, "p", "", 1).unwrap();
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
