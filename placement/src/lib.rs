//! Placement: which instance owns a client id.
//!
//! This crate is the single definition of the routing rule. The server answers `/where` and
//! checks ownership on `/join` with it, the Envoy module computes owners with it, the client
//! builds its queries with it ([`client_id_query`]), and the bench and the end-to-end tests use
//! it as the oracle. It does no I/O, so every rule is covered by table-driven tests
//! (`tests/vectors.rs`, against the vectors `scripts/gen-vectors.py` writes).
//!
//! The three steps are kept apart on purpose:
//! 1. A [`KeySource`] finds exactly one key where the route says the request carries it (the
//!    `client_id` query parameter by default, form-decoded; a header, a cookie or a path
//!    segment), so every source is read by one piece of code.
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
mod key;
mod spec;

pub use hash::{fnv1a32, fnv1a64, jump_consistent_hash};
pub use id::{client_id_from_query, client_id_query, ClientId, IdError, MAX_CLIENT_ID_BYTES};
pub use key::{
    key_from_header, key_header_value, KeyError, KeySource, KeySourceError, KeyedRequest,
    PathTemplate, KEY_HEADER,
};
pub use spec::{
    is_prefix, is_suffix, Naming, PlacementSpec, DEFAULT_PORT, MAX_INDEX, PREFIX_ACCEPTS,
    SUFFIX_ACCEPTS,
};

use std::fmt;
use std::str::FromStr;

/// How a client id is turned into an instance index. Written `hash`, `numeric` or `jump`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum IndexMode {
    /// `fnv1a32(id) mod replicas`: the default. Changing the replica count moves most ids.
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

impl TryFrom<String> for IndexMode {
    type Error = UnknownMode;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

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

/// The placement rule of one deployment over its members: a [`PlacementSpec`] and the sorted
/// instance indexes that are members.
///
/// Construct it with [`Placement::contiguous`] (members `base..base+replicas-1`) or
/// [`Placement::new`] (an explicit member list), or narrow it with [`Placement::with_members`].
/// Each checks the invariants once, so that [`Placement::index`] cannot fail for a valid id in
/// hash or jump mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    spec: PlacementSpec,
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
    #[error("member index {0} is above {MAX_INDEX}")]
    IndexTooLarge(u64),
    #[error("port must be between 1 and 65535")]
    ZeroPort,
    #[error("prefix {0:?} is not {PREFIX_ACCEPTS}")]
    BadPrefix(String),
    #[error("suffix {0:?} must be {SUFFIX_ACCEPTS}")]
    BadSuffix(String),
}

impl Placement {
    /// The rule over members `base..base+replicas-1`, as a fresh deployment numbers them.
    pub fn contiguous(spec: PlacementSpec, replicas: u32) -> Result<Self, PlacementError> {
        if replicas == 0 {
            return Err(PlacementError::NoReplicas);
        }
        let first = u64::from(spec.naming.base);
        Self::new(spec, first..first + u64::from(replicas))
    }

    /// The rule over exactly `members` (sorted and de-duplicated here).
    pub fn new(
        spec: PlacementSpec,
        members: impl IntoIterator<Item = u64>,
    ) -> Result<Self, PlacementError> {
        spec.naming.check()?;
        let mut members: Vec<u64> = members.into_iter().collect();
        members.sort_unstable();
        members.dedup();
        if members.is_empty() {
            return Err(PlacementError::NoMembers);
        }
        if members.len() > MAX_MEMBERS {
            return Err(PlacementError::TooManyMembers(members.len()));
        }
        if let Some(&last) = members.last().filter(|&&m| m > MAX_INDEX) {
            return Err(PlacementError::IndexTooLarge(last));
        }
        let mut placement = Self {
            spec,
            members,
            epoch: Epoch(0),
        };
        placement.epoch = Epoch(fnv1a64(placement.canonical().as_bytes()));
        Ok(placement)
    }

