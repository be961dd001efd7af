//! Secrets are never printed: the password in `postgres.url` and librdkafka
//! properties whose name says password/secret/key are masked in `Debug` and
//! in [`Config::redacted`] (what `check-config` prints). [`is_secret_property`]
//! is the one place that decides what counts as a secret; error messages
//! that could quote a value (loading, `crate::sink::kafka_config`) ask it too.

use super::Config;

impl Config {
    /// The effective configuration with every secret masked, as TOML.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        c.postgres.url = c.postgres.url.as_deref().map(redact_url);
        for (k, v) in c.kafka.properties.iter_mut() {
            if is_secret_property(k) {
                *v = "***".into();
            }
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("<unprintable config: {e}>"))
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// True for librdkafka properties that hold credentials.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("password") || n.contains("secret") || n.ends_with(".key") || n.contains("key.pem")
}

/// Mask the password of a URL or key=value connection string.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
        // password=... may also sit in the query string
        return redact_kv_password(url);
    }
    redact_kv_password(url)
}

fn redact_kv_password(s: &str) -> String {
    // A key/value string: mask exactly each password value, quoted or not,
    // also with spaces around `=` (`password = 'a b'`).
    if !s.contains("://") {
        if let Ok(pairs) = crate::source::tls::kv_pairs(s) {
            let mut out = s.to_string();
            for p in pairs.iter().rev() {
                if p.key.contains("password") {
                    out.replace_range(p.value_span.clone(), "***");
                }
            }
            return out;
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("password=") {
        let (head, tail) = rest.split_at(pos + "password=".len());
        out.push_str(head);
        out.push_str("***");
        let end = tail.find([' ', '&']).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;
    use crate::config::fixtures::{env, MIN};
    use crate::config::Config;

    #[test]
    fn secrets_are_masked() {
        let c = Config::from_sources(
            Some(MIN),
            &env(&[("OUTBOX_RELAY_KAFKA_PROPERTY_SASL_PASSWORD", "hunter2")]),
            &Default::default(),
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("relay:***@127.0.0.1"));
        assert_eq!(
            redact_url("host=x password=abc user=y"),
            "host=x password=*** user=y"
        );
        assert_eq!(
            redact_url("host=x password = 'a b\\'c' user=y"),
            "host=x password = *** user=y"
        );
    }
}
