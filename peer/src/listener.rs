//! The peer listener: TCP, then a mutual TLS handshake, then HTTP (axum).
//!
//! Handshakes run beside the accept loop, each bounded in time and in number, so a peer that
//! opens a connection and says nothing (or a flood of them) holds neither the loop nor more
//! than [`MAX_HANDSHAKES`] tasks. A connection that fails its handshake never reaches HTTP:
//! nothing it sent is parsed, nothing is answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;

use crate::Credentials;

/// Handshakes in progress at once; more wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// A handshake not finished by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// The address of a peer whose handshake succeeded (axum's connect info on the peer router).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Why a connection was refused before HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No certificate, one no accepted authority issued, plain HTTP, or not TLS 1.3.
    Handshake,
    /// The handshake did not finish within [`HANDSHAKE_TIMEOUT`].
    Timeout,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Handshake => "handshake",
            Refused::Timeout => "handshake_timeout",
        }
    }
}

/// A listener for `axum::serve` whose connections have passed the handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` with the server config `credentials` holds at each connection's start
    /// (so a reloaded keyring applies to the next connection); `refused` hears of each
    /// connection refused.
    pub fn new(
        tcp: TcpListener,
        credentials: Arc<Credentials>,
        refused: impl Fn(Refused, SocketAddr) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let refused = Arc::new(refused);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = tx.closed() => return,
                    accepted = tcp.accept() => accepted,
                };
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, as axum's own loop does.
                        tracing::debug!(error = %e, "peer listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(credentials.server_config());
                let tx = tx.clone();
                let refused = refused.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = stream.set_nodelay(true);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %addr, error = %e, "peer connection refused at the TLS handshake");
                            refused(Refused::Handshake, addr);
                        }
                        Err(_) => refused(Refused::Timeout, addr),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = PeerAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some((io, addr)) => (io, PeerAddr(addr)),
            // The accept task ends only when this receiver is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(PeerAddr(self.local))
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}
