//! `poc-server`: reads its configuration from the environment and serves until SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use poc_routing_server::{shutdown_signal, telemetry, Application, Config};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("poc-server: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(telemetry::subscriber(
        "info",
        config.log_format,
        std::io::stdout,
    ));
    let bind = format!("{}:{}", config.bind_addr, config.placement.port());
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("poc-server: cannot listen on {bind}: {e}");
            return ExitCode::from(1);
        }
    };
    match app.run_until(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("poc-server: {e}");
            ExitCode::from(1)
        }
    }
}
