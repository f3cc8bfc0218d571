//! Placement: which instance owns a client id.
//!
//! This crate is the single definition of the routing rule. The server answers `/where` and
//! checks ownership on `/join` with it, the client uses it in tests, and the Lua port in
//! `lua/routing.lua` is checked against the same vectors. It does no I/O, so every rule is
//! covered by table-driven tests (`tests/vectors.rs`).
//!
//! The three steps are kept apart on purpose:
//! 1. [`client_id_from_query`] finds exactly one `client_id` in a raw query string and decodes it
//!    the way HTML forms encode it (`+` is a space, `%XX` a byte, then UTF-8).
//! 2. [`ClientId::new`] enforces what an id may be (1..=256 bytes, no control characters).
//! 3. [`Placement::index`] maps a valid id to an instance index with the configured [`IndexMode`].
//!
//! ## Members and epochs
//!
//! A placement maps ids onto the **actual member list**: the sorted instance indexes that are
//! deployed and ready, whatever gaps a scale-down left. The mode picks a *position* in that list
//! (`fnv1a32(id) mod n`, `value mod n` or `jump(fnv1a64(id), n)` for `n` members), and the owner
//! is the member at that position. With members exactly `base..base+n-1` this is the plain
//! `base + slot` rule, so contiguous deployments keep their owners.
//!
//! Every member list has an identity, its [`Epoch`]: FNV-1a 64 of a canonical text of the rule
//! and the members (see [`Placement::epoch`]). Two servers, or a server and a proxy, that hold the
//! same epoch compute the same owner for every id; a different epoch means a different view.

mod hash;
mod id;

pub use hash::{fnv1a32, fnv1a64, jump_consistent_hash};
pub use id::{client_id_from_query, ClientId, IdError, MAX_CLIENT_ID_BYTES};

use std::fmt;
use std::str::FromStr;

/// How a client id is turned into an instance index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IndexMode {
    /// `fnv1a32(id) mod replicas`: the seed's rule. Changing the replica count moves most ids.
    #[default]
    Hash,
    /// The id is a decimal `u64`; `value mod replicas`. Lets operators pin ids by number.
    Numeric,
    /// Jump consistent hash of `fnv1a64(id)`: going from N to N+1 replicas moves ~1/(N+1) of ids.
    Jump,
}

impl IndexMode {
    /// Every mode, in the order they are documented.
    pub const ALL: [IndexMode; 3] = [IndexMode::Hash, IndexMode::Numeric, IndexMode::Jump];

    /// The name used in configuration and in JSON answers.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexMode::Hash => "hash",
            IndexMode::Numeric => "numeric",
            IndexMode::Jump => "jump",
        }
    }
}

impl fmt::Display for IndexMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for an unknown mode name; carries what was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown index mode {0:?}: expected hash, numeric or jump")]
pub struct UnknownMode(pub String);

impl FromStr for IndexMode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hash" => Ok(IndexMode::Hash),
            "numeric" => Ok(IndexMode::Numeric),
            "jump" => Ok(IndexMode::Jump),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}

/// The most members a placement holds: far beyond what one Envoy fronts, and small enough that
/// the member list stays a few hundred KiB.
pub const MAX_MEMBERS: usize = 65_536;

/// The identity of one member list under one rule: equal epochs mean equal owners for every id.
///
/// Written as 16 lowercase hex digits, in JSON answers and in the `x-poc-epoch` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The error for text that is not an epoch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an epoch is 16 lowercase hex digits, not {0:?}")]
pub struct BadEpoch(pub String);

impl FromStr for Epoch {
    type Err = BadEpoch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(BadEpoch(s.to_owned()));
        }
        u64::from_str_radix(s, 16)
            .map(Epoch)
            .map_err(|_| BadEpoch(s.to_owned()))
    }
}

/// The placement rule of one deployment: how instances are named, and which are members.
///
/// Construct it with [`Placement::new`] (members `base..base+replicas-1`) or narrow it to the
/// deployed members with [`Placement::with_members`]. Both check the invariants once, so that
/// [`Placement::index`] cannot fail for a valid id in hash or jump mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    mode: IndexMode,
    base: u32,
    prefix: String,
    suffix: String,
    port: u16,
    /// Sorted, without duplicates, never empty.
    members: Vec<u64>,
    epoch: Epoch,
}

/// Why a [`Placement`] could not be built. Each variant names the setting at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("replicas must be at least 1")]
    NoReplicas,
    #[error("the member list is empty: at least one instance must be a member")]
    NoMembers,
    #[error("{0} members; at most {MAX_MEMBERS} are supported")]
    TooManyMembers(usize),
    #[error("port must be between 1 and 65535")]
    ZeroPort,
    #[error("prefix {0:?} is not a DNS label: it must start with a letter or digit and hold only letters, digits and '-'")]
    BadPrefix(String),
    #[error("suffix {0:?} must be empty or a series of '.label' parts (letters, digits, '-')")]
    BadSuffix(String),
}

