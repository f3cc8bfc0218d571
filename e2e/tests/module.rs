//! The routing module as Envoy loads it: the real Envoy 1.40 with `libpoc_routing_envoy_module.so`
//! from this build. It must load with the ABI version Envoy expects, a broken build must stop
//! Envoy with a message, and the library must load in the official Envoy image too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use poc_routing_e2e::*;
use poc_routing_placement::IndexMode;
use poc_routing_stack::envoy::{self, Flow};
use poc_routing_stack::Deployment;

#[tokio::test]
async fn envoy_loads_the_module_and_logs_the_matched_abi_version() {
    let _turn = serial().await;
    let mut c = config("module-load", 2, Deployment::Compose, IndexMode::Hash);
    c.flow = Some(Flow::Module);
    let stack = start(c).await;
    let log = stack.envoy_log();
    for expected in [
        "Dynamic module ABI version v0.2.0 matched",
        "poc-routing: module loaded (ABI v0.2.0)",
        &format!(
            "poc-routing: placement epoch {} with members [1, 2]",
            stack.placement().epoch()
        ),
    ] {
        assert!(
            log.contains(expected),
            "EXPECTED Envoy's log to hold {expected:?}\nRECEIVED\n{log}"
        );
    }
    assert!(
        !log.contains("mismatch") && !log.contains("deprecat"),
        "no ABI mismatch or deprecation warning:\n{log}"
    );
}

/// A library that exports `envoy_dynamic_module_on_program_init` but none of the HTTP filter
/// hooks, as a wrong build would.
const BROKEN_MODULE: &str = r#"
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    b"v0.2.0\0".as_ptr()
}
"#;

#[tokio::test]
async fn a_module_missing_a_hook_stops_envoy_with_a_message() {
    let _turn = serial().await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e/module-broken");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("broken.rs");
    std::fs::write(&source, BROKEN_MODULE).unwrap();
    let built =
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .args([
                "--crate-type",
                "cdylib",
                "--edition",
                "2021",
                "-C",
                "panic=abort",
                "-o",
            ])
            .arg(dir.join(envoy::MODULE_FILE))
            .arg(&source)
            .status()
            .expect("rustc runs");
    assert!(built.success(), "the broken module must build");

    let free = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
    envoy::prepare_run_dir(
        &dir,
        &envoy::Addresses {
            listen: free(0),
            admin: free(1),
            probe: free(2),
            operator: free(3),
            dns: free(4),
            operator_token: dir.join("token"),
        },
        Some(Flow::Module),
        envoy::Overrides::default(),
    )
    .unwrap();
    let mut envoy = envoy::command(&dir)
        .unwrap()
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = envoy.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            envoy.kill().unwrap();
            panic!("EXPECTED Envoy to refuse the broken module and exit\nRECEIVED still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(envoy.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(!status.success(), "Envoy must exit with an error:\n{log}");
    assert!(
        log.contains("Failed to resolve symbol envoy_dynamic_module_on_http_filter_"),
        "EXPECTED a missing hook named in Envoy's log\nRECEIVED\n{log}"
    );
}

#[test]
fn the_module_loads_in_the_official_envoy_image() {
    let module = envoy::module_dir()
        .expect("the routing module is built")
        .join(envoy::MODULE_FILE);
    let out = std::process::Command::new("objdump")
        .arg("-T")
        .arg(&module)
        .output()
        .expect("objdump (binutils) runs: apt-get install binutils");
    assert!(out.status.success(), "objdump -T {}", module.display());
    let needs = envoy::highest_glibc(&String::from_utf8_lossy(&out.stdout))
        .expect("the module links glibc");
    assert!(
        needs <= envoy::ENVOY_IMAGE_GLIBC,
        "{} needs GLIBC_{}.{}\nEXPECTED at most GLIBC_{}.{} (envoyproxy/envoy:v1.40.0 is Ubuntu noble)",
        module.display(),
        needs.0,
        needs.1,
        envoy::ENVOY_IMAGE_GLIBC.0,
        envoy::ENVOY_IMAGE_GLIBC.1
    );
}
