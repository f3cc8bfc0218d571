//! The helpers every harness in this workspace needs, written once: the local stack
//! (`poc-routing-stack`), the end-to-end tests, the client's CLI tests and the bench use them.
//!
//! - [`free_port`]: a port nothing listens on right now.
//! - [`workspace_binary`]: a binary this workspace built, found next to the running one.
//! - [`KillOnDrop`]: a child process that cannot outlive the test that started it.
//! - [`wait_for`] and [`wait_until_2xx`]: poll until something holds, or fail naming it.
//! - [`jwt::Issuer`]: an ES256 key, its JWKS and tokens signed with it (the JWT key source).

pub mod jwt;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::TcpListener;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::Rng;

/// A loopback TCP port that was free a moment ago, for a process that binds the port itself
/// (Envoy, a spawned server).
///
/// The port is released before this returns, so something else could take it before the caller
/// binds it. To make that unlikely it is drawn at random from below the kernel's ephemeral range
/// (`ip_local_port_range`), which outgoing connections never use: a port from that range (what
/// binding port 0 gives) is often taken a moment later as the local end of a connection, which
/// made Envoy fail to start with "Address already in use" now and then.
///
/// A port is handed out once per process: two draws for one stack (its listeners are bound
/// only when Envoy starts) once gave Envoy the same port for two listeners.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let (first_ephemeral, _) = ephemeral_range();
    let low = 10_000u16.min(first_ephemeral.saturating_sub(1000));
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(low..first_ephemeral);
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    // Everything below the ephemeral range is taken: fall back to what the kernel picks.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port");
    handed_out.insert(port);
    port
}

/// The kernel's ephemeral port range, `(first, last)`; Linux's default where it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .filter(|(first, last)| first <= last && *first > 1024)
        .unwrap_or((32_768, 60_999))
}

/// A binary of this workspace, next to the running executable (or its `deps/` parent): where
/// `cargo build` puts `poc-server`, `poc-client` and `poc-stack` for the same profile.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let mut dir = std::env::current_exe()?;
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build --workspace` (`make test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// A child process that is killed, and reaped, when this value is dropped: a failing test or an
/// interrupted bench leaves no process behind.
#[derive(Debug)]
pub struct KillOnDrop(Child);

impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    /// Kills the process now (if it still runs) and waits for it.
    pub fn kill(&mut self) -> std::io::Result<ExitStatus> {
        // Killing a process that already exited is not an error worth reporting.
        let _ = self.0.kill();
        self.0.wait()
    }
}

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Polls `check` every 50 ms until it returns true; fails after `timeout`, naming `what`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `GET url` answers 2xx.
pub async fn wait_until_2xx(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<()> {
    wait_for(&format!("GET {url} to answer 2xx"), timeout, || async {
        matches!(http.get(url).send().await, Ok(r) if r.status().is_success())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_is_outside_the_ephemeral_range_and_can_be_bound() {
        let (first, last) = ephemeral_range();
        assert!(first > 1024 && first <= last, "{first}..{last}");
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        for _ in 0..20 {
            let port = free_port();
            assert!(
                port < first,
                "{port} is in the ephemeral range {first}..{last}"
            );
            assert_ne!(port, held.local_addr().unwrap().port());
            TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        }
    }

    #[test]
    fn a_missing_binary_names_the_build_command() {
        let err = workspace_binary("no-such-binary").unwrap_err().to_string();
        assert!(err.contains("cargo build --workspace"), "{err}");
    }

    #[test]
    fn a_dropped_child_is_killed() {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        drop(KillOnDrop::new(child));
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z");
        assert!(!alive, "pid {pid} outlived its guard");
    }

    #[tokio::test]
    async fn waiting_names_what_it_waited_for() {
        let err = wait_for("the moon", Duration::from_millis(120), || async { false })
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("the moon"), "{err}");
        let mut calls = 0;
        wait_for("the third call", Duration::from_secs(5), || {
            calls += 1;
            let done = calls == 3;
            async move { done }
        })
        .await
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn nothing_listening_is_not_2xx() {
        let url = format!("http://127.0.0.1:{}/health", free_port());
        let http = reqwest::Client::new();
        let err = wait_until_2xx(&http, &url, Duration::from_millis(200))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&url), "{err}");
    }
}
