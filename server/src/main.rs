//! `poc-server`: reads its configuration from the environment and serves until SIGTERM/SIGINT.
//!
//! `poc-server healthcheck` asks a running server on this host for `/health` and exits 0 if it
//! answered 200: a container health check that needs no curl in the image.
//!
//! `poc-server credential new|rotate|promote|retire|show DIR` makes and rotates a deployment's
//! credentials ([`poc_routing_peer::secrets`]).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use poc_routing_server::{shutdown_signal, telemetry, Application, Config};

/// GET /health on 127.0.0.1:$PORT with a 2 s budget.
fn healthcheck() -> ExitCode {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8081".into());
    let check = || -> std::io::Result<bool> {
        let addr = format!("127.0.0.1:{port}");
        let addr = addr
            .parse()
            .map_err(|_| std::io::Error::other(format!("invalid PORT {port:?}")))?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"))
    };
    match check() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("poc-server healthcheck: /health did not answer 200");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("poc-server healthcheck: {e}");
            ExitCode::from(1)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("healthcheck") => return healthcheck(),
        Some("credential") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            return ExitCode::from(poc_routing_peer::secrets::command(&args));
        }
        Some(other) => {
            eprintln!("poc-server: unknown argument {other:?}; the server is configured by environment variables (see README); `poc-server healthcheck` checks a running one, and `poc-server credential` makes and rotates credentials");
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("poc-server: {e}");
            return ExitCode::from(2);
        }
    };
    // Buffered, flushed every 100 ms (telemetry::Buffered); `_flush` flushes the rest at exit.
    let stdout = telemetry::Buffered::stdout();
    let _flush = stdout.clone();
    telemetry::init(telemetry::subscriber("info", config.log_format, stdout));
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("poc-server: {e}");
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
