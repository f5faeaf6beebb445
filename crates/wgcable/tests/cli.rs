//! The binary's command line: usage mistakes exit with code 2 and a message naming the flag
//! (and the environment variable a value came from), before anything on the host is touched;
//! `gateway --check-config` shows what a valid configuration resolves to without running. None
//! of these runs needs root or a network.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

/// Every variable the binary reads; none may leak in from the environment running the tests.
const VARIABLES: &[&str] = &[
    "SUBMARINER_CLUSTERID",
    "SUBMARINER_CLUSTERCIDR",
    "SUBMARINER_SERVICECIDR",
    "SUBMARINER_NAMESPACE",
    "SUBMARINER_NATENABLED",
    "SUBMARINER_PUBLICIP",
    "SUBMARINER_HEALTHCHECKENABLED",
    "SUBMARINER_HEALTHCHECKINTERVAL",
    "SUBMARINER_HEALTHCHECKMAXPACKETLOSSCOUNT",
    "SUBMARINER_METRICSPORT",
    "CE_IPSEC_NATTPORT",
    "CE_IPSEC_PSK",
    "CE_IPSEC_PSKSECRET",
    "NODE_NAME",
    "POD_NAME",
    "WGCABLE_LOG",
    "WGCABLE_LOG_FORMAT",
    "RUST_LOG",
];

/// A PSK for the runs that are not about the PSK.
const TEST_PSK: &str = "cli-test-psk-not-a-real-secret";

/// Runs wgcable with `args` and exactly the variables in `env` (plus a test PSK unless `env`
/// sets `CE_IPSEC_PSK` itself; `("CE_IPSEC_PSK", "")` in `env` means none).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgcable"));
    cmd.args(args);
    for var in VARIABLES {
        cmd.env_remove(var);
    }
    if !env.iter().any(|(k, _)| *k == "CE_IPSEC_PSK") {
        cmd.env("CE_IPSEC_PSK", TEST_PSK);
    }
    for (k, v) in env {
        if !v.is_empty() || *k != "CE_IPSEC_PSK" {
            cmd.env(k, v);
        }
    }
    cmd.output().expect("run wgcable")
}

fn wgcable(args: &[&str]) -> Output {
    run(args, &[])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
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

/// [`BASE`] plus `extra`, only checked (`--check-config`): the broker directory, which does not
/// exist, is accepted for creation and nothing is created.
fn checked<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = with(extra);
    args.extend(["--broker-dir-create", "--check-config"]);
    args
}

/// Asserts exit code 2, `fragments` in stderr, and that nothing was created.
fn assert_usage_error(out: &Output, what: &str, fragments: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    for fragment in fragments {
        assert!(
            err.contains(fragment),
            "{what}: expected {fragment:?} in {err}"
        );
    }
    assert!(!Path::new("/nonexistent").exists(), "{what} created files");
}

/// `key: value` lines of `--check-config`.
fn summary(out: &Output) -> std::collections::BTreeMap<String, String> {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    stdout(out)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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
        (&["frobnicate"], "frobnicate"),
        (&with(&["--nat", "maybe"]), "--nat"),
        (
            &with(&["--public-ip", "api:ip4.seeip.org"]),
            "api: resolver is not supported",
        ),
        (&with(&["--namespace", "Not_A_Namespace"]), "--namespace"),
    ];
    for (args, fragment) in cases {
        assert_usage_error(&wgcable(args), &format!("{args:?}"), &[fragment]);
    }
}

#[test]
fn a_default_route_as_subnet_is_refused() {
    let mut args = BASE.to_vec();
    args[4] = "0.0.0.0/0";
    assert_usage_error(&wgcable(&args), "0.0.0.0/0", &["default route"]);
}

#[test]
fn bad_cluster_id_is_a_usage_error() {
    let mut args = BASE.to_vec();
    args[2] = "Not_A_Label";
    assert_usage_error(&wgcable(&args), "Not_A_Label", &["DNS label"]);
}

