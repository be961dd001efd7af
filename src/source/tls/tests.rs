use super::*;
use tokio_postgres::config::SslMode as PgSslMode;

#[test]
fn url_tls_params_are_taken_out() {
    let t = PgTarget::parse(
        "postgres://relay:p%40ss?word@db.example.com:5433/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
    )
    .unwrap();
    assert_eq!(t.ssl_mode, SslMode::VerifyFull);
    assert_eq!(t.root_certs, Some(RootCerts::File("/etc/ca.pem".into())));
    assert_eq!(t.config.get_password(), Some(&b"p@ss?word"[..]));
    assert_eq!(t.config.get_dbname(), Some("app"));
    assert_eq!(t.config.get_ports(), &[5433]);
    assert_eq!(t.config.get_application_name(), Some("x"));
    assert_eq!(t.config.get_ssl_mode(), PgSslMode::Require);
}

#[test]
fn kv_tls_params_are_taken_out() {
    let t = PgTarget::parse(
        "host=db user=relay password='a b\\'c' sslmode = verify-ca sslrootcert='/tmp/my ca.pem' dbname=app",
    )
    .unwrap();
    assert_eq!(t.ssl_mode, SslMode::VerifyCa);
    assert_eq!(t.root_certs, Some(RootCerts::File("/tmp/my ca.pem".into())));
    assert_eq!(t.config.get_password(), Some(&b"a b'c"[..]));
    assert_eq!(t.config.get_dbname(), Some("app"));
}

#[test]
fn modes_and_defaults() {
    let p = |u: &str| PgTarget::parse(u).map(|t| t.ssl_mode);
    assert_eq!(p("postgres://u@h/db").unwrap(), SslMode::Prefer);
    assert_eq!(
        p("postgres://u@h/db?sslmode=disable").unwrap(),
        SslMode::Disable
    );
    assert_eq!(
        p("postgres://u@h/db?sslmode=require").unwrap(),
        SslMode::Require
    );
    assert_eq!(
        p("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem").unwrap(),
        SslMode::VerifyCa
    );
    assert_eq!(
        p("postgres://u@h/db?sslmode=verify-full&sslrootcert=system").unwrap(),
        SslMode::VerifyFull
    );
    let e = p("postgres://u:secretpw@h/db?sslmode=verify-full").unwrap_err();
    assert!(e.message.contains("sslrootcert"), "{e}");
    let e = p("postgres://u:secretpw@h/db?sslmode=bogus").unwrap_err();
    assert!(!e.to_string().contains("secretpw"));
    let e = p("host=h user=u password=secretpw sslcert=/c").unwrap_err();
    assert!(e.message.contains("sslkey"), "{e}");
    let e = p("host=h user=u password='secretpw").unwrap_err();
    assert!(!e.to_string().contains("secretpw"), "{e}");
}

#[test]
fn stream_tls_follows_the_mode() {
    let t = PgTarget::parse("postgres://u@127.0.0.1/db?sslmode=verify-full&sslrootcert=/ca.pem")
        .unwrap();
    let tls = t.replication_tls("127.0.0.1");
    assert_eq!(tls.mode, pgwire_replication::SslMode::VerifyFull);
    assert_eq!(tls.ca_pem_path, Some("/ca.pem".into()));
    assert_eq!(tls.sni_hostname.as_deref(), Some("127.0.0.1"));
    let t = PgTarget::parse("postgres://u@h/db?sslmode=disable").unwrap();
    assert_eq!(
        t.replication_tls("h").mode,
        pgwire_replication::SslMode::Disable
    );
}

#[test]
fn missing_ca_file_is_a_config_error_naming_the_path() {
    let t = PgTarget::parse(
        "postgres://u:secretpw@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    )
    .unwrap();
    let e = t.rustls_config().unwrap_err();
    assert_eq!(e.key, "postgres.url");
    assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
    assert!(!e.to_string().contains("secretpw"));
}
