//! Placement quality: how evenly `hash` and `jump` spread ids, and how many ids move when a
//! replica is added, next to the optimum 1/(N+1).

use poc_routing_placement::{ClientId, IndexMode, Naming, Placement, PlacementSpec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub replicas: u32,
    /// Most-loaded instance over the mean load, at N replicas.
    pub max_over_mean: f64,
    /// Fraction of ids whose owner changes going from N to N+1 replicas.
    pub moved: f64,
    /// The least any placement must move: 1/(N+1).
    pub optimum: f64,
}

/// `count` random ids of 4..24 ASCII letters and digits, from `seed`.
pub fn random_ids(count: usize, seed: u64) -> Vec<ClientId> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let len = rng.gen_range(4..24);
            let s: String = (0..len)
                .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
                .collect();
            ClientId::try_from(s.as_str()).expect("valid id")
        })
        .collect()
}

fn placement(mode: IndexMode, replicas: u32) -> Placement {
    let naming = Naming {
        base: 0,
        ..Naming::compose()
    };
    Placement::contiguous(PlacementSpec::new(mode, naming), replicas).expect("valid placement")
}

/// One row per N in `range`, for `mode`.
pub fn measure(
    mode: IndexMode,
    ids: &[ClientId],
    range: std::ops::RangeInclusive<u32>,
) -> Vec<Row> {
    range
        .map(|n| {
            let now = placement(mode, n);
            let next = placement(mode, n + 1);
            let mut load = vec![0u64; n as usize];
            let mut moved = 0u64;
            for id in ids {
                let a = now.index(id).expect("hash and jump accept every valid id");
                let b = next.index(id).expect("hash and jump accept every valid id");
                load[a as usize] += 1;
                moved += u64::from(a != b);
            }
            let mean = ids.len() as f64 / f64::from(n);
            Row {
                replicas: n,
                max_over_mean: *load.iter().max().expect("n >= 1") as f64 / mean,
                moved: moved as f64 / ids.len() as f64,
                optimum: 1.0 / f64::from(n + 1),
            }
        })
        .collect()
}

/// Draws the moved fractions of both modes against the optimum, as SVG.
pub fn plot(path: &std::path::Path, hash: &[Row], jump: &[Row]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_n = hash.last().map_or(64, |r| r.replicas);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Ids that move going from N to N+1 replicas",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(2u32..max_n, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("N (replicas before adding one)")
        .y_desc("fraction of ids moved")
        .draw()?;
    let series = [
        ("hash (fnv1a32 mod N)", hash, RED),
        ("jump (jump hash of fnv1a64)", jump, BLUE),
    ];
    for (label, rows, color) in series {
        chart
            .draw_series(LineSeries::new(
                rows.iter().map(|r| (r.replicas, r.moved)),
                color,
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .draw_series(LineSeries::new(
            hash.iter().map(|r| (r.replicas, r.optimum)),
            BLACK.mix(0.6),
        ))?
        .label("optimum 1/(N+1)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.6)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::MiddleRight)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_moves_about_the_optimum_and_hash_moves_most_ids() {
        let ids = random_ids(20_000, 1);
        for row in measure(IndexMode::Jump, &ids, 2..=6) {
            let off = (row.moved - row.optimum).abs() / row.optimum;
            assert!(
                off < 0.1,
                "jump N={}: moved {} vs {}",
                row.replicas,
                row.moved,
                row.optimum
            );
            assert!(
                row.max_over_mean < 1.1,
                "jump N={}: {}",
                row.replicas,
                row.max_over_mean
            );
        }
        for row in measure(IndexMode::Hash, &ids, 2..=6) {
            let expected = f64::from(row.replicas) / f64::from(row.replicas + 1);
            assert!(
                (row.moved - expected).abs() < 0.05,
                "hash N={}: moved {}",
                row.replicas,
                row.moved
            );
        }
    }

    #[test]
    fn random_ids_are_reproducible() {
        assert_eq!(random_ids(100, 3), random_ids(100, 3));
        assert_ne!(random_ids(100, 3), random_ids(100, 4));
    }
}
