//! Security: PostgreSQL over TLS (`sslmode=verify-full` against a CA made
//! here with the `openssl` CLI) with SCRAM-SHA-256, the relay running as the
//! least-privilege role of `sql/900_relay_role.sql`, librdkafka SASL/SSL
//! settings passed through, and secrets kept out of every output.
//!
//! Here Kafka SASL/SSL is shown up to librdkafka accepting the settings; that
//! they work against Apache Kafka — SASL_SSL with SCRAM-SHA-512 against a
//! listener whose CA this module's [`Pki`] makes, a wrong password, ACLs — is
//! in `kafka_security`, on a broker of its own.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use outbox_relay::config::{Config, Overrides};
use outbox_relay::error::ErrorClass;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixture::{relay_bin, Arrival, Env};
use crate::support;
use crate::support::postgres::{connect, PgCluster};

const TOPIC: &str = "outbox.order";
/// The least-privilege role `sql/900_relay_role.sql` creates.
const ROLE: &str = "outbox_relay";

// ------------------------------------------------------------------ PKI

/// A throw-away PKI: a CA, a second unrelated CA, and server certificates
/// (also used by the Kafka SASL_SSL test in `kafka_security`).
pub(crate) struct Pki {
    dir: TempDir,
}

/// A certificate and its unencrypted PKCS#8 private key (`BEGIN PRIVATE KEY`), both PEM.
pub(crate) struct CertPair {
    pub(crate) crt: PathBuf,
    pub(crate) key: PathBuf,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        Pki {
            dir: tempfile::Builder::new()
                .prefix("outbox-it-pki-")
                .tempdir_in(support::tmp_root())
                .expect("pki dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl (Debian package `openssl`)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed CA named `name` (P-256, valid 2 days).
    pub(crate) fn ca(&self, name: &str) -> CertPair {
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "2",
            "-subj",
            &format!("/CN=outbox-relay test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        CertPair {
            crt: self.path(&crt),
            key: self.path(&key),
        }
    }

    /// A server certificate `name` for `sans` (e.g. `DNS:localhost,IP:127.0.0.1`)
    /// signed by `ca`.
    pub(crate) fn server(&self, name: &str, ca: &CertPair, sans: &str) -> CertPair {
        let (crt, key, csr, ext) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.path(&ext),
            format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca.crt.to_str().unwrap(),
            "-CAkey",
            ca.key.to_str().unwrap(),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        CertPair {
            crt: self.path(&crt),
            key: self.path(&key),
        }
    }
}

/// `url` with TLS parameters appended.
fn with_tls(url: &str, mode: &str, ca: Option<&Path>) -> String {
    let mut u = format!("{url}?sslmode={mode}");
    if let Some(ca) = ca {
        u.push_str(&format!("&sslrootcert={}", ca.display()));
    }
    u
}

// ------------------------------------------------------------- helpers

/// Create the least-privilege role exactly as a DBA would: the rendering
/// of `sql/900_relay_role.sql` run through psql with `-v relay_password=`.
fn create_relay_role(pg: &PgCluster, db: &str, password: &str) {
    let step = outbox_relay::schema::role_statement(&Config::default());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(step.file);
    std::fs::write(&file, &step.sql).unwrap();
    let out = Command::new("psql")
        .arg(pg.url_db(db))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("relay_password={password}"))
        .arg("-f")
        .arg(&file)
        .output()
        .expect("run psql (Debian package postgresql-client)");
    assert!(
        out.status.success(),
        "psql -f {}: {}",
        step.file,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The relay binary with only the given environment (nothing inherited
/// from the test's OUTBOX_RELAY_*), and logging off unless set.
fn relay_cmd(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(relay_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTBOX_RELAY_") {
            c.env_remove(k);
        }
    }
    c.env("OUTBOX_RELAY_LOG", "off")
        .env("OUTBOX_RELAY_METRICS_LISTEN", "")
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Non-empty stderr lines.
fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// Assert a failed run printed exactly one error line containing `needle`
/// and none of `secrets`; returns the line.
fn assert_one_line_failure(out: &Output, needle: &str, secrets: &[&str]) -> String {
    let (stdout, stderr) = text(out);
    assert!(!out.status.success(), "expected failure: {stdout}{stderr}");
    let l = lines(&stderr);
    assert_eq!(l.len(), 1, "expected one line, got {l:#?}");
    assert!(l[0].starts_with("outbox-relay: error:"), "{}", l[0]);
    assert!(
        l[0].contains(needle),
        "{:?} should mention {needle:?}",
        l[0]
    );
    for s in secrets {
        assert!(
            !stdout.contains(s) && !stderr.contains(s),
            "secret printed: {stderr}"
        );
    }
    l[0].to_string()
}

async fn insert_events(env: &Env, n: i32) -> HashSet<i64> {
    env.client()
        .await
        .query(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
             SELECT 'order', 'k' || (g % 7), 'Created', jsonb_build_object('g', g) \
             FROM generate_series(1, $1::int) g RETURNING id",
            &[&n],
        )
        .await
        .expect("insert events")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn http_get(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics endpoint");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("metrics response in time")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// Run a blocking command off the async runtime.
async fn output(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().expect("run outbox-relay"))
        .await
        .unwrap()
}

// --------------------------------------------------------------- tests

/// The whole production setup: TLS verify-full on both connections, SCRAM,
/// and the least-privilege role — the relay streams, checkpoints, heartbeats
/// and the janitor marks rows, while the role cannot read other tables.
#[tokio::test(flavor = "multi_thread")]
async fn relay_runs_as_least_privilege_role_over_verify_full_tls() {
    const PW: &str = "Relay-pw-8d1e57";
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server = pki.server("server", &ca, "DNS:localhost,IP:127.0.0.1");
    let mut env = Env::start_with(
        &[TOPIC],
        "heartbeat-interval = \"200ms\"\n[cleanup]\ncleanup-interval = \"300ms\"\n",
        1000,
    )
    .await;
    // Connection logging shows the authentication method and TLS per session.
    env.pg
        .client()
        .await
        .batch_execute("ALTER SYSTEM SET log_connections = on")
        .await
        .unwrap();
    env.pg.enable_ssl(&server.crt, &server.key).await;

    // init (idempotent) as superuser, over verify-full.
    let su_url = with_tls(&env.url(), "verify-full", Some(&ca.crt));
    let out = env
        .relay_command(&["init"])
        .env("OUTBOX_RELAY_POSTGRES_URL", &su_url)
        .output()
        .unwrap();
    assert!(out.status.success(), "init over TLS: {:?}", text(&out));

    create_relay_role(&env.pg, "app", PW);
    let c = env.client().await;
    let scram: bool = c
        .query_one(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' AND rolreplication AND NOT rolsuper \
             FROM pg_authid WHERE rolname = $1",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        scram,
        "role has a SCRAM verifier, REPLICATION, no superuser"
    );

    let url = with_tls(
        &env.pg.url_for("app", ROLE, PW),
        "verify-full",
        Some(&ca.crt),
    );
    let role_env = [("OUTBOX_RELAY_POSTGRES_URL", url.as_str())];
    let mut relay = env.spawn_relay_with(&role_env);

    let ids = insert_events(&env, 200).await;
    let got = env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
    let arrival = Arrival::of(&got);
    arrival.assert_complete(&ids);
    arrival.assert_commit_order();

    // Every session of the role — the walsender and the control plane — is
    // TLS (the stream and the SQL connections both verified the server).
    let sessions = c
        .query(
            "SELECT a.backend_type, s.ssl, coalesce(s.version, '') \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
            &[&ROLE],
        )
        .await
        .unwrap();
    let kinds: HashSet<String> = sessions.iter().map(|r| r.get::<_, String>(0)).collect();
    assert!(
        kinds.contains("walsender") && kinds.contains("client backend"),
        "relay sessions: {kinds:?}"
    );
    for r in &sessions {
        assert!(
            r.get::<_, bool>(1),
            "a relay session without TLS: {:?}",
            r.get::<_, String>(0)
        );
    }
    // ... and authenticated with SCRAM.
    let log = env.pg.log();
    assert!(
        log.contains(&format!("identity=\"{ROLE}\" method=scram-sha-256")),
        "server log shows no SCRAM authentication of {ROLE}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("replication connection authorized")
                && l.contains(&format!("user={ROLE}"))
                && l.contains("SSL enabled")),
        "server log shows no TLS replication connection of {ROLE}"
    );

    // Checkpoint written by the role.
    support::wait_until_msg(
        "checkpoint written",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { env.checkpoint().await.is_some() },
    )
    .await;

    // The janitor (in-process, and `outbox-relay prune`) marks as the role.
    support::wait_until_msg(
        "all rows PROCESSED by the role's janitor",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let out = env
                .relay_command(&["prune", "--json"])
                .env("OUTBOX_RELAY_POSTGRES_URL", &url)
                .output()
                .unwrap();
            assert!(out.status.success(), "prune as {ROLE}: {:?}", text(&out));
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM public.outbox WHERE status = 'PROCESSED'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            n as usize == ids.len()
        },
    )
    .await;

    // `status` works as the role.
    let out = env
        .relay_command(&["status", "--json"])
        .env("OUTBOX_RELAY_POSTGRES_URL", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "status as {ROLE}: {:?}", text(&out));

    // The role's own (plain) SQL session: what it may and may not do.
    let role = connect(&env.pg.url_for("app", ROLE, PW))
        .await
        .expect("connect as role");
    outbox_relay::heartbeat::emit(&role)
        .await
        .expect("the role may write heartbeats (pg_logical_emit_message)");
    c.batch_execute(
        "CREATE TABLE public.secrets (v text); INSERT INTO public.secrets VALUES ('classified')",
    )
    .await
    .unwrap();
    for sql in [
        "SELECT * FROM public.secrets",
        "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) VALUES ('a','b','c','{}')",
        "SELECT * FROM pg_authid",
    ] {
        let e = role.query(sql, &[]).await.expect_err(sql);
        assert_eq!(
            e.code().map(|c| c.code()),
            Some("42501"),
            "{sql}: expected permission denied, got {e}"
        );
    }

    let status = relay.terminate(Duration::from_secs(20));
    assert!(status.success(), "relay exit: {status}");
    let rlog = relay.log_text();
    for bad in [
        "permission denied",
        "heartbeat failed",
        "janitor pass failed",
        "janitor: cannot connect",
        "relay session failed",
    ] {
        assert!(!rlog.contains(bad), "relay log has {bad:?}:\n{rlog}");
    }
}

/// A wrong CA, a certificate for another host, a missing CA file: startup
/// fails with one line naming the problem, never the password. verify-ca
/// accepts the other host's certificate (chain only), require accepts any.
#[tokio::test(flavor = "multi_thread")]
async fn tls_misconfiguration_fails_startup_with_one_line() {
    const PW: &str = "Tls-pw-3c9a0f";
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let other_ca = pki.ca("other-ca");
    let server = pki.server("server", &ca, "DNS:localhost,IP:127.0.0.1");
    let elsewhere = pki.server("elsewhere", &ca, "DNS:db.example.com");
    let mut pg = PgCluster::start().await;
    pg.create_role("relay", PW, "REPLICATION").await;
    pg.enable_ssl(&server.crt, &server.key).await;
    let base = pg.url_for("postgres", "relay", PW);
    let run = |url: String| {
        output(relay_cmd(
            &["run"],
            &[
                ("OUTBOX_RELAY_POSTGRES_URL", &url),
                ("OUTBOX_RELAY_KAFKA_BROKERS", "127.0.0.1:1"),
                ("OUTBOX_RELAY_POSTGRES_CONNECT_TIMEOUT", "5s"),
            ],
        ))
    };

    let out = run(with_tls(&base, "verify-full", Some(&other_ca.crt))).await;
    let line = assert_one_line_failure(&out, "not signed by a CA in sslrootcert", &[PW]);
    assert_eq!(out.status.code(), Some(1), "{line}");
    eprintln!("wrong CA: {line}");

    let out = run(with_tls(
        &base,
        "verify-full",
        Some(Path::new("/nonexistent/ca.pem")),
    ))
    .await;
    assert_one_line_failure(&out, "sslrootcert /nonexistent/ca.pem", &[PW]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing CA file is a config error"
    );

    let out = run(with_tls(&base, "verify-full", None)).await;
    assert_one_line_failure(&out, "needs sslrootcert", &[PW]);
    assert_eq!(out.status.code(), Some(2));

    // The replication stream refuses the wrong CA just as well.
    let cfg = Config::from_sources(
        None,
        &[],
        &Overrides {
            postgres_url: Some(with_tls(&base, "verify-full", Some(&other_ca.crt))),
            kafka_brokers: Some("127.0.0.1:1".into()),
        },
    )
    .unwrap();
    let e = outbox_relay::source::stream::open(&cfg, None)
        .await
        .err()
        .expect("stream with the wrong CA");
    assert_eq!(e.class(), ErrorClass::Fatal, "{e}");
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
    assert!(!e.to_string().contains(PW));

    // A certificate for another name, from the right CA.
    pg.enable_ssl(&elsewhere.crt, &elsewhere.key).await;
    let out = run(with_tls(&base, "verify-full", Some(&ca.crt))).await;
    let line = assert_one_line_failure(&out, "does not name the host", &[PW]);
    eprintln!("wrong host: {line}");
    let e = outbox_relay::source::stream::open(
        &Config::from_sources(
            None,
            &[],
            &Overrides {
                postgres_url: Some(with_tls(&base, "verify-full", Some(&ca.crt))),
                kafka_brokers: Some("127.0.0.1:1".into()),
            },
        )
        .unwrap(),
        None,
    )
    .await
    .err()
    .expect("stream to a host the certificate does not name");
    assert_eq!(e.class(), ErrorClass::Fatal, "{e}");

    // verify-ca checks the chain only; require checks nothing: both connect
    // (`init` as superuser over TLS).
    for (mode, ca_file) in [("verify-ca", Some(ca.crt.as_path())), ("require", None)] {
        let out = output(relay_cmd(
            &["init"],
            &[
                (
                    "OUTBOX_RELAY_POSTGRES_URL",
                    &with_tls(&pg.url(), mode, ca_file),
                ),
                ("OUTBOX_RELAY_KAFKA_BROKERS", "127.0.0.1:1"),
            ],
        ))
        .await;
        assert!(
            out.status.success(),
            "init with sslmode={mode}: {:?}",
            text(&out)
        );
    }
    // ... but verify-ca still refuses a foreign CA.
    let out = output(relay_cmd(
        &["init"],
        &[
            (
                "OUTBOX_RELAY_POSTGRES_URL",
                &with_tls(&pg.url(), "verify-ca", Some(&other_ca.crt)),
            ),
            ("OUTBOX_RELAY_KAFKA_BROKERS", "127.0.0.1:1"),
        ],
    ))
    .await;
    assert_one_line_failure(&out, "not signed by a CA in sslrootcert", &[]);
}

/// librdkafka SASL/SSL settings pass through unchanged; check-config
/// validates them (librdkafka checks names and values when the producer is
/// created, and loads the CA file) and masks the password.
#[test]
fn kafka_sasl_ssl_properties_pass_through() {
    const SECRET: &str = "Sasl-pw-5be21c";
    let pki = Pki::new();
    let ca = pki.ca("kafka-ca");
    let props = |extra: &[(&'static str, String)]| {
        let mut v: Vec<(&'static str, String)> = vec![
            (
                "OUTBOX_RELAY_POSTGRES_URL",
                "postgres://relay:pg-pw-771@127.0.0.1/app".into(),
            ),
            (
                "OUTBOX_RELAY_KAFKA_BROKERS",
                "broker.example.com:9093".into(),
            ),
            (
                "OUTBOX_RELAY_KAFKA_PROPERTY_SECURITY_PROTOCOL",
                "SASL_SSL".into(),
            ),
            (
                "OUTBOX_RELAY_KAFKA_PROPERTY_SASL_MECHANISM",
                "SCRAM-SHA-256".into(),
            ),
            ("OUTBOX_RELAY_KAFKA_PROPERTY_SASL_USERNAME", "relay".into()),
            ("OUTBOX_RELAY_KAFKA_PROPERTY_SASL_PASSWORD", SECRET.into()),
            (
                "OUTBOX_RELAY_KAFKA_PROPERTY_SSL_CA_LOCATION",
                ca.crt.display().to_string(),
            ),
        ];
        v.extend(extra.iter().cloned());
        v
    };
    let run = |env: Vec<(&'static str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        relay_cmd(&["check-config"], &env).output().unwrap()
    };

    let out = run(props(&[]));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    for shown in [
        "\"security.protocol\" = \"SASL_SSL\"",
        "\"sasl.mechanism\" = \"SCRAM-SHA-256\"",
        "\"sasl.username\" = \"relay\"",
        "\"sasl.password\" = \"***\"",
        "\"ssl.ca.location\"",
    ] {
        assert!(stdout.contains(shown), "{shown} missing from:\n{stdout}");
    }
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
    assert!(!stdout.contains("pg-pw-771") && !stderr.contains("pg-pw-771"));

    // librdkafka's own checks: on setting (naming the property) and on
    // creating the client (the SASL mechanism, the CA file).
    let out = run(props(&[(
        "OUTBOX_RELAY_KAFKA_PROPERTY_SECURITY_PROTOCOL",
        "SASL_TLS".into(),
    )]));
    assert_one_line_failure(&out, "kafka.properties.security.protocol", &[SECRET]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(props(&[(
        "OUTBOX_RELAY_KAFKA_PROPERTY_SASL_MECHANISM",
        "SCRAM-SHA-999".into(),
    )]));
    assert_one_line_failure(&out, "kafka.properties", &[SECRET]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(props(&[(
        "OUTBOX_RELAY_KAFKA_PROPERTY_SSL_CA_LOCATION",
        "/nonexistent/kafka-ca.pem".into(),
    )]));
    assert_one_line_failure(&out, "kafka.properties", &[SECRET]);
    assert_eq!(out.status.code(), Some(2));
}

/// Passwords and secrets never appear in logs (debug level, librdkafka's
/// config debug included), errors, check-config, status or /metrics.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_appear_in_any_output() {
    const PG_PW: &str = "Pg-secret-4e7b19";
    const WRONG_PW: &str = "Wrong-secret-a03d66";
    const KAFKA_PW: &str = "Kafka-secret-c58f02";
    const SASL_PW: &str = "Sasl-secret-91d7e4";
    let secrets = [PG_PW, WRONG_PW, KAFKA_PW, SASL_PW];

    let env = Env::start_with(&[TOPIC], "heartbeat-interval = \"200ms\"\n", 1000).await;
    create_relay_role(&env.pg, "app", PG_PW);
    let url = env.pg.url_for("app", ROLE, PG_PW);
    let bad_url = env.pg.url_for("app", ROLE, WRONG_PW);
    // Properties librdkafka accepts but does not use with PLAINTEXT.
    let secret_env = [
        ("OUTBOX_RELAY_POSTGRES_URL", url.as_str()),
        ("OUTBOX_RELAY_KAFKA_PROPERTY_SSL_KEY_PASSWORD", KAFKA_PW),
        ("OUTBOX_RELAY_KAFKA_PROPERTY_SASL_PASSWORD", SASL_PW),
    ];
    let mut all = String::new();

    let mut run_env: Vec<(&str, &str)> = secret_env.to_vec();
    run_env.extend([
        ("OUTBOX_RELAY_LOG", "debug"),
        // librdkafka's own debug output, its configuration dump included.
        (
            "OUTBOX_RELAY_KAFKA_PROPERTY_DEBUG",
            "conf,generic,security,broker",
        ),
    ]);
    let mut relay = env.spawn_relay_with(&run_env);
    let ids = insert_events(&env, 20).await;
    let got = env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
    Arrival::of(&got).assert_complete(&ids);

    for path in ["/metrics", "/healthz", "/readyz"] {
        let body = http_get(env.metrics_port, path).await;
        assert!(body.starts_with("HTTP/1.1 200"), "{path}: {body}");
        all.push_str(&body);
    }

    let with = |args: &[&str], extra: &[(&str, &str)]| {
        let mut c = env.relay_command(args);
        for (k, v) in secret_env.iter().chain(extra) {
            c.env(k, v);
        }
        c.env("OUTBOX_RELAY_LOG", "debug");
        c
    };
    for args in [
        &["status"][..],
        &["status", "--json"][..],
        &["check-config"][..],
        &["prune"][..],
    ] {
        let out = output(with(args, &[])).await;
        let (o, e) = text(&out);
        assert!(out.status.success(), "{args:?}: {o}{e}");
        all.push_str(&o);
        all.push_str(&e);
    }
    // Error paths: wrong password for status and run; a bad sslmode in a URL
    // that carries the password; a wrong-type value for a secret.
    for (args, pg_url) in [
        (&["status"][..], bad_url.clone()),
        (&["run"][..], bad_url.clone()),
        (&["check-config"][..], format!("{url}?sslmode=sometimes")),
        (&["check-config"][..], format!("{bad_url}?no_such_option=1")),
    ] {
        let out = output(with(
            args,
            &[
                ("OUTBOX_RELAY_POSTGRES_URL", &pg_url),
                ("OUTBOX_RELAY_LOG", "off"),
                ("OUTBOX_RELAY_METRICS_LISTEN", ""),
            ],
        ))
        .await;
        let line = assert_one_line_failure(&out, "postgres", &secrets);
        all.push_str(&line);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[kafka.properties]\n\"sasl.password\" = 918273645\n").unwrap();
    let out = output(relay_cmd(
        &["--config", cfg.to_str().unwrap(), "check-config"],
        &[
            ("OUTBOX_RELAY_POSTGRES_URL", &url),
            ("OUTBOX_RELAY_KAFKA_BROKERS", "127.0.0.1:1"),
        ],
    ))
    .await;
    assert_one_line_failure(&out, "kafka.properties.sasl.password", &["918273645"]);
    // A key/value connection string with a quoted password.
    let kv = format!(
        "host=127.0.0.1 port={} user={ROLE} dbname=app password = '{PG_PW} x'",
        env.pg.port()
    );
    let out = output(relay_cmd(
        &["check-config"],
        &[
            ("OUTBOX_RELAY_POSTGRES_URL", &kv),
            ("OUTBOX_RELAY_KAFKA_BROKERS", "127.0.0.1:1"),
        ],
    ))
    .await;
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}{e}");
    assert!(o.contains("password = ***"), "{o}");
    all.push_str(&o);
    all.push_str(&e);

    let status = relay.terminate(Duration::from_secs(20));
    assert!(status.success(), "relay exit: {status}");
    let log = relay.log_text();
    assert!(log.contains("DEBUG"), "debug logging was on");
    assert!(
        log.contains("librdkafka") && log.contains("CONF"),
        "librdkafka's configuration debug output was captured"
    );
    all.push_str(&log);

    for s in secrets {
        if let Some(at) = all.find(s) {
            let from = all[..at].rfind('\n').map_or(0, |i| i + 1);
            let to = all[at..].find('\n').map_or(all.len(), |i| at + i);
            panic!("secret {s:?} printed: {}", &all[from..to]);
        }
    }
}
