//! The poc-routing client library: HTTP calls ([`api`]), test ids ([`ids`]) and the end-to-end
//! routing check ([`verify`]). The `poc-client` binary is a thin command line over it, and the
//! end-to-end tests of the local stack use the same code.
#![forbid(unsafe_code)]

pub mod api;
pub mod ids;
pub mod verify;

pub use api::{Api, CallError, Join, Where};
pub use verify::{verify, IdResult, Outcome, Report};
