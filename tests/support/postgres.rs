//! A throw-away PostgreSQL 15 cluster with `wal_level=logical`, listening on a free port of
//! 127.0.0.1 only.
//!
//! Authentication: the `postgres` superuser connects without a password (TCP from
//! 127.0.0.1 and the unix socket in the cluster dir); every other role needs its SCRAM
//! password over TCP (also for replication connections).
//!
//! Runs `initdb`/`pg_ctl` as the `postgres` system user when the test runs as root (initdb
//! refuses root). Binaries: `$PG_BIN` or `/usr/lib/postgresql/15/bin`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use tokio_postgres::{Client, NoTls};

const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const START_ATTEMPTS: usize = 4;

/// A running (or stopped, see [`PgCluster::stop`]) PostgreSQL cluster. Dropping it stops the
/// server (`pg_ctl stop -m immediate`) and removes its directory (kept on panic).
///
/// A process that ends without dropping it (killed, or a cluster held in a static) would
/// leave the server running: its [`watchdog`] stops it then.
pub struct PgCluster {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    port: u16,
    running: bool,
    run_as_postgres: bool,
    watchdog: Option<super::ExitWatchdog>,
}

/// The cluster's [`super::ExitWatchdog`]: when the test process ends without dropping the
/// cluster, it stops the postmaster named in `postmaster.pid` at that moment (SIGQUIT,
/// PostgreSQL's immediate shutdown, which also frees its shared memory; SIGKILL after 5 s)
/// and removes the cluster's directory unless artifacts are kept. `Drop` of the cluster
/// kills it first and cleans up itself.
fn watchdog(root: &Path) -> Option<super::ExitWatchdog> {
    const SCRIPT: &str = r#"pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
fi
[ "$2" = keep ] || rm -rf "$1""#;
    let keep = if super::keep_artifacts() {
        "keep"
    } else {
        "remove"
    };
    super::ExitWatchdog::spawn(SCRIPT, &[root.as_os_str(), keep.as_ref()]).ok()
}

fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN));
    dir.join(name)
}

