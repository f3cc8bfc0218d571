//! The wire contract of poc-routing: every JSON answer, header and dynamic-metadata name that
//! crosses a process boundary, defined once.
//!
//! The servers write these types; the Envoy module (`/placement`), the servers' peer plane
//! (gossip tables, hand-offs, replicas), the client and the test stack read them, by
//! deserializing these same types.
//! `lua/routing.lua`, which cannot link Rust, reads `/where` answers by pattern, and is tested
//! against the golden files in `tests/golden/`, which pin the field names and order
//! (`tests/golden.rs` checks that these types still write exactly those files).
//!
//! A crate of its own rather than a module of the placement crate: the placement crate is the
//! rule (what owns what), and stays free of any format; this crate is the format, which the rule's
//! users share. Like linkerd's proxy-api, it changes only with the contract.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use poc_routing_placement::{IndexMode, PlacementSpec};
use serde::{Deserialize, Serialize};

/// The header in which Envoy's routing filter stamps the epoch it routed a join by. The owner
/// judges the join under that epoch; Envoy removes a client's own on every route.
pub const EPOCH_HEADER: &str = "x-poc-epoch";

/// The header in which the routing filter hands the owner the key it routed a request by
/// (form-encoded), whatever the route's key source; it overwrites a client's own, and route B
/// and the operator listener remove it. Defined with the key sources, which refuse to read it.
pub use poc_routing_placement::KEY_HEADER;

/// The dynamic metadata namespace and key where the routing filter records the owner's name
/// (`envoy.yaml`'s error bodies and access log read it; the Lua flow's guard requires it).
pub const METADATA_NAMESPACE: &str = "poc.routing";
pub const METADATA_OWNER_KEY: &str = "owner";

/// The version of Envoy's dynamic-module ABI the routing module is written against; Envoy 1.40
/// logs whether it matches its own.
pub const MODULE_ABI_VERSION: &str = "v0.2.0";

/// Response code details of every reply the routing module makes itself (`envoy.yaml`'s
/// local_reply_config leaves them as they are: they are JSON already).
pub const MODULE_RESPONSE_DETAILS: &str = "poc_routing_module";

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Started, not yet ready: it does not know the member list yet. Not a member.
    Joining,
    /// Ready and counted in the member list.
    Member,
    /// Told to stop (SIGTERM): no longer counted, still serving the joins routed to it under
    /// the previous epoch until every view has moved on.
    Leaving,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Member => "member",
            MemberState::Leaving => "leaving",
        }
    }
}

/// `GET /where?client_id=ID`: the owner of `ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhereAnswer {
    pub client_id: String,
    pub index: u64,
    pub hostport: String,
    pub mode: IndexMode,
    pub replicas: u32,
    pub epoch: String,
}

/// Under which view a join was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServedUnder {
    /// The current member list.
    Current,
    /// A recent one, inside the transition window after a member change.
    Previous,
}

impl ServedUnder {
    pub fn as_str(self) -> &'static str {
        match self {
            ServedUnder::Current => "current",
            ServedUnder::Previous => "previous",
        }
    }
}

/// `/join?client_id=ID`, served by its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub client_id: String,
    /// Always `joined`.
    pub status: String,
    pub instance: u64,
    pub owner: u64,
    pub hostport: String,
    /// The epoch the join was served under.
    pub epoch: String,
    pub served_under: ServedUnder,
}

/// How an instance learns its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// Found in DNS.
    Dns,
    /// A fixed member set (`DISCOVERY=off`).
    Off,
}

/// `GET /placement`: one instance's view.
///
/// Field order is part of the format: the top-level `epoch` and `members` come before the
/// nested `previous` and `peers`, so a reader that takes the first `"epoch"` (the Lua filter's
/// pattern) takes the top-level one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementAnswer {
    pub instance: Option<u64>,
    pub state: MemberState,
    pub discovery: Discovery,
    /// `null` while joining.
    pub epoch: Option<String>,
    pub members: Vec<u64>,
    /// Where each member was found (`ip:port`, by index); a member that is not found (crashed,
    /// restarting) is missing. Proxies dial these addresses; they are not part of the epoch.
    #[serde(default)]
    pub addresses: BTreeMap<u64, String>,
    pub replicas: u32,
    /// The rule: `mode`, `prefix`, `suffix`, `port`, `base`.
    #[serde(flatten)]
    pub rule: PlacementSpec,
    pub expected_replicas: Option<u32>,
    pub replicas_mismatch: bool,
    pub since_change_ms: Option<u64>,
    pub previous: Option<PreviousView>,
    pub peers: Vec<PeerView>,
    /// Registrations this instance holds for clients another instance owns, not yet
    /// acknowledged by that owner (the hand-off).
    #[serde(default)]
    pub handoff_pending: u64,
    /// Replicas of other instances' registrations this instance holds as their backup.
    #[serde(default)]
    pub replicas_held: u64,
    /// Registrations owned here that changed and that their backup has not acknowledged yet
    /// (the replication lag, in registrations).
    #[serde(default)]
    pub replication_pending: u64,
    /// With discovery: the peer credential this instance holds now. During a rotation each
    /// step is in force everywhere once every instance reports it.
    #[serde(default)]
    pub credential: Option<Fingerprints>,
}