#[test]
fn help_lists_submariner_variables_and_which_psk_wins() {
    let out = wgcable(&["gateway", "--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for var in [
        "SUBMARINER_CLUSTERID",
        "SUBMARINER_CLUSTERCIDR",
        "SUBMARINER_SERVICECIDR",
        "SUBMARINER_NAMESPACE",
        "SUBMARINER_NATENABLED",
        "SUBMARINER_PUBLICIP",
        "SUBMARINER_HEALTHCHECKENABLED",
        "NODE_NAME",
        "POD_NAME",
        "CE_IPSEC_NATTPORT",
        "CE_IPSEC_PSK",
        "CE_IPSEC_PSKSECRET",
        "SUBMARINER_METRICSPORT",
    ] {
        assert!(help.contains(var), "{var} missing from help");
    }
    assert!(
        help.contains("Wins over CE_IPSEC_PSKSECRET and --psk"),
        "{help}"
    );
    assert!(help.contains("Wins over --psk"), "{help}");
}

#[test]
fn the_psk_from_the_environment_is_never_echoed() {
    let secret = "s3cret-psk-value";
    for args in [
        &["gateway", "--help"][..],
        &checked(&["--port", "0"]),
        &checked(&[]),
    ] {
        let out = run(args, &[("CE_IPSEC_PSK", secret)]);
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!all.contains(secret), "{all}");
    }
}

#[test]
fn an_invalid_value_from_the_environment_names_the_variable() {
    for (var, value, flag) in [
        ("CE_IPSEC_NATTPORT", "abc", "--port"),
        ("SUBMARINER_HEALTHCHECKENABLED", "yes", "--health-check"),
        ("SUBMARINER_NATENABLED", "on", "--nat"),
        ("SUBMARINER_CLUSTERCIDR", "10.42.0.0/33", "--cluster-cidr"),
        (
            "SUBMARINER_HEALTHCHECKINTERVAL",
            "soon",
            "--health-check-interval",
        ),
        ("SUBMARINER_METRICSPORT", "-1", "--metrics-port"),
        ("WGCABLE_LOG_FORMAT", "xml", "--log-format"),
    ] {
        let out = run(BASE, &[(var, value)]);
        assert_usage_error(
            &out,
            var,
            &[
                &format!("invalid value '{value}' in environment variable {var}"),
                &format!("(read for {flag})"),
            ],
        );
    }
    // The flag given on the command line wins, and the variable is not looked at.
    let out = run(
        &checked(&["--port", "4501"]),
        &[("CE_IPSEC_NATTPORT", "abc")],
    );
    assert_eq!(summary(&out)["port"], "4501");
    // An empty variable is unset, as Submariner's operator leaves some of them.
    let out = run(
        &checked(&[]),
        &[
            ("CE_IPSEC_NATTPORT", ""),
            ("SUBMARINER_PUBLICIP", ""),
            ("CE_IPSEC_PSKSECRET", ""),
        ],
    );
    assert_eq!(summary(&out)["port"], "4500");
}

#[test]
fn booleans_take_gos_spellings_from_flags_and_the_environment() {
    for (value, on) in [
        ("1", true),
        ("t", true),
        ("T", true),
        ("TRUE", true),
        ("true", true),
        ("True", true),
        ("0", false),
        ("f", false),
        ("F", false),
        ("FALSE", false),
        ("false", false),
        ("False", false),
    ] {
        let out = run(&checked(&[]), &[("SUBMARINER_HEALTHCHECKENABLED", value)]);
        assert_eq!(summary(&out)["health-check"] != "off", on, "{value}");
        let flag = format!("--health-check={value}");
        let out = wgcable(&checked(&[&flag]));
        assert_eq!(summary(&out)["health-check"] != "off", on, "{flag}");
        let out = run(
            &checked(&["--public-ip", "203.0.113.7"]),
            &[("SUBMARINER_NATENABLED", value)],
        );
        assert_eq!(summary(&out)["nat"], on.to_string(), "NAT {value}");
    }
    // A bare switch is true; a separate value works too.
    let out = wgcable(&checked(&["--public-ip", "203.0.113.7", "--nat"]));
    assert_eq!(summary(&out)["nat"], "true");
    let out = wgcable(&checked(&["--health-check", "F"]));
    assert_eq!(summary(&out)["health-check"], "off");
}

