//! The Kubernetes manifests (minikube/): rendered by the real kustomize, validated against the
//! Kubernetes schemas, and checked for the invariants that break real clusters.
//!
//! The Kubernetes naming itself (index base 0, headless suffix) runs end to end with the real
//! Envoy in `routing.rs`.

use std::path::Path;
use std::process::Command;

use poc_routing_deploy::{container, documents, env, find, repo_root};
use serde_yaml::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.32.0";

/// The system's kubectl, or the one `make k8s-tools` put in .venv when there is none.
fn kubectl() -> std::path::PathBuf {
    let system = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("kubectl"))
            .find(|p| p.is_file())
    });
    system.unwrap_or_else(|| repo_root().join(".venv/bin/kubectl"))
}

fn kustomize(dir: &Path) -> String {
    let out = Command::new(kubectl())
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl is needed to render minikube/ ({e}): make k8s-tools installs it into .venv")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn port_named(c: &Value, name: &str) -> u64 {
    c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap()
}

fn validator() -> std::path::PathBuf {
    let path = repo_root().join(".venv/bin/kubernetes-validate");
    assert!(
        path.is_file(),
        "{} is missing: run `make k8s-tools` (pip install kubernetes-validate into .venv)",
        path.display()
    );
    path
}

fn validate(file: &Path) -> (bool, String) {
    let out = Command::new(validator())
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let rendered = kustomize(&repo_root().join("minikube"));
    let dir = tempfile_dir("validate");
    let file = dir.join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let (ok, text) = validate(&file);
    assert!(ok, "kubernetes-validate failed:\n{text}");
    assert_eq!(
        text.matches("passed").count(),
        documents(&rendered).len(),
        "{text}"
    );

    // The validator must be able to fail: an unknown field in a container is rejected.
    let broken = rendered.replacen(
        "imagePullPolicy: IfNotPresent",
        "imagePullPolicy: IfNotPresent\n        imagePulPolicy: Never",
        1,
    );
    assert_ne!(broken, rendered);
    std::fs::write(&file, broken).unwrap();
    let (ok, text) = validate(&file);
    assert!(
        !ok,
        "EXPECTED kubernetes-validate to reject an unknown field\nRECEIVED success:\n{text}"
    );
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("kubernetes")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The rendered manifests and the objects most checks look at.
struct Rendered {
    docs: Vec<Value>,
}

impl Rendered {
    fn new() -> Self {
        Self {
            docs: documents(&kustomize(&repo_root().join("minikube"))),
        }
    }
    fn find(&self, kind: &str, name: &str) -> &Value {
        find(&self.docs, kind, name)
    }
    fn statefulset(&self) -> &Value {
        self.find("StatefulSet", "server")
    }
    fn server(&self) -> &Value {
        container(self.statefulset(), "server")
    }
}

const NAMESPACE: &str = "poc-routing";

#[test]
fn every_object_is_in_the_namespace() {
    let docs = Rendered::new().docs;
    let namespace = NAMESPACE;
    for d in &docs {
        if d["kind"] != "Namespace" {
            assert_eq!(
                d["metadata"]["namespace"], namespace,
                "{:?}",
                d["metadata"]["name"]
            );
        }
    }
}

#[test]
fn the_servers_names_and_members_are_the_ones_kubernetes_gives_the_pods() {
    let r = Rendered::new();
    let namespace = NAMESPACE;
    let (sts, server) = (r.statefulset(), r.server());
    let headless = r.find("Service", "server-headless");
    let server_svc = r.find("Service", "server");

    // serviceName matches the headless Service, which really is headless.
    assert_eq!(sts["spec"]["serviceName"], "server-headless");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    // Every pod, ready or not, is named: servers see joining and leaving pods, and a crashed
    // pod keeps its name.
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    // Envoy's servers and owners clusters ask `server`: one address per pod (headless), so
    // that Envoy health-checks each server, not one ClusterIP, and every pod, ready or not, so
    // that a leaving owner still gets the joins routed to it under the previous epoch.
    assert_eq!(server_svc["spec"]["clusterIP"], "None");
    assert_eq!(server_svc["spec"]["publishNotReadyAddresses"], true);

    // The names the server computes are the names Kubernetes gives the pods.
    assert_eq!(
        env(server, "SERVICE_PREFIX"),
        sts["metadata"]["name"].as_str().unwrap()
    );
    assert_eq!(
        env(server, "SERVICE_SUFFIX"),
        format!(
            ".{}.{namespace}.svc.cluster.local",
            headless["metadata"]["name"].as_str().unwrap()
        )
    );
    assert_eq!(env(server, "INDEX_BASE"), "0");
    // Members come from the headless Service's SRV records, named after its port; no count.
    assert_eq!(env(server, "DISCOVERY"), "dns");
    assert_eq!(
        env(server, "DISCOVERY_NAME"),
        format!(
            "_{}._tcp.{}.{namespace}.svc.cluster.local",
            headless["spec"]["ports"][0]["name"].as_str().unwrap(),
            headless["metadata"]["name"].as_str().unwrap()
        )
    );
    assert!(
        server["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "REPLICAS"),
        "REPLICAS in the pod template would restart every pod on a scale change"
    );
    // A leaving server drains for at most 9.5 s before it exits.
    assert!(
        sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .is_some_and(|s| s >= 10),
        "terminationGracePeriodSeconds must leave room for the drain"
    );
}

#[test]
fn ports_agree_across_containers_services_and_envoy_yaml() {
    let r = Rendered::new();
    let namespace = NAMESPACE;
    let (sts, server) = (r.statefulset(), r.server());
    let headless = r.find("Service", "server-headless");
    let server_svc = r.find("Service", "server");
    // Ports agree: container, PORT, both Services, and envoy.yaml's servers cluster.
    let port = port_named(server, "http");
    assert_eq!(env(server, "PORT"), port.to_string());
    for svc in [headless, server_svc] {
        let p = &svc["spec"]["ports"][0];
        assert_eq!(p["port"].as_u64(), Some(port));
        assert_eq!(p["targetPort"], "http");
        assert_eq!(
            svc["spec"]["selector"],
            sts["spec"]["template"]["metadata"]["labels"]
        );
    }
    let envoy_yaml = std::fs::read_to_string(repo_root().join("envoy.yaml")).unwrap();
    let envoy_cfg: Value = serde_yaml::from_str(&envoy_yaml).unwrap();
    let clusters = envoy_cfg["static_resources"]["clusters"]
        .as_sequence()
        .unwrap();
    for name in ["servers", "owners"] {
        let cluster = clusters.iter().find(|c| c["name"] == name).unwrap();
        let endpoint = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["socket_address"];
        assert_eq!(
            endpoint["address"], server_svc["metadata"]["name"],
            "{name}"
        );
        assert_eq!(endpoint["port_value"].as_u64(), Some(port), "{name}");
    }
    // The guard in envoy.yaml admits exactly these instance names.
    assert!(envoy_yaml.contains(&format!(
        "^server-(0|[1-9][0-9]{{0,8}})\\\\.server-headless\\\\.{namespace}\\\\.svc\\\\.cluster\\\\.local:{port}$"
    )));
}

#[test]
fn envoy_runs_the_repositorys_config_and_publishes_only_its_listener() {
    let r = Rendered::new();
    let docs = &r.docs;
    let envoy_yaml = std::fs::read_to_string(repo_root().join("envoy.yaml")).unwrap();
    let envoy_cfg: Value = serde_yaml::from_str(&envoy_yaml).unwrap();
    // The ConfigMap holds exactly the repository's envoy.yaml and routing.lua.
    let cm = find(docs, "ConfigMap", "envoy-config");
    let data = cm["data"].as_mapping().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(cm["data"]["envoy.yaml"].as_str(), Some(envoy_yaml.as_str()));
    let lua = std::fs::read_to_string(repo_root().join("lua/routing.lua")).unwrap();
    assert_eq!(cm["data"]["routing.lua"].as_str(), Some(lua.as_str()));

    // Envoy mounts it where envoy.yaml looks for the script, and publishes only its listener.
    let deploy = find(docs, "Deployment", "envoy");
    let envoy = container(deploy, "envoy");
    assert_eq!(envoy["workingDir"], "/etc/envoy");
    let volume = &deploy["spec"]["template"]["spec"]["volumes"][0];
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);
    let paths: Vec<&str> = volume["configMap"]["items"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["envoy.yaml", "lua/routing.lua"]);
    assert!(envoy_yaml.contains("filename: lua/routing.lua"));
    let port_of = |listener: &str| {
        envoy_cfg["static_resources"]["listeners"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|l| l["name"] == listener)
            .and_then(|l| l["address"]["socket_address"]["port_value"].as_u64())
            .unwrap_or_else(|| panic!("envoy.yaml has no listener {listener}"))
    };
    assert_eq!(port_named(envoy, "http"), port_of("ingress"));
    assert_eq!(port_named(envoy, "probe"), port_of("probe"));
    assert_eq!(port_named(envoy, "operator"), port_of("operator"));
    // The admin interface listens on the pod's loopback only, and no container port names it.
    let admin = &envoy_cfg["admin"]["address"]["socket_address"];
    assert_eq!(
        admin["address"], "127.0.0.1",
        "Envoy's admin interface on loopback only"
    );
    let admin_port = admin["port_value"].as_u64().unwrap();
    assert!(
        envoy["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .all(|p| p["containerPort"].as_u64() != Some(admin_port)),
        "no container port for the admin interface"
    );
    // The probes ask the probe listener, never the admin interface.
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(envoy[probe]["httpGet"]["port"], "probe", "{probe}");
        assert_eq!(envoy[probe]["httpGet"]["path"], "/ready", "{probe}");
    }
    // Only the public listener has a Service.
    let envoy_svc = find(docs, "Service", "envoy");
    assert_eq!(envoy_svc["spec"]["type"], "NodePort");
    for d in docs.iter().filter(|d| d["kind"] == "Service") {
        for p in d["spec"]["ports"].as_sequence().unwrap() {
            for (name, port) in [
                ("admin", admin_port),
                ("probe", port_of("probe")),
                ("operator", port_of("operator")),
            ] {
                assert!(
                    p["port"].as_u64() != Some(port) && p["targetPort"] != name,
                    "a Service exposes Envoy's {name} port"
                );
            }
        }
    }
    assert_eq!(
        envoy_svc["spec"]["ports"][0]["nodePort"].as_u64(),
        Some(30080)
    );
    assert_eq!(deploy["spec"]["replicas"].as_u64(), Some(2));
}

#[test]
fn containers_are_hardened() {
    let r = Rendered::new();
    let (sts, server) = (r.statefulset(), r.server());
    let deploy = r.find("Deployment", "envoy");
    let envoy = container(deploy, "envoy");
    // Hardening.
    for c in [server, envoy] {
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert!(c["resources"]["requests"].is_mapping() && c["resources"]["limits"].is_mapping());
        assert!(c["readinessProbe"].is_mapping() && c["livenessProbe"].is_mapping());
    }
    assert_eq!(server["readinessProbe"]["httpGet"]["path"], "/health");
    for w in [sts, deploy] {
        assert_eq!(
            w["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
            true
        );
    }
}

/// Renders a copy of the layout (minikube/ beside envoy.yaml and lua/) with the server count
/// set to `count` in kustomization.yaml.
fn render_with_count(count: u32) -> Vec<Value> {
    let root = tempfile_dir(&format!("scale-{count}"));
    let src = repo_root();
    std::fs::create_dir_all(root.join("minikube")).unwrap();
    std::fs::create_dir_all(root.join("lua")).unwrap();
    for f in ["envoy.yaml", "lua/routing.lua"] {
        std::fs::copy(src.join(f), root.join(f)).unwrap();
    }
    for entry in std::fs::read_dir(src.join("minikube")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, root.join("minikube").join(path.file_name().unwrap())).unwrap();
    }
    let k = root.join("minikube/kustomization.yaml");
    let text = std::fs::read_to_string(&k).unwrap();
    let scaled = text.replace("  count: 2\n", &format!("  count: {count}\n"));
    assert!(
        count == 2 || text != scaled,
        "kustomization.yaml should set the initial server count in one place"
    );
    std::fs::write(&k, scaled).unwrap();
    documents(&kustomize(&root.join("minikube")))
}

#[test]
fn scaling_changes_only_the_count_so_no_pod_restarts() {
    let two = render_with_count(2);
    let five = render_with_count(5);
    let (sts2, sts5) = (
        find(&two, "StatefulSet", "server"),
        find(&five, "StatefulSet", "server"),
    );
    assert_eq!(sts2["spec"]["replicas"].as_u64(), Some(2));
    assert_eq!(sts5["spec"]["replicas"].as_u64(), Some(5));
    // The pod template is the same, as after `kubectl scale`: no rolling update, no pods that
    // disagree about a count.
    assert_eq!(sts2["spec"]["template"], sts5["spec"]["template"]);
}

/// `minikube-lua/` is `minikube/` with Envoy's ConfigMap built from `envoy-lua.yaml` (the
/// Lua flow) instead of `envoy.yaml`: nothing else differs but the ConfigMap's generated name,
/// which the Envoy Deployment follows.
#[test]
fn the_lua_overlay_changes_only_envoys_config() {
    let base = Rendered::new().docs;
    let lua = documents(&kustomize(&repo_root().join("minikube-lua")));
    let cm = find(&lua, "ConfigMap", "envoy-config");
    let envoy_lua = std::fs::read_to_string(repo_root().join("envoy-lua.yaml")).unwrap();
    assert_eq!(cm["data"]["envoy.yaml"].as_str(), Some(envoy_lua.as_str()));
    let routing = std::fs::read_to_string(repo_root().join("lua/routing.lua")).unwrap();
    assert_eq!(cm["data"]["routing.lua"].as_str(), Some(routing.as_str()));
    let base_cm = find(&base, "ConfigMap", "envoy-config")["metadata"]["name"].clone();
    let lua_cm = cm["metadata"]["name"].clone();
    assert_ne!(base_cm, lua_cm, "a new name, so that Envoy's pods roll");
    assert_eq!(base.len(), lua.len());
    for (b, l) in base.iter().zip(&lua) {
        if b["kind"] == "ConfigMap" {
            continue;
        }
        let renamed = serde_yaml::to_string(b)
            .unwrap()
            .replace(base_cm.as_str().unwrap(), lua_cm.as_str().unwrap());
        assert_eq!(
            serde_yaml::from_str::<Value>(&renamed).unwrap(),
            *l,
            "{} {}",
            b["kind"].as_str().unwrap(),
            b["metadata"]["name"].as_str().unwrap()
        );
    }
}

/// `minikube-app/` (app mode) is `minikube/` with the example room service as a second
/// container of every server pod, hardened like the server, and the server told where it is
/// (`APP_URL`) and where its state API listens (`APP_STATE_ADDR`, the pod's loopback):
/// nothing else differs. `minikube-lua-app/` is that in the Lua flow.
#[test]
fn the_app_overlay_adds_the_room_service_beside_each_server() {
    let base = Rendered::new().docs;
    let app = documents(&kustomize(&repo_root().join("minikube-app")));
    assert_eq!(base.len(), app.len());
    let sts = find(&app, "StatefulSet", "server");
    let server = container(sts, "server");
    assert_eq!(env(server, "APP_URL"), "http://127.0.0.1:3000");
    assert_eq!(env(server, "APP_STATE_ADDR"), "127.0.0.1:8090");
    let rooms = container(sts, "rooms");
    assert_eq!(rooms["command"][0], "poc-rooms");
    assert_eq!(
        rooms["image"], server["image"],
        "the server image holds poc-rooms"
    );
    assert_eq!(env(rooms, "LISTEN"), "127.0.0.1:3000");
    assert_eq!(env(rooms, "STATE_URL"), "http://127.0.0.1:8090");
    assert!(
        rooms["ports"].is_null(),
        "the application publishes no port: only the pod reaches it"
    );
    assert_eq!(rooms["securityContext"], server["securityContext"]);
    assert!(rooms["resources"]["limits"].is_mapping() && rooms["readinessProbe"].is_mapping());
    // Without the two variables and the second container, it is minikube/ as it is.
    let mut stripped = sts.clone();
    let containers = stripped["spec"]["template"]["spec"]["containers"]
        .as_sequence_mut()
        .unwrap();
    containers.retain(|c| c["name"] != "rooms");
    containers[0]["env"]
        .as_sequence_mut()
        .unwrap()
        .retain(|e| !e["name"].as_str().unwrap().starts_with("APP_"));
    assert_eq!(&stripped, find(&base, "StatefulSet", "server"));
    for (b, a) in base.iter().zip(&app) {
        if b["kind"] != "StatefulSet" {
            assert_eq!(b, a);
        }
    }
    // The Lua flow's app overlay: the same, with the Lua flow's ConfigMap.
    let lua_app = documents(&kustomize(&repo_root().join("minikube-lua-app")));
    let lua = documents(&kustomize(&repo_root().join("minikube-lua")));
    assert_eq!(find(&lua_app, "StatefulSet", "server"), sts);
    assert_eq!(
        find(&lua_app, "ConfigMap", "envoy-config"),
        find(&lua, "ConfigMap", "envoy-config")
    );
    // And it validates against the schemas.
    let dir = tempfile_dir("validate-app");
    let file = dir.join("rendered.yaml");
    std::fs::write(&file, kustomize(&repo_root().join("minikube-app"))).unwrap();
    let (ok, text) = validate(&file);
    assert!(ok, "kubernetes-validate failed:\n{text}");
}
