//! Environment overrides: every key of the file can be set by an
//! `OUTBOX_RELAY_*` variable (names derived from the defaults' key paths, so
//! a new key gets its variable for free), librdkafka properties through
//! `OUTBOX_RELAY_KAFKA_PROPERTY_*`, and a variable that maps to no key is an
//! error with a "did you mean" hint instead of a silently ignored typo.

use serde_json::Value;

use crate::error::ConfigError;

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "OUTBOX_RELAY_";
/// Prefix of librdkafka pass-through properties in the environment.
pub const ENV_KAFKA_PROPERTY_PREFIX: &str = "OUTBOX_RELAY_KAFKA_PROPERTY_";
/// The variables under [`ENV_PREFIX`] that are not configuration keys: the
/// config file's path, the log filter and format (read by the CLI), and the
/// binary the repository's scripts run. Any other `OUTBOX_RELAY_*` variable
/// must map to a key, or loading fails naming it — a misspelt override is
/// never silently ignored.
pub const ENV_NOT_KEYS: &[&str] = &[
    "OUTBOX_RELAY_CONFIG",
    "OUTBOX_RELAY_LOG",
    "OUTBOX_RELAY_LOG_FORMAT",
    "OUTBOX_RELAY_BIN",
    crate::fault::ENV,
];

fn env_name(path: &[&str]) -> String {
    let mut s = String::from(ENV_PREFIX);
    s.push_str(&path.join("_").replace(['-', '.'], "_").to_ascii_uppercase());
    s
}

pub(super) fn apply_env(
    raw: &mut Value,
    defaults: &Value,
    env: &[(String, String)],
) -> Result<(), ConfigError> {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut leaves = Vec::new();
    collect_leaves(defaults, &mut Vec::new(), &mut leaves);
    let names: Vec<String> = leaves
        .iter()
        .map(|(path, _)| env_name(&path.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    for (var, _) in env {
        let known = !var.starts_with(ENV_PREFIX)
            || var.starts_with(ENV_KAFKA_PROPERTY_PREFIX)
            || ENV_NOT_KEYS.contains(&var.as_str())
            || names.contains(var);
        if !known {
            let hint = names
                .iter()
                .map(|n| (edit_distance(n, var), n))
                .filter(|(d, _)| *d <= 3)
                .min()
                .map(|(_, n)| format!(" (did you mean {n}?)"))
                .unwrap_or_default();
            return Err(ConfigError::new(
                var.as_str(),
                format!("unknown variable: it maps to no configuration key{hint}"),
            ));
        }
    }
    for (path, default) in leaves {
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        if refs == ["kafka", "properties"] {
            continue;
        }
        let name = env_name(&refs);
        if let Some(v) = lookup(&name) {
            let key = path.join(".");
            let typed = match default {
                Value::Bool(_) => Value::Bool(v.parse().map_err(|_| {
                    ConfigError::new(&key, format!("{name} must be true or false"))
                })?),
                Value::Number(_) => {
                    Value::Number(v.parse::<i64>().map(Into::into).map_err(|_| {
                        ConfigError::new(&key, format!("{name} must be an integer"))
                    })?)
                }
                _ => Value::String(v),
            };
            set_path(raw, &refs, typed);
        }
    }
    for (k, v) in env {
        if let Some(prop) = k.strip_prefix(ENV_KAFKA_PROPERTY_PREFIX) {
            let prop = prop.to_ascii_lowercase().replace('_', ".");
            set_path(
                raw,
                &["kafka", "properties", &prop],
                Value::String(v.clone()),
            );
        }
    }
    Ok(())
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn collect_leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    match v {
        Value::Object(map) if !(path.len() == 2 && path[1] == "properties") => {
            for (k, child) in map {
                path.push(k.clone());
                collect_leaves(child, path, out);
                path.pop();
            }
        }
        other => out.push((path.clone(), other.clone())),
    }
}

pub(super) fn set_path(raw: &mut Value, path: &[&str], value: Value) {
    let mut cur = raw;
    for (i, seg) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let map = cur.as_object_mut().expect("object");
        if i + 1 == path.len() {
            map.insert((*seg).to_string(), value);
            return;
        }
        cur = map
            .entry((*seg).to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ENV_NOT_KEYS;
    use crate::config::fixtures::{env, MIN};
    use crate::config::{Config, Overrides};

    #[test]
    fn an_environment_variable_that_maps_to_no_key_is_named() {
        for (var, hint) in [
            ("OUTBOX_RELAY_KAFKA_FORMATX", ""),
            (
                "OUTBOX_RELAY_RELAY_ON_PERMANENT_ERORR",
                "did you mean OUTBOX_RELAY_RELAY_ON_PERMANENT_ERROR?",
            ),
        ] {
            let e = Config::from_sources(Some(MIN), &env(&[(var, "x")]), &Overrides::default())
                .unwrap_err();
            assert_eq!(e.key, var);
            assert!(e.message.contains("maps to no configuration key"), "{e}");
            assert!(e.message.contains(hint), "{e}");
            assert!(!e.message.contains("\"x\""), "no value echoed: {e}");
        }
        // The variables that are not keys are fine.
        for var in ENV_NOT_KEYS {
            Config::from_sources(Some(MIN), &env(&[(var, "x")]), &Overrides::default()).unwrap();
        }
    }

    #[test]
    fn file_then_env_then_flags() {
        let c = Config::from_sources(
            Some(MIN),
            &env(&[
                ("OUTBOX_RELAY_KAFKA_MAX_IN_FLIGHT", "77"),
                ("OUTBOX_RELAY_RELAY_CHECKPOINT_INTERVAL", "2s"),
                ("OUTBOX_RELAY_OUTBOX_COLUMNS_PAYLOAD", "payload"),
                ("OUTBOX_RELAY_KAFKA_PROPERTY_LINGER_MS", "3"),
            ]),
            &Overrides {
                kafka_brokers: Some("10.0.0.1:1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.kafka.max_in_flight, 77);
        assert_eq!(c.relay.checkpoint_interval, Duration::from_secs(2));
        assert_eq!(c.outbox.columns.payload, "payload");
        assert_eq!(c.kafka.properties["linger.ms"], "3");
        assert_eq!(c.kafka_brokers(), "10.0.0.1:1");
    }

    #[test]
    fn bad_env_number_names_key() {
        let e = Config::from_sources(
            Some(MIN),
            &env(&[("OUTBOX_RELAY_KAFKA_MAX_IN_FLIGHT", "lots")]),
            &Default::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "kafka.max-in-flight");
    }
}
