//! The README's configuration reference stays true: every key the config
//! accepts is documented, with its default.

use outbox_relay::config::Config;
use serde_json::Value;

fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) if !(path.len() == 2 && path[1] == "properties") => {
            for (k, child) in m {
                path.push(k.clone());
                leaves(child, path, out);
                path.pop();
            }
        }
        other => out.push((path.join("."), other.clone())),
    }
}

#[test]
fn every_config_key_is_in_the_readme_with_its_default() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut out = Vec::new();
    leaves(
        &serde_json::to_value(Config::default()).unwrap(),
        &mut Vec::new(),
        &mut out,
    );
    assert!(out.len() > 30, "walked the config: {out:?}");
    for (key, default) in out {
        let key_doc = if key == "kafka.properties" {
            "kafka.properties.*".to_string()
        } else {
            key.clone()
        };
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{key_doc}` |")))
            .unwrap_or_else(|| panic!("README lacks a configuration row for `{key_doc}`"));
        let shown = match &default {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        if let Some(d) = shown {
            assert!(
                row.contains(&format!("`{d}`")),
                "README default for `{key}` should be `{d}`: {row}"
            );
        }
    }
}
