//! The poc-routing client library: HTTP calls ([`api`]), test ids ([`ids`]), the end-to-end
//! routing check ([`mod@verify`]), steady load that counts what clients see ([`load`]), every
//! instance's view side by side ([`views`]), and one scale step under load, checked
//! ([`scale`]), and whether every registration is at its owner, once ([`audit`]). The `poc-client` binary is a thin command line over it, and the end-to-end tests
//! of the local stack use the same code.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod ids;
pub mod load;
pub mod rooms;
pub mod scale;
pub mod sessions;
pub mod verify;
pub mod views;

pub use api::{operator_token, Api, CallError, Join};
pub use load::LoadReport;
pub use verify::{verify, IdResult, Outcome, Report};
