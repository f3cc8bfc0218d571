//! ns/op of `Placement::index` per mode (criterion): `cargo bench -p poc-routing-placement`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use poc_routing_placement::{ClientId, IndexMode, Naming, Placement, PlacementSpec};

fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement");
    // A 12-byte id: numeric, so that every mode accepts it.
    let id = ClientId::try_from("487370041515").expect("valid id");
    for mode in IndexMode::ALL {
        let p = Placement::contiguous(PlacementSpec::new(mode, Naming::compose()), 5)
            .expect("valid placement");
        group.bench_function(mode.as_str(), |b| b.iter(|| p.index(black_box(&id))));
    }
    group.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);
