//! Taking the TLS parameters (`sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`) out of a libpq URL or `key=value` string, since tokio-postgres
//! rejects `sslrootcert`. The rest of the string is handed on unchanged;
//! nothing here formats it into an error.

use super::KEY;
use crate::error::ConfigError;
/// The TLS parameters pulled out of the connection string.
#[derive(Default)]
pub(super) struct TlsParams {
    pub(super) sslmode: Option<String>,
    pub(super) sslrootcert: Option<String>,
    pub(super) sslcert: Option<String>,
    pub(super) sslkey: Option<String>,
}

impl TlsParams {
    /// Take `key = value` if it is one of ours; false if it is not.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Remove our parameters from a URL's query string.
pub(super) fn strip_url_params(url: &str, params: &mut TlsParams) -> String {
    // tokio-postgres takes credentials up to the first '@', then host and
    // path up to '?': the query begins at the first '?' after that.
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let after_creds = url[scheme_end..]
        .find('@')
        .map(|i| scheme_end + i + 1)
        .unwrap_or(scheme_end);
    let Some(q) = url[after_creds..].find('?').map(|i| after_creds + i) else {
        return url.to_string();
    };
    let kept: Vec<&str> = url[q + 1..]
        .split('&')
        .filter(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            !params.take(&percent_decode(k), percent_decode(v))
        })
        .collect();
    let mut out = url[..q].to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One `key = value` of a libpq key/value string: the key, the unquoted
/// value, and the byte span of the whole pair in the input.
pub(crate) struct KvPair<'a> {
    pub key: &'a str,
    pub value: String,
    pub span: std::ops::Range<usize>,
    /// Span of the value as written (quotes included).
    pub value_span: std::ops::Range<usize>,
}

/// Tokenize a libpq key/value string the way tokio-postgres does (`'…'`
/// quoting, `\` escapes, spaces around `=`). The error never quotes input.
pub(crate) fn kv_pairs(s: &str) -> Result<Vec<KvPair<'_>>, &'static str> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let ws = |c: u8| c.is_ascii_whitespace();
    loop {
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if i == b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && !ws(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let key = &s[start..i];
        if key.is_empty() {
            return Err("a parameter has no name");
        }
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if i == b.len() || b[i] != b'=' {
            return Err("expected key=value pairs");
        }
        i += 1;
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        let vstart = i;
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                if i == b.len() {
                    return Err("unterminated quoted value");
                }
                match b[i] {
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    b'\\' if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !ws(b[i]) {
                if b[i] == b'\\' && i + 1 < b.len() {
                    value.push(b[i + 1]);
                    i += 2;
                } else {
                    value.push(b[i]);
                    i += 1;
                }
            }
            if value.is_empty() {
                return Err("a parameter has no value");
            }
        }
        out.push(KvPair {
            key,
            value: String::from_utf8_lossy(&value).into_owned(),
            span: start..i,
            value_span: vstart..i,
        });
    }
}

/// Remove our parameters from a key/value string.
pub(super) fn strip_kv_params(s: &str, params: &mut TlsParams) -> Result<String, ConfigError> {
    let pairs = kv_pairs(s)
        .map_err(|m| ConfigError::new(KEY, format!("not a valid connection string ({m})")))?;
    let mut kept = Vec::new();
    for p in pairs {
        if !params.take(p.key, p.value) {
            kept.push(&s[p.span]);
        }
    }
    Ok(kept.join(" "))
}