/// A peer credential, by the SHA-256 fingerprints of its certificate authorities.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fingerprints {
    /// The authority this instance's certificate is issued from (`ca.pem`).
    pub primary: String,
    /// Every authority accepted, the primary included, in file order (ca, next, previous).
    pub accepted: Vec<String>,
}

/// A view and how long joins routed by it are still served: an instance's previous view (in
/// `/placement` and its cards), and `GET /peer/view?epoch=E`'s answer (`null`: not held).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousView {
    pub epoch: String,
    pub members: Vec<u64>,
    pub window_left_ms: u64,
}

/// What an instance last learnt of one peer from the membership gossip (its card).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub instance: u64,
    pub hostport: String,
    /// `null` when the peer did not answer.
    pub state: Option<MemberState>,
    pub epoch: Option<String>,
    /// Whether the peer holds the same epoch as this instance.
    pub agrees: bool,
}

/// Every error answer, from the servers, the routing filters and Envoy itself:
/// `{"error": <machine code>, "message": <human text>, ...details}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    /// What some codes add: `owner` (Envoy's and the module's `owner_unavailable`,
    /// `overloaded`), the [`Misdirected`] fields (421), `details` (Envoy's `bad_request`).
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// What a 421 `misdirected` adds to its [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Misdirected {
    pub client_id: String,
    /// The instance that refused the join.
    pub instance: u64,
    /// The current owner, by index, and where it is dialled.
    pub owner: u64,
    pub owner_hostport: String,
    pub epoch: String,
    /// The epoch the join was routed by, if it carried one.
    pub routed_epoch: Option<String>,
}

impl ErrorBody {
    pub fn new(error: &str, message: String) -> Self {
        Self {
            error: error.to_owned(),
            message,
            details: serde_json::Map::new(),
        }
    }

    /// Adds the fields of `details` (a struct that serializes to a JSON object).
    pub fn with(mut self, details: &impl Serialize) -> Self {
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(details) {
            self.details.extend(fields);
        }
        self
    }

    /// The 421 fields, when this is a `misdirected` answer.
    pub fn misdirected(&self) -> Option<Misdirected> {
        if self.error != "misdirected" {
            return None;
        }
        serde_json::from_value(serde_json::Value::Object(self.details.clone())).ok()
    }
}

/// What one instance says about itself to its peers: a card of the membership gossip
/// (`/peer/digest`, `/peer/sync`, `/peer/push`). Only the instance itself writes its card; a
/// card with a higher `version` replaces an older one wherever it arrives, directly or relayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCard {
    pub instance: u64,
    /// Rises with every change the instance makes to its card, and across its restarts (it
    /// starts from the wall clock in microseconds), so that a restarted instance's card
    /// replaces the one its earlier life left behind.
    pub version: u64,
    pub state: MemberState,
    /// The epoch of the view it holds; its members are in [`PeerTable::views`].
    pub epoch: Option<String>,
    /// The view it held before, while joins routed by it are still served.
    pub previous: Option<String>,
    /// How long that window still lasted when the card was written.
    pub previous_left_ms: u64,
    /// The members this instance removed as down lately (not those that left), each with the
    /// version of its card it held then. A peer follows a removal only for that card or an
    /// older one: a newer card means the instance spoke after it was judged down, and a view
    /// that merely lacks a member (its writer had not heard of it yet) removes nobody.
    #[serde(default)]
    pub removed: Vec<PeerRemoval>,
}

/// One removal as down, named by a [`PeerCard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRemoval {
    pub instance: u64,
    /// The version of the removed instance's card its remover held (0: none).
    pub version: u64,
}

