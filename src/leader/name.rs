//! How a relay names itself to PostgreSQL and to the other relays: the lock
//! connection's `application_name`, which `status` and the standbys read.
//!
//! Format (a shared record: relays of different releases read each other's):
//!
//! ```text
//! outbox-relay <role> <slot> <host>:<pid> <since-unix> <lease-ms>ms
//! ```
//!
//! The first five fields are stable since leader election exists; readers
//! ignore fields after the ones they know, so a field may only ever be
//! *appended*. The sixth, the lease, was appended after the first release
//! with election: a name without it comes from that release, whose lease
//! (unless configured) was [`LEGACY_LEASE`]. PostgreSQL cuts names to 63
//! bytes; the host is shortened first, and a name that still loses its
//! lease field reads as "lease unknown" (the conservative answer).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// The lease of releases whose names carry none (their default `ha.lease`).
/// A standby that cannot tell the previous holder's lease assumes at least
/// this one.
pub const LEGACY_LEASE: Duration = Duration::from_secs(1);

/// `host:pid:start-ms`: names this process in the `relay_instance` header,
/// logs and `status`.
pub fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let start = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("{}:{}:{start}", hostname(), std::process::id())
    })
}

/// This host's name (no libc call: the kernel's, or `HOSTNAME`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Role word in the lock connection's `application_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the lock.
    Standby,
    /// Holding the lock.
    Leader,
}

impl Role {
    fn word(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Leader => "leader",
        }
    }
}

/// The name in the format above, cut to PostgreSQL's 63 bytes (the host is
/// shortened first).
pub fn application_name(role: Role, slot: &str, since_unix: u64, lease: Duration) -> String {
    let pid = std::process::id();
    let ms = lease.as_millis();
    let mut host = hostname();
    loop {
        let name = format!(
            "outbox-relay {} {slot} {host}:{pid} {since_unix} {ms}ms",
            role.word()
        );
        if name.len() <= 63 || host.is_empty() {
            return name.chars().take(63).collect();
        }
        host.pop();
    }
}

/// The lease a lock holder's name advertises; `None` when it carries none
/// (an older release, or a name cut short).
pub fn advertised_lease(name: &str) -> Option<Duration> {
    let field = name.split_whitespace().nth(5)?;
    let ms: u64 = field.strip_suffix("ms")?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// The longest lease any of the current leaders' names (`names`) may have
/// run with: an unadvertised one counts as [`LEGACY_LEASE`], and so does a
/// lock held by a session that names no leader (nothing is known of it).
pub fn holder_lease(names: &[String]) -> Duration {
    names
        .iter()
        .map(|n| advertised_lease(n).unwrap_or(LEGACY_LEASE))
        .max()
        .unwrap_or(LEGACY_LEASE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_fits_postgres_limit() {
        let n = application_name(
            Role::Leader,
            &"s".repeat(40),
            1_700_000_000,
            Duration::from_millis(500),
        );
        assert!(n.len() <= 63, "{n}");
        assert!(n.starts_with("outbox-relay leader sss"));
    }

    #[test]
    fn lease_round_trips_and_older_names_read_as_legacy() {
        let n = application_name(
            Role::Leader,
            "outbox_relay",
            1_700_000_000,
            Duration::from_millis(500),
        );
        assert_eq!(advertised_lease(&n), Some(Duration::from_millis(500)));
        // The first release with election: five fields.
        let old = "outbox-relay leader outbox_relay host:42 1700000000".to_string();
        assert_eq!(advertised_lease(&old), None);
        assert_eq!(
            holder_lease(std::slice::from_ref(&n)),
            Duration::from_millis(500)
        );
        assert_eq!(holder_lease(&[n, old]), LEGACY_LEASE);
        assert_eq!(holder_lease(&[]), LEGACY_LEASE);
        // status (and the older release's status) still parse it.
        let parsed = crate::status::parse_relay(
            &application_name(Role::Standby, "s1", 1_700_000_000, Duration::from_secs(3)),
            "s1",
            "local",
        )
        .expect("parses");
        assert_eq!(parsed.role, "standby");
    }

    #[test]
    fn a_cut_name_loses_the_lease_not_the_conservative_answer() {
        let n = application_name(
            Role::Leader,
            &"s".repeat(45),
            1_700_000_000,
            Duration::from_millis(9000),
        );
        // A cut always takes the trailing "s" first: the whole field or nothing.
        assert!(advertised_lease(&n).is_none_or(|l| l == Duration::from_millis(9000)));
        for cut in 50..n.len() {
            assert!(advertised_lease(&n[..cut]).is_none(), "{}", &n[..cut]);
        }
    }
}
