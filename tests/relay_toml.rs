//! The sample `relay.toml` a newcomer copies: every key the config code knows is in it, with
//! the code's default value and a comment saying why — and the config code accepts it.

use std::collections::BTreeMap;
use std::path::Path;

use outbox_relay::config::{Config, Overrides};
use serde_json::Value;

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        // librdkafka pass-through properties are a free-form map, not keys.
        Value::Object(m) if prefix != "kafka.properties" => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn sample() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("relay.toml"))
        .expect("relay.toml at the repository root")
}

#[test]
fn sample_config_has_every_key_with_its_default() {
    let text = sample();
    let parsed = Config::from_sources(Some(&text), &[], &Overrides::default())
        .unwrap_or_else(|e| panic!("relay.toml is not accepted: {e}"));

    // Every key written in the file (not the parsed result, which defaults fill in).
    let table: toml::Table = toml::from_str(&text).unwrap();
    let mut in_file = BTreeMap::new();
    flatten("", &serde_json::to_value(table).unwrap(), &mut in_file);

    let mut defaults = BTreeMap::new();
    let mut d = Config::default();
    d.postgres.url = parsed.postgres.url.clone();
    d.kafka.brokers = parsed.kafka.brokers.clone();
    flatten("", &serde_json::to_value(&d).unwrap(), &mut defaults);

    let missing: Vec<_> = defaults
        .keys()
        .filter(|k| !in_file.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from relay.toml: {missing:?}"
    );
    let mut parsed_flat = BTreeMap::new();
    flatten(
        "",
        &serde_json::to_value(&parsed).unwrap(),
        &mut parsed_flat,
    );
    for (k, v) in &defaults {
        assert_eq!(
            parsed_flat.get(k),
            Some(v),
            "relay.toml sets {k} to something other than the default"
        );
    }
}

#[test]
fn every_key_in_the_sample_has_a_comment() {
    let text = sample();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with('[') {
            continue;
        }
        let key = l.split('=').next().unwrap().trim();
        // The comment block directly above the key (or above a run of keys under one comment).
        let commented = lines[..i]
            .iter()
            .rev()
            .take_while(|p| !p.trim().is_empty() && !p.trim().starts_with('['))
            .any(|p| p.trim().starts_with('#'));
        assert!(commented, "relay.toml: key {key} has no comment saying why");
    }
}