#[test]
fn every_duration_flag_takes_bare_seconds() {
    let out = wgcable(&checked(&[
        "--status-interval",
        "1",
        "--resync-interval",
        "2",
        "--rescan-interval",
        "3",
        "--health-check-interval",
        "4",
    ]));
    let s = summary(&out);
    assert_eq!(s["status-interval"], "1s");
    assert_eq!(s["resync-interval"], "2s");
    assert!(
        s["broker"].ends_with("(rescan every 3s)"),
        "{}",
        s["broker"]
    );
    assert_eq!(s["health-check"], "every 4s, error after 5 lost");
}

#[test]
fn a_submariner_pod_environment_is_enough() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = tmp.path().join("broker");
    std::fs::create_dir(&broker).expect("mkdir");
    let broker = broker.to_string_lossy().into_owned();
    let out = run(
        &[
            "gateway",
            "--private-ip",
            "192.0.2.10",
            "--broker-dir",
            &broker,
            "--state-dir",
            "/nonexistent/state",
            "--check-config",
        ],
        &[
            ("SUBMARINER_CLUSTERID", "east"),
            ("SUBMARINER_CLUSTERCIDR", "10.42.0.0/16,fd00:42::/56"),
            ("SUBMARINER_SERVICECIDR", "10.43.0.0/16,fd00:43::/112"),
            ("SUBMARINER_NAMESPACE", "submariner-operator"),
            ("SUBMARINER_NATENABLED", "true"),
            ("SUBMARINER_PUBLICIP", "ipv4:203.0.113.7"),
            ("SUBMARINER_HEALTHCHECKENABLED", "True"),
            ("SUBMARINER_HEALTHCHECKINTERVAL", "2"),
            ("SUBMARINER_METRICSPORT", "32781"),
            ("NODE_NAME", "worker-1"),
            ("POD_NAME", "submariner-gateway-x7k2p"),
            ("CE_IPSEC_NATTPORT", "4501"),
        ],
    );
    let s = summary(&out);
    // Upstream's order: service CIDRs, then cluster CIDRs.
    assert_eq!(
        s["subnets"],
        "10.43.0.0/16,fd00:43::/112,10.42.0.0/16,fd00:42::/56"
    );
    assert_eq!(s["cluster-id"], "east");
    assert_eq!(s["namespace"], "submariner-operator");
    assert_eq!(s["hostname"], "worker-1");
    assert_eq!(s["pod-name"], "submariner-gateway-x7k2p");
    assert_eq!(s["public-ip"], "203.0.113.7");
    assert_eq!(s["nat"], "true");
    assert_eq!(s["port"], "4501");
    assert_eq!(s["metrics-addr"], "0.0.0.0:32781");
    assert_eq!(s["health-check"], "every 2s, error after 5 lost");
    // --subnets, when given, wins over the environment.
    let out = run(&checked(&[]), &[("SUBMARINER_CLUSTERCIDR", "10.99.0.0/16")]);
    assert_eq!(summary(&out)["subnets"], "10.42.0.0/16");
}

#[test]
fn without_subnets_anywhere_the_error_names_the_variables() {
    let out = wgcable(&[
        "gateway",
        "--cluster-id",
        "east",
        "--private-ip",
        "192.0.2.10",
        "--broker-dir",
        "/nonexistent/broker",
    ]);
    assert_usage_error(
        &out,
        "no subnets",
        &[
            "--subnets",
            "SUBMARINER_CLUSTERCIDR",
            "SUBMARINER_SERVICECIDR",
        ],
    );
}

