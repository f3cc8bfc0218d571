//! Test ids. The mix matters: routing bugs hide in ids that need percent-encoding or are not
//! ASCII, because a proxy and a server can decode those differently.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Which ids to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdKind {
    /// Numeric, ASCII, non-ASCII and percent-encoding ids in turn.
    Mixed,
    /// Decimal numbers only (for `INDEX_MODE=numeric`).
    Numeric,
    /// ASCII letters, digits and `-_.~` only: what a header or a cookie carries as it is.
    Token,
}

const ASCII: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_.~";
const UNICODE: &[&str] = &["é", "ü", "ß", "日本", "中", "Ω", "ж", "😀", "ñ", "ø"];
const NEEDS_ENCODING: &[&str] = &[
    " ", "&", "=", "+", "%", "/", "?", "#", ";", "\"", "'", "<", ">",
];

fn numeric(rng: &mut StdRng) -> String {
    match rng.gen_range(0..4) {
        0 => rng.gen_range(0..1000u64).to_string(),
        1 => format!("000{}", rng.gen_range(0..100_000u64)),
        _ => rng.gen::<u64>().to_string(),
    }
}

fn ascii(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(*ASCII.choose(rng).expect("non-empty")))
        .collect()
}

/// `count` distinct-looking ids drawn from `seed`; the same seed gives the same ids.
pub fn generate(count: usize, kind: IdKind, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| match (kind, i % 4) {
            (IdKind::Numeric, _) | (IdKind::Mixed, 0) => numeric(&mut rng),
            (IdKind::Token, _) => {
                let len = rng.gen_range(4..24);
                ascii(&mut rng, len)
            }
            (IdKind::Mixed, 1) => {
                let len = rng.gen_range(1..24);
                ascii(&mut rng, len)
            }
            (IdKind::Mixed, 2) => {
                let a = ascii(&mut rng, 4);
                let u = UNICODE.choose(&mut rng).expect("non-empty");
                format!("{u}{a}{u}")
            }
            _ => {
                let a = ascii(&mut rng, 3);
                let b = ascii(&mut rng, 3);
                let sep = NEEDS_ENCODING.choose(&mut rng).expect("non-empty");
                format!("{a}{sep}{b}")
            }
        })
        .collect()
}

/// Ids from a file, one per line; blank lines are skipped.
pub fn from_file(path: &std::path::Path) -> std::io::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_ids_cover_every_kind_and_are_reproducible() {
        let ids = generate(400, IdKind::Mixed, 7);
        assert_eq!(ids, generate(400, IdKind::Mixed, 7));
        assert!(ids.iter().any(|i| i.bytes().all(|b| b.is_ascii_digit())));
        assert!(ids.iter().any(|i| !i.is_ascii()));
        assert!(ids.iter().any(|i| i.contains(['&', '=', ' ', '+', '%'])));
        assert!(ids.iter().all(|i| !i.is_empty() && i.len() <= 256));
    }

    #[test]
    fn numeric_ids_are_numbers() {
        for id in generate(200, IdKind::Numeric, 1) {
            assert!(id.parse::<u64>().is_ok(), "{id}");
        }
    }
}
