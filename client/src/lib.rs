//! The poc-routing client library: HTTP calls ([`api`]), test ids ([`ids`]), the end-to-end
//! routing check ([`verify`]), steady load that counts what clients see ([`load`]), and every
//! instance's view side by side ([`views`]). The `poc-client` binary is a thin command line over it, and the
//! end-to-end tests of the local stack use the same code.
#![forbid(unsafe_code)]

pub mod api;
pub mod ids;
pub mod load;
pub mod verify;
pub mod views;

pub use api::{Api, CallError, Join, Where};
pub use load::LoadReport;
pub use verify::{verify, IdResult, Outcome, Report};
