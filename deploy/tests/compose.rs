//! `docker-compose.yaml` publishes Envoy's ports as `envoy.yaml` means them: the public
//! listener on every interface, the probe and operator listeners on the host's loopback only,
//! and nothing that reaches the admin interface.

use poc_routing_deploy::{envoy_config, read};
use serde_yaml::Value;

/// The container port `envoy.yaml` gives listener `name`.
fn listener_port(name: &str) -> u64 {
    envoy_config()["static_resources"]["listeners"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .and_then(|l| l["address"]["socket_address"]["port_value"].as_u64())
        .unwrap_or_else(|| panic!("envoy.yaml has no listener {name}"))
}

#[test]
fn envoy_publishes_its_listeners_and_never_its_admin_interface() {
    let compose: Value = serde_yaml::from_str(&read("docker-compose.yaml")).unwrap();
    let ports: Vec<&str> = compose["services"]["envoy"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let admin = &envoy_config()["admin"]["address"]["socket_address"];
    assert_eq!(
        admin["address"], "127.0.0.1",
        "admin on the container's loopback only"
    );
    let admin_port = admin["port_value"].as_u64().unwrap();
    let public = listener_port("ingress");
    let (probe, operator) = (listener_port("probe"), listener_port("operator"));
    assert_eq!(
        ports,
        [
            format!("{public}:{public}"),
            // The original design's `curl localhost:9901/ready` reaches the probe listener.
            format!("127.0.0.1:{admin_port}:{probe}"),
            format!("127.0.0.1:{operator}:{operator}"),
        ]
    );
    let health = compose["services"]["envoy"]["healthcheck"]["test"][3]
        .as_str()
        .unwrap();
    assert!(
        health.contains(&format!("/dev/tcp/127.0.0.1/{probe}")) && health.contains("GET /ready"),
        "Compose's health check asks the probe listener: {health}"
    );
}

/// `docker-compose.app.yaml` (app mode) adds to the server service only: the application and
/// its state API on the container's loopback, and an entrypoint that starts the example room
/// service there before the server takes its place (so the server gets the SIGTERM). It
/// publishes nothing.
#[test]
fn the_app_file_runs_the_room_service_beside_each_server_on_loopback() {
    let app: Value = serde_yaml::from_str(&read("docker-compose.app.yaml")).unwrap();
    let services = app["services"].as_mapping().unwrap();
    assert_eq!(services.len(), 1, "only the server service changes");
    let server = &app["services"]["server"];
    let env = &server["environment"];
    assert_eq!(env["APP_URL"], "http://127.0.0.1:3000");
    assert_eq!(env["APP_STATE_ADDR"], "127.0.0.1:8090");
    let entrypoint: Vec<&str> = server["entrypoint"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let script = entrypoint.last().unwrap();
    assert!(script.contains("LISTEN=127.0.0.1:3000"), "{script}");
    assert!(
        script.contains("STATE_URL=http://127.0.0.1:8090"),
        "{script}"
    );
    assert!(script.ends_with("& exec poc-server"), "{script}");
    assert!(server["ports"].is_null() && server["expose"].is_null());
}