    /// The same rule over another member list (sorted and de-duplicated here).
    pub fn with_members(
        &self,
        members: impl IntoIterator<Item = u64>,
    ) -> Result<Self, PlacementError> {
        Self::new(self.spec.clone(), members)
    }

    /// The text the epoch hashes: `mode|prefix|suffix|port|m1,m2,...`, members ascending.
    /// Everything that decides an owner's hostport is in it, and nothing else.
    pub fn canonical(&self) -> String {
        let members: Vec<String> = self.members.iter().map(u64::to_string).collect();
        let n = &self.spec.naming;
        format!(
            "{}|{}|{}|{}|{}",
            self.spec.mode,
            n.prefix,
            n.suffix,
            n.port,
            members.join(",")
        )
    }

    /// The identity of this member list under this rule.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The rule without its members.
    pub fn spec(&self) -> &PlacementSpec {
        &self.spec
    }
    pub fn naming(&self) -> &Naming {
        &self.spec.naming
    }
    pub fn mode(&self) -> IndexMode {
        self.spec.mode
    }
    /// How many members there are.
    pub fn replicas(&self) -> u32 {
        // At most MAX_MEMBERS, which fits.
        self.members.len() as u32
    }
    pub fn base(&self) -> u32 {
        self.spec.naming.base
    }
    pub fn prefix(&self) -> &str {
        &self.spec.naming.prefix
    }
    pub fn suffix(&self) -> &str {
        &self.spec.naming.suffix
    }
    pub fn port(&self) -> u16 {
        self.spec.naming.port
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
        let position = self.position(id, self.members.len())?;
        Ok(self.members[position])
    }

    /// The instance that holds `id`'s replica: the one that would own it if its owner were
    /// gone, i.e. its owner under the same rule over the members without the owner. Every
    /// instance computes it alike, and when the owner is removed the backup becomes the owner,
    /// so the replica is already where it is needed. `None` with a single member.
    pub fn backup(&self, id: &ClientId) -> Result<Option<u64>, IdError> {
        let n = self.members.len();
        if n < 2 {
            return Ok(None);
        }
        let owner = self.position(id, n)?;
        // The position among the other n - 1 members, which are the list without `owner`.
        let position = self.position(id, n - 1)?;
        let skip = usize::from(position >= owner);
        Ok(Some(self.members[position + skip]))
    }

    /// The position, in a sorted list of `n` members (1 <= n <= MAX_MEMBERS), that the mode
    /// picks for `id`.
    fn position(&self, id: &ClientId, n: usize) -> Result<usize, IdError> {
        let position = match self.spec.mode {
            IndexMode::Hash => u64::from(fnv1a32(id.as_bytes())) % n as u64,
            IndexMode::Numeric => id::parse_decimal_u64(id.as_str())? % n as u64,
            // n <= MAX_MEMBERS, which fits.
            IndexMode::Jump => u64::from(jump_consistent_hash(fnv1a64(id.as_bytes()), n as u32)),
        };
        // position < n.
        Ok(position as usize)
    }

    /// The host name of instance `index`, without the port.
    pub fn host(&self, index: u64) -> String {
        self.spec.naming.host(index)
    }

    /// `SERVICE_PREFIX-<index>SERVICE_SUFFIX:PORT`: where the instance can be dialled.
    pub fn hostport(&self, index: u64) -> String {
        self.spec.naming.hostport(index)
    }