#[test]
fn nat_without_a_public_ip_and_overlapping_subnets_are_refused() {
    assert_usage_error(
        &wgcable(&with(&["--nat"])),
        "--nat",
        &["--nat (SUBMARINER_NATENABLED) needs --public-ip"],
    );
    assert_usage_error(
        &run(BASE, &[("SUBMARINER_NATENABLED", "1")]),
        "SUBMARINER_NATENABLED",
        &["needs --public-ip (SUBMARINER_PUBLICIP)"],
    );
    let mut args = BASE.to_vec();
    args[4] = "10.42.0.0/16,10.42.128.0/17";
    assert_usage_error(
        &wgcable(&args),
        "overlap",
        &["local subnets 10.42.0.0/16 and 10.42.128.0/17 overlap"],
    );
    let out = run(
        &[
            "gateway",
            "--cluster-id",
            "east",
            "--private-ip",
            "192.0.2.10",
            "--broker-dir",
            "/nonexistent/broker",
        ],
        &[
            ("SUBMARINER_CLUSTERCIDR", "10.42.0.0/16"),
            ("SUBMARINER_SERVICECIDR", "10.42.0.0/24"),
        ],
    );
    assert_usage_error(&out, "overlap from env", &["overlap"]);
}

#[test]
fn a_weak_or_missing_psk_is_refused_with_how_to_set_one() {
    for (psk, fragment) in [
        ("", "no pre-shared key is set"),
        ("default psk", "well-known default"),
    ] {
        let out = run(BASE, &[("CE_IPSEC_PSK", psk)]);
        assert_usage_error(
            &out,
            psk,
            &[
                fragment,
                "CE_IPSEC_PSKSECRET",
                "--psk-file",
                "--insecure-default-psk",
            ],
        );
    }
    assert_usage_error(
        &wgcable(&with(&["--psk", ""])),
        "--psk ''",
        &["is empty", "CE_IPSEC_PSK (--psk)"],
    );
    // Accepted when asked for, for demos.
    for psk in ["", "default psk"] {
        let out = run(
            &checked(&["--insecure-default-psk"]),
            &[("CE_IPSEC_PSK", psk)],
        );
        assert_eq!(summary(&out)["cluster-id"], "east");
    }
}

#[test]
fn the_psk_comes_from_a_file_or_a_mounted_secret_and_the_file_wins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("psk.txt");
    std::fs::write(&file, "from-a-file\n").expect("write");
    let secret = tmp.path().join("ipsec-psk");
    std::fs::create_dir(&secret).expect("mkdir");
    std::fs::write(secret.join("psk"), "from-a-secret").expect("write");
    let (file, secret) = (
        file.to_string_lossy().into_owned(),
        secret.to_string_lossy().into_owned(),
    );

    let out = run(
        &checked(&["--psk-file", &file]),
        &[("CE_IPSEC_PSKSECRET", &secret), ("CE_IPSEC_PSK", "literal")],
    );
    assert_eq!(summary(&out)["psk"], format!("from --psk-file {file}"));
    let out = run(
        &checked(&[]),
        &[("CE_IPSEC_PSKSECRET", &secret), ("CE_IPSEC_PSK", "literal")],
    );
    assert!(summary(&out)["psk"].contains("CE_IPSEC_PSKSECRET"));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        !all.contains("from-a-secret") && !all.contains("literal\n"),
        "{all}"
    );

    // A missing file, or a weak passphrase in it, is a usage error naming the source.
    let missing = tmp.path().join("nowhere");
    let missing = missing.to_string_lossy();
    assert_usage_error(
        &wgcable(&with(&["--psk-file", &missing])),
        "missing file",
        &["--psk-file", "nowhere"],
    );
    std::fs::write(tmp.path().join("weak"), "default psk\n").expect("write");
    let weak = tmp.path().join("weak");
    assert_usage_error(
        &wgcable(&with(&["--psk-file", &weak.to_string_lossy()])),
        "weak file",
        &["--psk-file", "well-known default"],
    );
    // A bare Secret name is looked for where Submariner's operator mounts it.
    assert_usage_error(
        &run(BASE, &[("CE_IPSEC_PSKSECRET", "no-such-secret-here")]),
        "secret name",
        &["/var/run/secrets/submariner.io/no-such-secret-here"],
    );
}

