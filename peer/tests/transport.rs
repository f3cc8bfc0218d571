//! The peer plane over real sockets: a keyholder gets through, nobody else does, and a
//! rotation never leaves a moment when two instances of the cluster refuse each other.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use poc_routing_peer::{
    credential, ClientOptions, Credentials, PeerAddr, PeerClient, PeerError, TlsListener,
};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Peer {
    port: u16,
    credentials: Arc<Credentials>,
    refused: Arc<AtomicU64>,
}

/// A peer listener on port 0 answering `GET /who` with the caller's address.
async fn serve(dir: &Path) -> Peer {
    let credentials = Credentials::load(dir, ClientOptions::default()).unwrap();
    let tcp = tokio::net::TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let refused = Arc::new(AtomicU64::new(0));
    let counter = refused.clone();
    let listener = TlsListener::new(tcp, credentials.clone(), move |_, _| {
        counter.fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    let app =
        axum::Router::new().route(
            "/who",
            get(
                |axum::extract::ConnectInfo(PeerAddr(addr)): axum::extract::ConnectInfo<
                    PeerAddr,
                >| async move { addr.ip().to_string() },
            ),
        );
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<PeerAddr>(),
        )
        .await
        .unwrap();
    });
    Peer {
        port,
        credentials,
        refused,
    }
}

fn client(dir: &Path, port: u16) -> PeerClient {
    PeerClient::new(
        Credentials::load(dir, ClientOptions::default()).unwrap(),
        port,
    )
}

async fn who(client: &PeerClient) -> Result<String, String> {
    let r = client
        .get(LOCAL, "/who")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    r.text().await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn only_a_holder_of_the_cluster_credential_gets_an_answer() {
    let cluster = tempfile::tempdir().unwrap();
    credential::create(cluster.path()).unwrap();
    let stranger = tempfile::tempdir().unwrap();
    credential::create(stranger.path()).unwrap();
    let peer = serve(cluster.path()).await;

    assert_eq!(
        who(&client(cluster.path(), peer.port)).await.unwrap(),
        "127.0.0.1"
    );

    // A credential of its own, not the cluster's: refused at the handshake.
    let err = who(&client(stranger.path(), peer.port)).await.unwrap_err();
    assert!(err.contains("Connect") || err.contains("connect"), "{err}");
    // Plain HTTP on the peer port: no answer at all.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/who", peer.port))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // TLS without a client certificate, accepting any server certificate.
    let anonymous = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(format!("https://127.0.0.1:{}/who", peer.port))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    // A keyholder's client refuses a stranger's server too.
    let fake = serve(stranger.path()).await;
    assert!(who(&client(cluster.path(), fake.port)).await.is_err());
    assert!(peer.refused.load(Ordering::Relaxed) >= 3);

    // What the client makes of each: a failed handshake, either way round, is "not ours"; a
    // port where nothing listens is only "no answer" (an instance may be starting there).
    let asked = |client: PeerClient| async move {
        poc_routing_peer::json::<serde_json::Value>(client.get(LOCAL, "/who"), 1024).await
    };
    let not_ours =
        |r: Result<serde_json::Value, PeerError>| matches!(r, Err(PeerError::NotOurs(_)));
    assert!(
        not_ours(asked(client(stranger.path(), peer.port)).await),
        "our server, their credential"
    );
    assert!(
        not_ours(asked(client(cluster.path(), fake.port)).await),
        "their server, our credential"
    );
    let closed = tokio::net::TcpListener::bind((LOCAL, 0)).await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let nothing = asked(client(cluster.path(), closed_port)).await;
    assert!(matches!(nothing, Err(PeerError::Http(_))), "{nothing:?}");
    // A keyholder's answer over the bound is refused, not read whole.
    let big = poc_routing_peer::json::<serde_json::Value>(
        client(cluster.path(), peer.port).get(LOCAL, "/who"),
        4,
    )
    .await;
    assert!(matches!(big, Err(PeerError::TooLarge(4))), "{big:?}");
}

#[tokio::test]
async fn a_rotation_keeps_every_pair_of_instances_talking() {
    let dir = tempfile::tempdir().unwrap();
    credential::create(dir.path()).unwrap();
    let first = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("ca.pem"), first.path().join("ca.pem")).unwrap();
    // Two instances that reload at different moments: each step is checked with one of them
    // reloaded and the other not yet, both ways.
    let a = serve(dir.path()).await;
    let b = serve(dir.path()).await;
    let talk = |from: &Peer, to: &Peer| PeerClient::new(from.credentials.clone(), to.port);
    type Step = fn(&Path) -> Result<credential::Fingerprints, credential::CredentialError>;
    let steps: [(&str, Step); 3] = [
        ("rotate", credential::rotate),
        ("promote", credential::promote),
        ("retire", credential::retire),
    ];
    for (name, step) in steps {
        step(dir.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(a.credentials.reload().unwrap(), "{name}: a sees the change");
        assert!(
            who(&talk(&a, &b)).await.is_ok(),
            "{name}: a (new) to b (old)"
        );
        assert!(
            who(&talk(&b, &a)).await.is_ok(),
            "{name}: b (old) to a (new)"
        );
        b.credentials.reload().unwrap();
        assert!(who(&talk(&a, &b)).await.is_ok(), "{name}: both new");
    }
    // After the rotation, the first authority is refused.
    assert!(who(&client(first.path(), a.port)).await.is_err());
}