impl Placement {
    /// Checks and builds a placement rule.
    pub fn new(
        mode: IndexMode,
        replicas: u32,
        base: u32,
        prefix: impl Into<String>,
        suffix: impl Into<String>,
        port: u16,
    ) -> Result<Self, PlacementError> {
        let prefix = prefix.into();
        let suffix = suffix.into();
        if replicas == 0 {
            return Err(PlacementError::NoReplicas);
        }
        if replicas as usize > MAX_MEMBERS {
            return Err(PlacementError::TooManyMembers(replicas as usize));
        }
        if port == 0 {
            return Err(PlacementError::ZeroPort);
        }
        if !is_dns_label(&prefix) {
            return Err(PlacementError::BadPrefix(prefix));
        }
        let suffix_ok = suffix.is_empty()
            || suffix
                .strip_prefix('.')
                .is_some_and(|rest| rest.split('.').all(is_dns_label));
        if !suffix_ok {
            return Err(PlacementError::BadSuffix(suffix));
        }
        let first = u64::from(base);
        let members = (first..first + u64::from(replicas)).collect();
        Ok(Self::build(mode, base, prefix, suffix, port, members))
    }

    fn build(
        mode: IndexMode,
        base: u32,
        prefix: String,
        suffix: String,
        port: u16,
        members: Vec<u64>,
    ) -> Self {
        let mut placement = Self {
            mode,
            base,
            prefix,
            suffix,
            port,
            members,
            epoch: Epoch(0),
        };
        placement.epoch = Epoch(fnv1a64(placement.canonical().as_bytes()));
        placement
    }

    /// The same rule over another member list (sorted and de-duplicated here).
    pub fn with_members(
        &self,
        members: impl IntoIterator<Item = u64>,
    ) -> Result<Self, PlacementError> {
        let mut members: Vec<u64> = members.into_iter().collect();
        members.sort_unstable();
        members.dedup();
        if members.is_empty() {
            return Err(PlacementError::NoMembers);
        }
        if members.len() > MAX_MEMBERS {
            return Err(PlacementError::TooManyMembers(members.len()));
        }
        Ok(Self::build(
            self.mode,
            self.base,
            self.prefix.clone(),
            self.suffix.clone(),
            self.port,
            members,
        ))
    }

    /// The text the epoch hashes: `mode|prefix|suffix|port|m1,m2,...`, members ascending.
    /// Everything that decides an owner's hostport is in it, and nothing else.
    pub fn canonical(&self) -> String {
        let members: Vec<String> = self.members.iter().map(u64::to_string).collect();
        format!(
            "{}|{}|{}|{}|{}",
            self.mode,
            self.prefix,
            self.suffix,
            self.port,
            members.join(",")
        )
    }