#[test]
fn paths_are_checked_before_anything_starts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let file = file.to_string_lossy().into_owned();
    let broker = tmp.path().join("broker");
    std::fs::create_dir(&broker).expect("mkdir");
    let broker = broker.to_string_lossy().into_owned();

    // --state-dir that is a file: the flag and the key file are named.
    let args = [
        "gateway",
        "--cluster-id",
        "east",
        "--subnets",
        "10.42.0.0/16",
        "--private-ip",
        "192.0.2.10",
        "--broker-dir",
        &broker,
        "--state-dir",
        &file,
    ];
    assert_usage_error(
        &wgcable(&args),
        "state dir is a file",
        &[
            &format!("--state-dir {file}"),
            &format!("{file}/private.key"),
        ],
    );
    // A refused key file in the state directory is found now, not after the device exists.
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::write(state.join("private.key"), "not a key\n").expect("write");
    let state = state.to_string_lossy().into_owned();
    let mut args = args;
    args[10] = &state;
    assert_usage_error(
        &wgcable(&args),
        "bad key",
        &[&format!("--state-dir {state}"), "private.key"],
    );

    // --broker-dir that does not exist, or is a file.
    assert_usage_error(
        &wgcable(BASE),
        "missing broker dir",
        &[
            "--broker-dir /nonexistent/broker does not exist",
            "--broker-dir-create",
        ],
    );
    let mut args = BASE.to_vec();
    args[8] = &file;
    assert_usage_error(
        &wgcable(&args),
        "broker dir is a file",
        &["is a file, not a directory"],
    );
    // With --broker-dir-create it is accepted (and created only when the gateway starts).
    let new_broker = tmp.path().join("new-broker");
    let new_broker = new_broker.to_string_lossy().into_owned();
    let mut args = BASE.to_vec();
    args[8] = &new_broker;
    args.extend(["--broker-dir-create", "--check-config"]);
    let out = wgcable(&args);
    assert!(
        summary(&out)["broker"].starts_with(&format!("file {new_broker}, to be created")),
        "{}",
        summary(&out)["broker"]
    );
    assert!(
        !Path::new(&new_broker).exists(),
        "--check-config changes nothing"
    );
}

#[test]
fn version_names_the_git_commit() {
    let out = wgcable(&["--version"]);
    assert!(out.status.success());
    let version = stdout(&out);
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    assert_eq!(
        version.trim(),
        format!("wgcable {} (git {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn logs_can_be_json_follow_rust_log_and_show_targets_at_vv() {
    let args = checked(&[]);
    let out = run(&args, &[("WGCABLE_LOG_FORMAT", "json")]);
    let line = stderr(&out);
    let event: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
    assert_eq!(event["level"], "INFO", "{line}");
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("configuration is valid")),
        "{line}"
    );
    assert_eq!(event["target"], "wgcable", "{line}");
    let mut json_flag = args.clone();
    json_flag.extend(["--log-format", "json"]);
    assert!(stderr(&wgcable(&json_flag)).trim_start().starts_with('{'));

    // RUST_LOG is honoured; WGCABLE_LOG wins over it.
    assert_eq!(stderr(&run(&args, &[("RUST_LOG", "warn")])), "");
    assert!(stderr(&run(
        &args,
        &[("RUST_LOG", "warn"), ("WGCABLE_LOG", "info")]
    ))
    .contains("configuration is valid"));
    // A filter that does not parse is said, not silently dropped.
    assert!(stderr(&run(&args, &[("RUST_LOG", "wgcable=loud")])).contains("ignoring RUST_LOG"));

    // The target appears at -vv only.
    let plain = stderr(&wgcable(&args));
    assert!(!plain.contains("wgcable:"), "{plain}");
    let mut vv = args.clone();
    vv.push("-vv");
    assert!(
        stderr(&wgcable(&vv)).contains(" wgcable: "),
        "-vv shows targets"
    );
}

#[test]
fn show_endpoint_without_a_gateway_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path().to_string_lossy().into_owned();
    let out = wgcable(&["show", "endpoint", "--state-dir", &dir]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("endpoint.yaml") && err.contains(&dir), "{err}");
}

