//! Every case in `tests/data/keys.tsv`, the key-source vectors the Envoy module and the Lua
//! spec read too.

use poc_routing_placement::KeySource;

/// One row of `keys.tsv`: source, path, the source header's values, and the wanted outcome.
pub struct Case {
    pub line: usize,
    pub source: String,
    pub path: String,
    pub values: Vec<String>,
    pub want: Result<String, String>,
}

fn cases() -> Vec<Case> {
    let text = include_str!("data/keys.tsv");
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "keys.tsv line {}: {l:?}", i + 1);
            let values = match f[2] {
                "-" => vec![],
                v => v.split(" | ").map(str::to_owned).collect(),
            };
            let want = match f[3].split_at(1) {
                ("=", key) => Ok(key.to_owned()),
                ("!", code) => Err(code.to_owned()),
                _ => panic!("keys.tsv line {}: want is =KEY or !CODE", i + 1),
            };
            Case {
                line: i + 1,
                source: f[0].into(),
                path: f[1].into(),
                values,
                want,
            }
        })
        .collect()
}

#[test]
fn every_vector() {
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for case in cases {
        let source: KeySource = case.source.parse().unwrap();
        let values: Vec<&[u8]> = case.values.iter().map(|v| v.as_bytes()).collect();
        let got = source
            .extract(case.path.as_bytes(), &values)
            .map(|id| id.into_string())
            .map_err(|e| e.code().to_owned());
        assert_eq!(got, case.want, "keys.tsv line {}: {}", case.line, case.path);
    }
}