    /// The identity of this member list under this rule.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn mode(&self) -> IndexMode {
        self.mode
    }
    /// How many members there are.
    pub fn replicas(&self) -> u32 {
        // At most MAX_MEMBERS, which fits.
        self.members.len() as u32
    }
    pub fn base(&self) -> u32 {
        self.base
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn suffix(&self) -> &str {
        &self.suffix
    }
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The member indexes, ascending.
    pub fn members(&self) -> &[u64] {
        &self.members
    }

    /// Whether instance `index` is a member.
    pub fn is_member(&self, index: u64) -> bool {
        self.members.binary_search(&index).is_ok()
    }

    /// The index of the instance that owns `id`: the member at the position the mode picks.
    ///
    /// Fails only in numeric mode, when the id is not a decimal number that fits in a `u64`.
    pub fn index(&self, id: &ClientId) -> Result<u64, IdError> {
        let n = self.members.len() as u64;
        let position = match self.mode {
            IndexMode::Hash => u64::from(fnv1a32(id.as_bytes())) % n,
            IndexMode::Numeric => id::parse_decimal_u64(id.as_str())? % n,
            IndexMode::Jump => u64::from(jump_consistent_hash(
                fnv1a64(id.as_bytes()),
                self.replicas(),
            )),
        };
        // position < n, which indexes the list.
        Ok(self.members[position as usize])
    }

    /// The host name of instance `index`, without the port.
    pub fn host(&self, index: u64) -> String {
        format!("{}-{}{}", self.prefix, index, self.suffix)
    }

    /// `SERVICE_PREFIX-<index>SERVICE_SUFFIX:PORT`: where the instance can be dialled.
    pub fn hostport(&self, index: u64) -> String {
        format!("{}:{}", self.host(index), self.port)
    }

    /// The index encoded in a host name such as `server-3` (a StatefulSet pod) or
    /// `server-3.server-headless.ns.svc.cluster.local`, if it names one of our instances.
    pub fn index_from_hostname(&self, hostname: &str) -> Option<u64> {
        let first_label = hostname.split('.').next()?;
        let digits = first_label.strip_prefix(&self.prefix)?.strip_prefix('-')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

/// A DNS label as RFC 1123 allows it: 1..=63 letters, digits and '-', not starting or ending in '-'.
fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compose() -> Placement {
        Placement::new(IndexMode::Hash, 3, 1, "poc-routing-server", "", 8081).unwrap()
    }

    #[test]
    fn hostport_follows_the_naming_scheme() {
        assert_eq!(compose().hostport(2), "poc-routing-server-2:8081");
        let k8s = Placement::new(
            IndexMode::Jump,
            2,
            0,
            "server",
            ".server-headless.poc-routing.svc.cluster.local",
            8081,
        )
        .unwrap();
        assert_eq!(
            k8s.hostport(0),
            "server-0.server-headless.poc-routing.svc.cluster.local:8081"
        );
        assert_eq!(k8s.members(), [0, 1]);
    }

    #[test]
    fn rejects_bad_settings() {
        let cases = [
            (0, "p", "", 1, PlacementError::NoReplicas),
            (1, "p", "", 0, PlacementError::ZeroPort),
            (1, "", "", 1, PlacementError::BadPrefix(String::new())),
            (1, "-p", "", 1, PlacementError::BadPrefix("-p".into())),
            (1, "p_q", "", 1, PlacementError::BadPrefix("p_q".into())),
            (1, "p", "x.y", 1, PlacementError::BadSuffix("x.y".into())),
            (1, "p", ".", 1, PlacementError::BadSuffix(".".into())),
            (
                1,
                "p",
                ".a..b",
                1,
                PlacementError::BadSuffix(".a..b".into()),
            ),
        ];
        for (replicas, prefix, suffix, port, want) in cases {
            let got = Placement::new(IndexMode::Hash, replicas, 0, prefix, suffix, port);
            assert_eq!(got, Err(want), "{replicas} {prefix:?} {suffix:?} {port}");
        }
    }

    #[test]
    fn index_from_hostname() {
        let p = compose();
        let cases = [
            ("poc-routing-server-1", Some(1)),
            ("poc-routing-server-17.local", Some(17)),
            ("poc-routing-server-", None),
            ("poc-routing-server-1a", None),
            ("poc-routing-server", None),
            ("0123456789ab", None),
            ("other-1", None),
        ];
        for (host, want) in cases {
            assert_eq!(p.index_from_hostname(host), want, "{host}");
        }
    }

    #[test]
    fn contiguous_members_keep_the_plain_rule_and_gaps_index_the_sorted_list() {
        let plain = compose();
        let gapped = plain.with_members([7, 2, 2, 5]).unwrap();
        assert_eq!(gapped.members(), [2, 5, 7]);
        assert_eq!(gapped.replicas(), 3);
        assert_eq!(gapped.with_members([]), Err(PlacementError::NoMembers));
        // Same positions: member k of the gapped list owns what base+k owns in the plain rule.
        for i in 0..500 {
            let id = ClientId::try_from(format!("id-{i}").as_str()).unwrap();
            let position = plain.index(&id).unwrap() - 1;
            assert_eq!(gapped.index(&id).unwrap(), [2, 5, 7][position as usize]);
        }
        // Rebuilding the contiguous list gives back the same rule and epoch.
        assert_eq!(plain.with_members([1, 2, 3]).unwrap(), plain);
    }

    #[test]
    fn the_epoch_names_the_rule_and_the_members() {
        let p = compose();
        assert_eq!(p.canonical(), "hash|poc-routing-server||8081|1,2,3");
        assert_eq!(
            p.epoch(),
            Epoch(fnv1a64(b"hash|poc-routing-server||8081|1,2,3"))
        );
        assert_ne!(p.epoch(), p.with_members([1, 2]).unwrap().epoch());
        assert_eq!(p.epoch().to_string().len(), 16);
        assert_eq!(p.epoch().to_string().parse::<Epoch>(), Ok(p.epoch()));
        for bad in [
            "",
            "123",
            "ABCDEF0123456789",
            "0123456789abcdefg",
            "g123456789abcdef",
        ] {
            assert_eq!(
                bad.parse::<Epoch>(),
                Err(BadEpoch(bad.to_owned())),
                "{bad:?}"
            );
        }
        let jump = Placement::new(IndexMode::Jump, 3, 1, "poc-routing-server", "", 8081).unwrap();
        assert_ne!(p.epoch(), jump.epoch(), "the mode is part of the epoch");
    }

    #[test]
    fn mode_names_round_trip() {
        for mode in IndexMode::ALL {
            assert_eq!(mode.as_str().parse::<IndexMode>(), Ok(mode));
        }
        assert_eq!(
            "Hash".parse::<IndexMode>(),
            Err(UnknownMode("Hash".to_owned()))
        );
    }
}