#[test]
fn show_connections_without_a_gateway_says_so() {
    // Port 9 (discard) on loopback: nothing listens there in the test environment. host:port,
    // a URL, and the default port from SUBMARINER_METRICSPORT all reach it.
    for (args, env) in [
        (
            &["show", "connections", "--url", "http://127.0.0.1:9"][..],
            &[][..],
        ),
        (&["show", "connections", "--url", "127.0.0.1:9"], &[]),
        (&["show", "connections"], &[("SUBMARINER_METRICSPORT", "9")]),
    ] {
        let out = run(args, env);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("127.0.0.1:9"), "{err}");
        assert!(err.contains("is `wgcable gateway` running there?"), "{err}");
    }
    let out = wgcable(&["show", "connections", "--url", "https://127.0.0.1:9"]);
    assert!(
        stderr(&out).contains("only http:// is served"),
        "{}",
        stderr(&out)
    );
}

/// Serves `/connections` and `/metrics` like a gateway, for `requests` requests.
fn fake_gateway(requests: usize) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::thread::spawn(move || {
        for _ in 0..requests {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            reader.read_line(&mut request_line).expect("read");
            let mut line = String::new();
            while reader.read_line(&mut line).expect("read") > 2 {
                line.clear();
            }
            // `show connections` asks for /connections only: the traffic figures come with
            // each connection, not from scraping /metrics.
            assert!(request_line.contains("/connections"), "{request_line}");
            let body = r#"[{"status":"connected","statusMessage":"","usingIP":"192.168.77.12","usingNAT":false,
                    "endpoint":{"cluster_id":"cluster-b","cable_name":"c","hostname":"gw-b",
                    "subnets":["10.202.0.0/16"],"private_ip":"192.168.77.12","public_ip":"",
                    "nat_enabled":false,"backend":"wireguard"},
                    "latencyRTT":{"last":"1ms","min":"1ms","average":"501.202608ms","max":"1s","stdDev":"1ms"},
                    "rxBytes":2048,"txBytes":1024,"lastHandshakeSeconds":3.2}]"#;
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .expect("write");
            let _ = stream.read(&mut [0; 1]);
        }
    });
    (port, handle)
}

#[test]
fn show_connections_prints_subctls_columns_at_host_port() {
    let (port, server) = fake_gateway(1);
    let url = format!("127.0.0.1:{port}");
    let out = wgcable(&["show", "connections", "--url", &url]);
    server.join().expect("server");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    assert!(
        header.starts_with("GATEWAY   CLUSTER     REMOTE IP       NAT   CABLE DRIVER   SUBNETS         STATUS      RTT avg.   LAST HANDSHAKE   RX/TX"),
        "{table}"
    );
    let row = lines.next().expect("row");
    for cell in [
        "gw-b",
        "cluster-b",
        "192.168.77.12",
        "no",
        "wireguard",
        "10.202.0.0/16",
        "connected",
        "501ms",
        "2.0KiB/1.0KiB",
    ] {
        assert!(row.contains(cell), "{cell} missing: {table}");
    }
    assert!(!table.contains("501.202608ms"), "{table}");
}

#[test]
fn the_file_broker_needs_its_directory() {
    let out = wgcable(&[
        "gateway",
        "--cluster-id",
        "east",
        "--subnets",
        "10.42.0.0/16",
        "--private-ip",
        "192.0.2.10",
        "--psk",
        "a real secret for the test",
        "--state-dir",
        "/nonexistent/state",
    ]);
    assert_usage_error(
        &out,
        "no --broker-dir",
        &["--broker file needs --broker-dir"],
    );
}

/// A private key as `wg genkey` writes it, mode 0600, in a fresh state directory.
fn state_with_key(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let key = state.join("private.key");
    std::fs::write(&key, "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHg=\n").expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("mode");
    state
}

