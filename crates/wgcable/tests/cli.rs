//! The binary's command line: usage mistakes exit with code 2 and a message naming the flag,
//! before anything on the host is touched (none of these runs needs root or a network).

use std::process::{Command, Output};

fn wgcable(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgcable"))
        .args(args)
        // Submariner's variables must not leak in from the environment running the tests.
        .env_remove("SUBMARINER_CLUSTERID")
        .env_remove("CE_IPSEC_NATTPORT")
        .env_remove("CE_IPSEC_PSK")
        .env_remove("SUBMARINER_METRICSPORT")
        .output()
        .expect("run wgcable")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const BASE: &[&str] = &[
    "gateway",
    "--cluster-id",
    "east",
    "--subnets",
    "10.42.0.0/16",
    "--private-ip",
    "192.0.2.10",
    "--broker-dir",
    "/nonexistent/broker",
    "--state-dir",
    "/nonexistent/state",
];

fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    BASE.iter().chain(extra).copied().collect()
}

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["gateway"], "--cluster-id"),
        (
            &[
                "gateway",
                "--cluster-id",
                "east",
                "--subnets",
                "10.42.0.0/33",
                "--private-ip",
                "192.0.2.1",
                "--broker-dir",
                "/x",
            ],
            "--subnets",
        ),
        (
            &[
                "gateway",
                "--cluster-id",
                "east",
                "--subnets",
                "10.42.0.0/16",
                "--private-ip",
                "not-an-ip",
                "--broker-dir",
                "/x",
            ],
            "--private-ip",
        ),
        (&with(&["--port", "70000"]), "--port"),
        (&with(&["--backend", "magic"]), "--backend"),
        (&with(&["--status-interval", "soon"]), "--status-interval"),
        (&with(&["--status-interval", "1ms"]), "--status-interval"),
        (
            &with(&["--health-check-ip", "10.99.0.1"]),
            "health-check IP 10.99.0.1 is not inside the local subnets",
        ),
        (&with(&["--table", "254"]), "table 254 is reserved"),
        (
            &with(&["--device", "a-very-long-device-name"]),
            "not a valid interface name",
        ),
        (&with(&["--subnets", "0.0.0.0/0"]), "default route"),
        (&with(&["--psk", ""]), "--psk"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, fragment) in cases {
        let out = wgcable(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(fragment),
            "{args:?}: expected {fragment:?} in {err}"
        );
        // Nothing was created: the state and broker directories do not exist.
        assert!(!std::path::Path::new("/nonexistent").exists());
    }
}

#[test]
fn bad_cluster_id_is_a_usage_error() {
    let mut args = BASE.to_vec();
    args[2] = "Not_A_Label";
    let out = wgcable(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("DNS label"), "{}", stderr(&out));
}

#[test]
fn help_lists_submariner_variables() {
    let out = wgcable(&["gateway", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "SUBMARINER_CLUSTERID",
        "CE_IPSEC_NATTPORT",
        "CE_IPSEC_PSK",
        "SUBMARINER_METRICSPORT",
    ] {
        assert!(help.contains(var), "{var} missing from help");
    }
}

#[test]
fn the_psk_from_the_environment_is_never_echoed() {
    let out = Command::new(env!("CARGO_BIN_EXE_wgcable"))
        .args(["gateway", "--help"])
        .env("CE_IPSEC_PSK", "s3cret-psk-value")
        .output()
        .expect("run wgcable");
    assert!(out.status.success());
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!all.contains("s3cret-psk-value"), "{all}");
}

#[test]
fn show_endpoint_without_a_gateway_says_where_it_looked() {
    let dir = tempfile_dir();
    let out = wgcable(&["show", "endpoint", "--state-dir", &dir]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("endpoint.yaml") && err.contains(&dir), "{err}");
}

#[test]
fn show_connections_without_a_gateway_says_so() {
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let out = wgcable(&["show", "connections", "--url", "http://127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is `wgcable gateway` running there?"),
        "{}",
        stderr(&out)
    );
    let out = wgcable(&["show", "connections", "--url", "ftp://127.0.0.1:9"]);
    assert!(
        stderr(&out).contains("must start with http://"),
        "{}",
        stderr(&out)
    );
}

fn tempfile_dir() -> String {
    let dir = std::env::temp_dir().join(format!("wgcable-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir.to_string_lossy().into_owned()
}
