//! Who the members are, as a library: the gossip that keeps every instance's card, the rules
//! that turn what an instance observed into its view (with an epoch), and [`Node`], the state
//! machine that ties them together behind one entry point, [`Node::handle`].
//!
//! Nothing here does I/O, reads a clock or needs an async runtime: inputs come in with the time
//! (a round's tick with what DNS names, a peer's message, a request that got nothing), effects
//! come out (messages to send, a reply, a new view). The servers (`poc-routing-server`'s
//! discovery) carry the effects over HTTP with mutual TLS; the simulation (`poc-bench sim`)
//! delivers them in memory, with virtual time and lost messages. Both run this code, in the
//! manner of the `foca` crate.
//!
//! - [`gossip`]: one card per instance, one probe per round, cards swapped only when digests
//!   differ, changes pushed.
//! - [`membership`]: the view, its epoch and the recent views still accepted; when a member that
//!   vanished is removed.
//! - [`node`]: the protocol's sequence, once.

pub mod gossip;
pub mod membership;
pub mod node;

pub use gossip::{Card, Probe, Refused};
pub use membership::{Change, MemberState, Membership, Peer, Refusal, ServedUnder, Timing, Views};
pub use node::{Cards, Effect, Encoding, Input, Message, Node, Now};