#[test]
fn leave_withdraws_the_local_endpoint_and_nothing_else() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = state_with_key(tmp.path());
    let broker = tmp.path().join("broker");
    std::fs::create_dir_all(&broker).expect("broker");
    std::fs::write(broker.join("east.yaml"), "ours").expect("own");
    std::fs::write(broker.join("west.yaml"), "theirs").expect("other");
    let args = [
        "leave",
        "--cluster-id",
        "east",
        "--subnets",
        "10.42.0.0/16",
        "--private-ip",
        "192.0.2.10",
        "--psk",
        "a real secret for the test",
        "--broker-dir",
        broker.to_str().expect("utf-8"),
        "--state-dir",
        state.to_str().expect("utf-8"),
    ];
    let out = wgcable(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("withdrew the Endpoint of cluster east"),
        "{}",
        stderr(&out)
    );
    assert!(!broker.join("east.yaml").exists(), "our Endpoint is gone");
    assert!(broker.join("west.yaml").exists(), "another cluster's stays");
}

#[test]
fn admission_forget_edits_only_a_stopped_gateways_registry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = state_with_key(tmp.path());
    let state = state.to_str().expect("utf-8");
    let out = wgcable(&[
        "admission",
        "forget",
        "west",
        "--cluster-id",
        "east",
        "--state-dir",
        state,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not in the admission registry"),
        "{}",
        stderr(&out)
    );
    // While a gateway holds the state directory, it refuses and says why.
    let lock = std::fs::File::create(Path::new(state).join("gateway.lock")).expect("lock file");
    let held = nix_flock(&lock);
    let out = wgcable(&[
        "admission",
        "forget",
        "west",
        "--cluster-id",
        "east",
        "--state-dir",
        state,
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("stop the gateway first"),
        "{}",
        stderr(&out)
    );
    drop(held);
}

/// Holds an exclusive flock on `file` as a running gateway does (released on drop).
fn nix_flock(file: &std::fs::File) -> nix::fcntl::Flock<std::fs::File> {
    let file = file.try_clone().expect("clone");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("lock")
}

#[test]
fn show_conflicts_prints_what_is_refused_and_who_holds_what() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut request_line = String::new();
        reader.read_line(&mut request_line).expect("read");
        assert!(request_line.contains("/conflicts"), "{request_line}");
        let mut line = String::new();
        while reader.read_line(&mut line).expect("read") > 2 {
            line.clear();
        }
        let body = r#"{"refused":[{"key":"0-a.yaml","cluster":null,"reason":"bad_name","message":"0-a.yaml: the file name is not <cluster-id>.yaml","waiting":false,"conflicts_with":null,"holds":null,"since":1},
                      {"key":"zz.yaml","cluster":"zz","reason":"subnet_conflict","message":"zz.yaml: subnet 10.1.0.0/16 overlaps b's","waiting":true,"conflicts_with":"b","holds":null,"since":2}],
                      "clusters":[{"cluster_id":"b","key":"b.yaml","seniority":0,"admitted":true,"admitted_at":1}]}"#;
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
    });
    let url = format!("127.0.0.1:{port}");
    let out = wgcable(&["show", "conflicts", "--url", &url]);
    server.join().expect("server");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("zz.yaml  cluster zz  waiting: subnet_conflict (held by b)"),
        "{text}"
    );
    assert!(
        text.contains("0-a.yaml  cluster -  refused: bad_name"),
        "{text}"
    );
    assert!(text.contains("b  from b.yaml  seniority 0"), "{text}");
}

#[test]
fn a_key_from_a_secret_volume_is_read_where_it_is_mounted() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let tmp = tempfile::tempdir().expect("tempdir");
    // A Kubernetes Secret volume: private.key -> ..data/private.key, ..data -> ..2026_01_01.
    let secret = tmp.path().join("secret");
    let version = secret.join("..2026_01_01");
    std::fs::create_dir_all(&version).expect("volume");
    let key = version.join("private.key");
    std::fs::write(&key, "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHg=\n").expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).expect("mode");
    symlink("..2026_01_01", secret.join("..data")).expect("..data");
    symlink("..data/private.key", secret.join("private.key")).expect("private.key");
    let secret = secret.to_str().expect("utf-8").to_owned();
    let out = wgcable(&checked(&["--private-key-dir", &secret]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // An empty directory: the key must be there.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("empty");
    let out = wgcable(&checked(&[
        "--private-key-dir",
        empty.to_str().expect("utf-8"),
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no private.key in it"),
        "{}",
        stderr(&out)
    );
}