    /// The index encoded in a host name, if it names one of our instances
    /// ([`Naming::index_from_hostname`]).
    pub fn index_from_hostname(&self, hostname: &str) -> Option<u64> {
        self.spec.naming.index_from_hostname(hostname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compose() -> Placement {
        Placement::contiguous(PlacementSpec::new(IndexMode::Hash, Naming::compose()), 3).unwrap()
    }

    #[test]
    fn hostport_follows_the_naming() {
        assert_eq!(compose().hostport(2), "poc-routing-server-2:8081");
        let k8s =
            Placement::contiguous(PlacementSpec::new(IndexMode::Jump, Naming::kubernetes()), 2)
                .unwrap();
        assert_eq!(
            k8s.hostport(0),
            "server-0.server-headless.poc-routing.svc.cluster.local:8081"
        );
        assert_eq!(k8s.members(), [0, 1]);
    }

    #[test]
    fn rejects_bad_settings() {
        let spec = |port| {
            PlacementSpec::new(
                IndexMode::Hash,
                Naming {
                    prefix: "p".into(),
                    suffix: String::new(),
                    port,
                    base: 0,
                },
            )
        };
        assert_eq!(
            Placement::contiguous(spec(1), 0),
            Err(PlacementError::NoReplicas)
        );
        assert_eq!(
            Placement::contiguous(spec(0), 1),
            Err(PlacementError::ZeroPort)
        );
        assert_eq!(Placement::new(spec(1), []), Err(PlacementError::NoMembers));
        assert_eq!(
            Placement::new(spec(1), [0, MAX_INDEX + 1]),
            Err(PlacementError::IndexTooLarge(MAX_INDEX + 1))
        );
        assert!(Placement::new(spec(1), [MAX_INDEX]).is_ok());
        let too_many = MAX_MEMBERS as u32 + 1;
        assert_eq!(
            Placement::contiguous(spec(1), too_many),
            Err(PlacementError::TooManyMembers(too_many as usize))
        );
        let mut bad_prefix = spec(1);
        bad_prefix.naming.prefix = "-p".into();
        assert_eq!(
            Placement::contiguous(bad_prefix, 1),
            Err(PlacementError::BadPrefix("-p".into()))
        );
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
        let jump = Placement::contiguous(PlacementSpec::new(IndexMode::Jump, Naming::compose()), 3)
            .unwrap();
        assert_ne!(p.epoch(), jump.epoch(), "the mode is part of the epoch");
    }

    #[test]
    fn the_backup_is_the_owner_once_the_owner_is_gone() {
        // Every mode, contiguous and gapped member lists, the edges of the list: the backup
        // is never the owner, and is exactly who owns the id once the owner is removed.
        let lists: [&[u64]; 6] = [
            &[1, 2],
            &[1, 2, 3],
            &[2, 5, 7],
            &[0, 9],
            &[1, 2, 3, 4, 5, 6, 7],
            &[3, 40, 41, 900],
        ];
        for mode in IndexMode::ALL {
            for members in lists {
                let p = Placement::new(
                    PlacementSpec::new(mode, Naming::compose()),
                    members.iter().copied(),
                )
                .unwrap();
                for i in 0..300u64 {
                    let id = ClientId::try_from(i.to_string().as_str()).unwrap();
                    let owner = p.index(&id).unwrap();
                    let backup = p.backup(&id).unwrap().expect("two members or more");
                    assert_ne!(backup, owner, "{mode} {members:?} {id:?}");
                    let without = p
                        .with_members(members.iter().copied().filter(|m| *m != owner))
                        .unwrap();
                    assert_eq!(
                        without.index(&id).unwrap(),
                        backup,
                        "{mode} {members:?} {id:?}"
                    );
                }
            }
        }
        let alone = compose().with_members([4]).unwrap();
        assert_eq!(alone.backup(&ClientId::try_from("a").unwrap()), Ok(None));
        let numeric =
            Placement::contiguous(PlacementSpec::new(IndexMode::Numeric, Naming::compose()), 3)
                .unwrap();
        assert_eq!(
            numeric.backup(&ClientId::try_from("x").unwrap()),
            Err(IdError::NotNumeric)
        );
        // Pinned: 7 % 3 = 1 -> member 2 owns; 7 % 2 = 1 among [1, 3] -> 3 backs it up.
        assert_eq!(
            numeric.backup(&ClientId::try_from("7").unwrap()),
            Ok(Some(3))
        );
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
