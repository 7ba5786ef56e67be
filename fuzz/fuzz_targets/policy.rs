//! Configuration parsers: the filter's plugin configuration (JSON text, or a binary
//! `google.protobuf.Struct`), YAML policy files and JSON policies, and their compilation.
//!
//! Never panics, and what is accepted is consistent: a configuration re-serialized as JSON or
//! as a Struct (entries in any order, as Envoy may write them) parses to the same
//! configuration and compiles the same; a Struct that decodes re-encodes to the same value;
//! a policy file that compiles renders (as `bridle render` does) to a filter configuration
//! that parses back and compiles, and writes back to YAML that parses to the same policy.
#![no_main]

use std::path::Path;

use bridle_core::config::FilterConfig;
use bridle_core::policy::{ConfigError, Policy};
use bridle_core::{policy_files, struct_pb};
use bridle_fuzz::{filter_config, numbers_fit_a_double, pb};
use libfuzzer_sys::fuzz_target;

/// Compilation, reduced to what can be compared: the policy names, or the errors.
fn compiled(cfg: &FilterConfig) -> Result<Vec<String>, Vec<ConfigError>> {
    cfg.compile().map(|c| {
        let names: Vec<String> = c.policies.iter().map(|p| p.policy.name.clone()).collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(c.policy(name).map(|p| p.slot), Some(i));
            assert_eq!(c.policy(name).map(|p| &p.policy), cfg.policies.get(i));
        }
        names
    })
}

/// A configuration the filter accepted: it round-trips through JSON and through a Struct.
fn check_config(cfg: &FilterConfig, rotate: usize) {
    let result = compiled(cfg);
    if let Err(errors) = &result {
        assert!(!errors.is_empty());
        for e in errors {
            assert!(!e.message.is_empty());
        }
    }
    let json = serde_json::to_vec(cfg).expect("configs serialize");
    let back = FilterConfig::from_json(&json).expect("a re-serialized config parses");
    assert_eq!(&back, cfg, "JSON round trip");
    assert_eq!(
        FilterConfig::from_plugin_bytes(&json).as_ref(),
        Ok(cfg),
        "plugin JSON"
    );
    assert_eq!(compiled(&back), result, "compiles differently once re-read");

    let value = serde_json::to_value(cfg).expect("configs serialize");
    if numbers_fit_a_double(&value) {
        let entries = value.as_object().map_or(1, |m| m.len().max(1));
        for r in [0, rotate % entries] {
            let bytes = pb::structure(&value, r);
            assert_eq!(
                struct_pb::struct_to_json(&bytes).as_ref(),
                Ok(&value),
                "Struct round trip"
            );
            match FilterConfig::from_plugin_bytes(&bytes) {
                Ok(from_pb) => assert_eq!(&from_pb, cfg, "Struct config differs"),
                Err(e) => panic!(
                    "a Struct-encoded config was refused: {e} (first bytes {:02x?})",
                    &bytes[..bytes.len().min(4)]
                ),
            }
        }
    }
}

/// A policy that compiled: it renders, and writes back, consistently.
fn check_compiled_policy(p: &Policy, rotate: usize) {
    let json = serde_json::to_vec(p).expect("policies serialize");
    let back: Policy = serde_json::from_slice(&json).expect("a re-serialized policy parses");
    assert_eq!(&back, p, "policy JSON round trip");
    assert!(back.compile().is_ok(), "a re-read policy does not compile");

    let yaml = serde_yaml_ng::to_string(p).expect("policies serialize to YAML");
    match policy_files::parse(Path::new("again.yaml"), &yaml) {
        Ok(again) => assert_eq!(&again.policy, p, "YAML round trip"),
        Err(e) => panic!("a policy written as YAML does not parse back: {e:?}\n{yaml}"),
    }

    // What `bridle render` makes of it, with a ledger and the shipped price tables: the
    // filter takes it, unless it allows a model by name that nothing prices (a policy alone
    // cannot know the tables; `bridle lint` refuses it too, and so does the filter).
    let cfg = filter_config(p.vendor, &[p]);
    match compiled(&cfg) {
        Ok(_) => check_config(&cfg, rotate),
        Err(errors) => assert!(
            errors
                .iter()
                .all(|e| e.field.ends_with(".models.allow") && e.message.contains("has no price")),
            "a rendered config does not compile: {errors:?}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let rotate = data.first().copied().unwrap_or(0) as usize;

    // The filter's configuration, both ways Envoy may deliver it.
    let plugin = FilterConfig::from_plugin_bytes(data);
    let json = FilterConfig::from_json(data);
    if let Ok(cfg) = &json {
        check_config(cfg, rotate);
        // JSON text is always read as JSON.
        assert_eq!(plugin.as_ref(), Ok(cfg));
    }
    if let Ok(cfg) = &plugin {
        check_config(cfg, rotate);
    }
    if let Err(e) = &plugin {
        assert!(!e.to_string().is_empty());
    }

    // The Struct decoder alone.
    if let Ok(value) = struct_pb::struct_to_json(data) {
        assert!(value.is_object());
        for r in [0, rotate] {
            let again = struct_pb::struct_to_json(&pb::structure(&value, r));
            assert_eq!(again.as_ref(), Ok(&value), "Struct re-encoding differs");
        }
        if json.is_err() {
            // Any Struct that holds a configuration is read as that configuration.
            if let Ok(cfg) = serde_json::from_value::<FilterConfig>(value) {
                assert_eq!(
                    plugin.as_ref().ok(),
                    Some(&cfg),
                    "a Struct config was misread"
                );
            }
        }
    }

    // Policies: YAML files and JSON, as people and `bridle render` write them.
    if let Ok(text) = std::str::from_utf8(data) {
        match policy_files::parse(Path::new("fuzz.yaml"), text) {
            Ok(compiled) => check_compiled_policy(&compiled.policy, rotate),
            Err(errors) => {
                assert!(!errors.is_empty());
                for e in &errors {
                    assert!(e.to_string().starts_with("fuzz.yaml: "));
                }
            }
        }
    }
    if let Ok(p) = serde_json::from_slice::<Policy>(data) {
        let json = serde_json::to_vec(&p).expect("policies serialize");
        let back: Policy = serde_json::from_slice(&json).expect("a re-serialized policy parses");
        assert_eq!(back, p, "policy JSON round trip");
        match p.compile() {
            Ok(c) => {
                assert_eq!(c.endpoints.len(), p.endpoints.len());
                check_compiled_policy(&p, rotate);
            }
            Err(errors) => {
                assert!(!errors.is_empty());
                assert_eq!(back.compile().err(), Some(errors));
            }
        }
    }
});
