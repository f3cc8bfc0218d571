//! The poc-routing client library: HTTP calls ([`api`]), test ids ([`ids`]), the end-to-end
//! routing check ([`mod@verify`]) and its report read back ([`results`]), steady load that
//! counts what clients see ([`load`]), every instance's view side by side ([`views`]), one
//! scale step under load, checked ([`scale`]), whether every registration is at its owner,
//! once ([`audit`]), WebSocket sessions ([`sessions`]) and their fault row
//! ([`session_fault`]), and one join's answer judged ([`answer`]). The `poc-client` binary is
//! a thin command line over it, and the end-to-end tests of the local stack and the scripts of
//! `make test-compose` and `make test-k8s` use the same code.
#![forbid(unsafe_code)]

pub mod answer;
pub mod api;
pub mod audit;
pub mod ids;
pub mod load;
pub mod results;
pub mod rooms;
pub mod scale;
pub mod session_fault;
pub mod sessions;
pub mod verify;
pub mod views;

pub use api::{operator_token, Api, CallError, Join};
pub use load::LoadReport;
pub use verify::{verify, IdResult, Outcome, Report};