/// The members of one view named by the cards of a [`PeerTable`], listed once however many
/// cards name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerViewMembers {
    pub epoch: String,
    pub members: Vec<u64>,
}

/// `POST /peer/sync` (both ways) and `POST /peer/push` (request): cards and the views they
/// name. Peer-only: served on the instances' own port, never through Envoy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTable {
    /// The sender, once it knows its index.
    pub from: Option<u64>,
    pub cards: Vec<PeerCard>,
    pub views: Vec<PeerViewMembers>,
}

/// `GET /peer/digest`: who answers, and the digest of every card it holds (16 hex digits). Two
/// instances with the same digest hold the same cards, so nothing more is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDigest {
    pub instance: Option<u64>,
    pub digest: String,
}

/// One client's registration: the record of its joins, held by its owner and handed off to the
/// next owner when placement moves it. Merging two records of one client loses nothing and
/// counts nothing twice, in any order and any number of times (a join-semilattice):
/// `first_join_us` is the earliest, `last_join_us` the latest, `joins` the union of counters
/// (the higher count where both hold one), `served` the union, newest kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub client_id: String,
    /// Wall clock, microseconds since the Unix epoch.
    pub first_join_us: u64,
    pub last_join_us: u64,
    /// One counter per (instance, record): an instance counts the joins it serves in the
    /// record it started for the client, under a fresh `tag` each time it starts one, so that
    /// two counters are never the same counter unless they are copies of each other.
    pub joins: Vec<JoinCount>,
    /// The instances and epochs the client was served under, newest first, at most
    /// [`MAX_SERVED`].
    pub served: Vec<ServedBy>,
    /// In app mode: the application's state for this key ([`KeyState`]), which moves with the
    /// record. Absent in the records of the built-in application (`/join`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<KeyState>,
}

/// The application's state of one key (app mode): bytes only the application reads, and the
/// version its owner gave them. Copies merge by keeping the newer ([`KeyState::newer_than`]),
/// so a late copy (a hand-off or a replica that arrives after a newer write) never overwrites a
/// newer one. A deletion is kept as a tombstone (`value` absent) for the same reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// Rises by one with every write of the key, wherever it is written.
    pub version: u64,
    /// When it was written (wall clock, microseconds since the Unix epoch), and by which
    /// instance: the tie-break between two writes of one version (two owners during a view
    /// change that each missed the other's write), so every copy keeps the same one.
    pub written_us: u64,
    pub writer: u64,
    /// The bytes, base64 on the wire; absent once deleted.
    #[serde(default, with = "base64_bytes")]
    pub value: Option<Vec<u8>>,
}

impl KeyState {
    /// Whether this copy replaces `other` in a merge: a higher version, or the same version
    /// written later (then by the higher instance).
    pub fn newer_than(&self, other: &KeyState) -> bool {
        (self.version, self.written_us, self.writer)
            > (other.version, other.written_us, other.writer)
    }
}

/// The most bytes one key's application state may hold (`PUT /state/{key}` answers 413 past
/// it): a hand-off batch carries many, and each is held in memory by its owner and its backup.
pub const MAX_STATE_BYTES: usize = 64 * 1024;

/// `Option<Vec<u8>>` as an optional base64 string.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => s.serialize_some(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The most `served` entries a [`Registration`] keeps.
pub const MAX_SERVED: usize = 8;

/// Joins one instance counted in one record of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JoinCount {
    pub instance: u64,
    pub tag: u64,
    pub count: u64,
}

/// An instance and an epoch a client was served under, and when last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedBy {
    pub instance: u64,
    pub epoch: String,
    pub last_us: u64,
}

/// `POST /peer/handoff`: registrations an instance no longer owns, sent to their owner under
/// `epoch` (the sender's view). Peer-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOff {
    pub from: u64,
    pub epoch: String,
    pub registrations: Vec<Registration>,
}

/// `GET /peer/replicas?origin=N[&after=ID]`: the replicas an instance holds that instance
/// `N` sent it, in client id order, a page at a time: what a restarted instance gets back.
/// A replica is sent as a [`HandOff`] (`POST /peer/replicate`, the same mergeable records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPage {
    pub instance: u64,
    pub registrations: Vec<Registration>,
    /// The `after` of the next page; `null` on the last.
    pub next: Option<String>,
}