fn runuser() -> PathBuf {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy the ids at once.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(
            !pw.is_null(),
            "no `postgres` system user: run scripts/setup.sh (installs postgresql-15)"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

/// Percent-encodes everything but unreserved characters (for URL user/password parts).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Quotes an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl PgCluster {
    /// initdb + start. Async because it runs external commands (~1–3 s). Panics on failure
    /// with the relevant logs.
    pub async fn start() -> PgCluster {
        let run_as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("outbox-it-pg-")
            .tempdir_in(super::tmp_root())
            .expect("create temp dir for PostgreSQL");
        let root = dir.path().to_path_buf();
        if run_as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).expect("chown pg temp dir");
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).expect("chmod pg dir");

        let mut pg = PgCluster {
            dir: Some(dir),
            root,
            port: 0,
            running: false,
            run_as_postgres,
            watchdog: None,
        };
        pg.watchdog = watchdog(&pg.root);

        let data = pg.data_dir();
        let initdb = pg_bin("initdb");
        let out = pg
            .run_tool(
                &initdb,
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
            )
            .await;
        if let Err(e) = out {
            panic!("initdb failed: {e}");
        }

        fs::write(
            data.join("pg_hba.conf"),
            "# written by tests/support/postgres.rs\n\
             local all         all                     trust\n\
             local replication all                     trust\n\
             host  all         postgres 127.0.0.1/32   trust\n\
             host  replication postgres 127.0.0.1/32   trust\n\
             host  all         all      127.0.0.1/32   scram-sha-256\n\
             host  replication all      127.0.0.1/32   scram-sha-256\n",
        )
        .expect("write pg_hba.conf");

        let conf = format!(
            "\n# --- tests/support/postgres.rs ---\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{sock}'\n\
             wal_level = logical\n\
             max_replication_slots = 20\n\
             max_wal_senders = 20\n\
             max_connections = 100\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 128MB\n\
             password_encryption = 'scram-sha-256'\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%u@%d/%a '\n\
             log_replication_commands = on\n\
             log_min_messages = info\n",
            sock = pg.root.display()
        );
        append(&data.join("postgresql.conf"), &conf);

        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            pg.port = super::free_port();
            append(
                &data.join("postgresql.conf"),
                &format!("port = {}\n", pg.port),
            );
            match pg.pg_ctl(&["start", "-w", "-t", "60"]).await {
                Ok(()) => {
                    pg.running = true;
                    eprintln!(
                        "[support] PostgreSQL on 127.0.0.1:{} (log: {})",
                        pg.port,
                        pg.log_path().display()
                    );
                    return pg;
                }
                Err(e) => {
                    last_err = e;
                    // Only a bind conflict is worth a retry with another port.
                    if !pg.log().contains("could not bind")
                        && !pg.log().contains("could not create any TCP/IP sockets")
                    {
                        break;
                    }
                }
            }
        }
        panic!(
            "PostgreSQL did not start: {last_err}\n--- log {} ---\n{}",
            pg.log_path().display(),
            super::tail_file(&pg.log_path(), 40)
        );
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (superuser, no password needed).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/DB` with user and password percent-encoded.
    pub fn url_for(&self, db: &str, user: &str, password: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            enc(user),
            enc(password),
            self.port,
            enc(db)
        )
    }

    /// Superuser URL for database `db`.
    pub fn url_db(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, enc(db))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// Contents of the server log (lossy UTF-8), for failure messages.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Superuser client on database `postgres`; the connection task is spawned.
    pub async fn client(&self) -> Client {
        self.client_db("postgres").await
    }

    /// Superuser client on database `db`; the connection task is spawned.
    pub async fn client_db(&self, db: &str) -> Client {
        connect(&self.url_db(db)).await.unwrap_or_else(|e| {
            panic!(
                "connect to {}: {e} (server log: {})",
                self.url_db(db),
                self.log_path().display()
            )
        })
    }

    /// `CREATE DATABASE name`.
    pub async fn create_database(&self, name: &str) {
        self.client()
            .await
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    }

    /// `CREATE ROLE name LOGIN PASSWORD 'password' <attrs>` (attrs e.g. `"REPLICATION"`).
    pub async fn create_role(&self, name: &str, password: &str, attrs: &str) {
        self.client()
            .await
            .batch_execute(&format!(
                "CREATE ROLE {} LOGIN PASSWORD {} {attrs}",
                quote_ident(name),
                quote_literal(password)
            ))
            .await
            .unwrap_or_else(|e| panic!("CREATE ROLE {name}: {e}"));
    }

    /// Turns TLS on with this server certificate chain and key (PEM files, copied into the
    /// data directory, owned by the server's user, key mode 0600): `ALTER SYSTEM SET ssl = on`,
    /// `ssl_cert_file`, `ssl_key_file`, then a fast restart (same port). pg_hba's `host` lines
    /// match TLS and plain connections alike, so authentication is unchanged (SCRAM for every
    /// role but `postgres`). Certificates can be swapped later with this method again.
    pub async fn enable_ssl(&mut self, cert_pem: &Path, key_pem: &Path) {
        let data = self.data_dir();
        for (src, name, mode) in [
            (cert_pem, "server.crt", 0o644),
            (key_pem, "server.key", 0o600),
        ] {
            let dst = data.join(name);
            fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {src:?} to {dst:?}: {e}"));
            fs::set_permissions(&dst, fs::Permissions::from_mode(mode)).expect("chmod");
            if self.run_as_postgres {
                let (uid, gid) = postgres_ids();
                std::os::unix::fs::chown(&dst, Some(uid), Some(gid)).expect("chown cert");
            }
        }
        let client = self.client().await;
        // One statement per call: ALTER SYSTEM refuses an (implicit) transaction block.
        for sql in [
            "ALTER SYSTEM SET ssl = on",
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
            "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        ] {
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        drop(client);
        self.restart("fast").await;
    }

    /// Terminates all walsender backends (replication connections); returns how many.
    pub async fn terminate_walsenders(&self) -> i64 {
        let row = self
            .client()
            .await
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE backend_type = 'walsender'",
                &[],
            )
            .await
            .expect("terminate walsenders");
        row.get(0)
    }

    /// `pg_ctl restart -m MODE` (`"smart"`, `"fast"` or `"immediate"`; immediate means crash
    /// recovery on start). Same port afterwards.
    pub async fn restart(&mut self, mode: &str) {
        assert!(
            matches!(mode, "smart" | "fast" | "immediate"),
            "bad mode {mode}"
        );
        if !self.running {
            return self.start_again().await;
        }
        let res = self
            .pg_ctl(&["restart", "-w", "-t", "60", "-m", mode])
            .await;
        self.check(res, "restart");
    }

    /// `pg_ctl stop -m fast`.
    pub async fn stop(&mut self) {
        self.stop_with("fast").await
    }

    /// `pg_ctl stop -m MODE`.
    pub async fn stop_with(&mut self, mode: &str) {
        assert!(
            matches!(mode, "smart" | "fast" | "immediate"),
            "bad mode {mode}"
        );
        if !self.running {
            return;
        }
        let res = self.pg_ctl(&["stop", "-w", "-t", "60", "-m", mode]).await;
        self.running = false;
        self.check(res, "stop");
    }

    /// Starts a cluster stopped by [`PgCluster::stop`] again on the same port.
    pub async fn start_again(&mut self) {
        if self.running {
            return;
        }
        let res = self.pg_ctl(&["start", "-w", "-t", "60"]).await;
        self.check(res, "start");
        self.running = true;
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    fn check(&self, res: Result<(), String>, what: &str) {
        if let Err(e) = res {
            panic!(
                "pg_ctl {what} failed: {e}\n--- log {} ---\n{}",
                self.log_path().display(),
                super::tail_file(&self.log_path(), 40)
            );
        }
    }

    async fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.data_dir();
        let log = self.log_path();
        let mut all = vec!["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run_tool(&pg_bin("pg_ctl"), &all).await
    }

    /// Runs a PostgreSQL tool (as `postgres` when root). Output goes to `tool.out` in the
    /// cluster dir, never to a pipe: the postmaster would inherit a pipe and keep it open.
    async fn run_tool(&self, tool: &Path, args: &[&str]) -> Result<(), String> {
        let out_path = self.root.join("tool.out");
        let out = File::create(&out_path).map_err(|e| format!("create {out_path:?}: {e}"))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = if self.run_as_postgres {
            let mut c = Command::new(runuser());
            c.args(["-u", "postgres", "--"]).arg(tool);
            c
        } else {
            Command::new(tool)
        };
        cmd.args(args)
            .current_dir(&self.root)
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(false);
        let status = cmd
            .status()
            .await
            .map_err(|e| format!("spawn {}: {e}", tool.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} {:?} exited with {status}: {}",
                tool.display(),
                args,
                fs::read_to_string(&out_path).unwrap_or_default().trim()
            ))
        }
    }

    fn stop_blocking(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let data = self.data_dir();
        let pg_ctl = pg_bin("pg_ctl");
        let mut cmd = if self.run_as_postgres {
            let mut c = std::process::Command::new(runuser());
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let res = cmd
            .arg("-D")
            .arg(&data)
            .args(["stop", "-w", "-t", "30", "-m", "immediate"])
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(res, Ok(s) if s.success()) {
            // Last resort: SIGKILL the postmaster from postmaster.pid (children exit when
            // they notice the postmaster is gone).
            if let Ok(pidfile) = fs::read_to_string(data.join("postmaster.pid")) {
                if let Some(pid) = pidfile.lines().next().and_then(|l| l.trim().parse().ok()) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Before anything else: the watchdog must not stop or remove what this drop keeps.
        self.watchdog.take();
        self.stop_blocking();
        if let Some(dir) = self.dir.take() {
            if super::keep_artifacts() {
                let path = dir.keep();
                eprintln!(
                    "[support] kept PostgreSQL dir {} (server log: {})\n--- last lines ---\n{}",
                    path.display(),
                    path.join("postgres.log").display(),
                    super::tail_file(&path.join("postgres.log"), 30)
                );
            }
        }
    }
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

/// Connects with tokio-postgres (NoTls) and spawns the connection task.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
