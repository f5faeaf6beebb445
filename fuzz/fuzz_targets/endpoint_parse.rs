//! The bounded Endpoint parser and validation on arbitrary bytes, as YAML and as JSON.
//! Invariants: no panic, no hang (libFuzzer's timeout), and every accepted Endpoint survives
//! validation and the admission policy without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgcable_api::{parse_endpoint, parse_endpoints, AdmissionPolicy, Format, ParseLimits};

fuzz_target!(|data: &[u8]| {
    let limits = ParseLimits::default();
    let policy = AdmissionPolicy {
        local_underlay: vec!["192.168.77.2".parse().expect("ip")],
        local_subnets: vec!["10.1.0.0/16".parse().expect("net")],
        ..AdmissionPolicy::default()
    };
    for format in [Format::Yaml, Format::Json] {
        match parse_endpoints(data, format, &limits) {
            Ok(endpoints) => {
                assert!(endpoints.len() <= limits.max_endpoints);
                for endpoint in endpoints {
                    assert!(endpoint.spec.subnets.len() <= limits.max_subnets);
                    if let Ok(valid) = endpoint.spec.validate() {
                        let _ = policy.check_remote(&valid, &[]);
                    } else if let Err(errors) = endpoint.spec.validate() {
                        assert!(!errors.is_empty());
                        let _ = errors.to_string();
                    }
                    // What we parsed, we can write and read back.
                    let yaml = endpoint.to_yaml().expect("an Endpoint serializes");
                    let back = parse_endpoint(
                        yaml.as_bytes(),
                        Format::Yaml,
                        &ParseLimits {
                            max_bytes: usize::MAX,
                            ..limits.clone()
                        },
                    );
                    assert_eq!(back.as_ref().ok(), Some(&endpoint), "{back:?}");
                }
            }
            Err(error) => {
                let _ = error.to_string();
                assert!(!error.reason().is_empty());
            }
        }
        let _ = parse_endpoint(data, format, &limits);
    }
});