/// `POST /peer/resync`: instance `from` started again and holds no replicas: every
/// instance sends it again the replicas it is the backup of. Answered with a [`HandOffAck`]
/// whose `accepted` is how many records were queued for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resync {
    pub from: u64,
}

/// The answer to a [`HandOff`]: every registration was merged here (the sender may forget them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOffAck {
    pub instance: u64,
    pub accepted: u64,
}

/// The client ids one instance holds registrations for (`GET /peer/registrations`, and one
/// entry of [`RegistrationsReport`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRegistrations {
    pub instance: u64,
    /// The epoch it holds; `null` while it has none.
    pub epoch: Option<String>,
    /// Registrations it holds for ids it does not own under that epoch, not yet acknowledged.
    pub pending: u64,
    pub ids: Vec<String>,
    /// The ids it holds a replica of, as a backup; `null` when it keeps none
    /// (`REPLICATION=off`, or a fixed member set).
    #[serde(default)]
    pub replicas: Option<Vec<String>>,
    /// Registrations it owns that changed and that their backup has not acknowledged yet.
    #[serde(default)]
    pub replication_pending: u64,
    /// Set when the instance could not be read; `ids` is then empty.
    pub error: Option<String>,
}

/// `GET /registrations` (operator listener): the ids every instance holds, gathered by the
/// instance that answers (`via`) from itself and from each instance its view names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationsReport {
    pub via: Option<u64>,
    pub epoch: Option<String>,
    pub instances: Vec<InstanceRegistrations>,
}

/// `POST /peer/release`: the current owner of `key` (`from`) asks the instance that owned it
/// under the previous view for its record before serving it (app mode), so that the
/// application's state is where its key is before the application reads it. Answered with a
/// [`HandOff`] of that record (none if it holds none); the sender no longer holds it then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub from: u64,
    pub key: String,
}

/// The header in which an instance in app mode tells the application which instance it is
/// (with [`KEY_HEADER`] and [`EPOCH_HEADER`], which it sets itself on every forwarded request).
pub const INSTANCE_HEADER: &str = "x-poc-instance";

/// The header of the state API (`/state/{key}`) that carries a key state's version: in every
/// answer, and in a write's `If-Match` precondition.
pub const STATE_VERSION_HEADER: &str = "x-poc-version";

/// `PUT` or `DELETE /state/{key}` (the state API, app mode): the version written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateWritten {
    pub key: String,
    pub version: u64,
    /// Whether the key's backup acknowledged the write before this answer (`false`: no backup
    /// now, or it did not answer in time; the write is sent again until it does).
    pub replicated: bool,
}

/// One line of `GET /events` (the state API, app mode, newline-delimited JSON): keys that
/// became this instance's (`arrived`: their record and state are here now) or stopped being
/// (`left`: handed to their new owner), under `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipEvent {
    pub event: OwnershipChange,
    pub keys: Vec<String>,
    pub epoch: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnershipChange {
    Arrived,
    Left,
}

/// The close code an owner ends a WebSocket session with when its client moved to another
/// owner (a scale change, or the owner leaving). The close reason is a [`SessionMoved`].
pub const CLOSE_MOVED: u16 = 4001;

/// A WebSocket session's messages from the owner (`GET /join` with `Upgrade: websocket`), as
/// JSON text frames: first a `welcome`, then a `pong` for each `ping` and an `echo` of any
/// other text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SessionMessage {
    /// The first message: who holds the session, under which epoch.
    Welcome {
        client_id: String,
        instance: u64,
        epoch: String,
    },
    /// The answer to a client's `{"type":"ping","seq":N}`.
    Pong { seq: u64, instance: u64 },
    /// Any other text the client sent, back.
    Echo { data: String },
}

/// What a client sends on its session (other text is echoed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SessionRequest {
    Ping { seq: u64 },
}

/// The reason of a [`CLOSE_MOVED`] close frame: where the client is owned now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMoved {
    pub reason: String,
    pub owner: u64,
    pub epoch: String,
}

/// The tokens of an operator token file (`OPERATOR_TOKEN_FILE`), in order: one a line, blank
/// lines and `#` comments aside. Servers accept every one; tools and the routing module send
/// the last ([`newest_operator_token`]), so a rotation appends a token, then drops the others.
pub fn operator_tokens(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The token a tool sends from an operator token file: its last.
pub fn newest_operator_token(text: &str) -> Option<&str> {
    operator_tokens(text).last()
}
