//! A throw-away Kafka-protocol broker: `tansu broker` 0.6.0 with in-memory storage on a free
//! port of 127.0.0.1. Memory storage forgets everything when the process ends, so outages
//! are simulated with [`Broker::pause`]/[`Broker::resume`] (SIGSTOP/SIGCONT) or with
//! [`Broker::start_proxied`] and the returned [`TcpProxy`], never by restarting.
//!
//! Binary: `$TANSU_BIN`, else `~/.cargo/bin/tansu`, else `tansu` on `PATH`
//! (installed by scripts/setup.sh).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::proxy::TcpProxy;

const START_ATTEMPTS: usize = 4;
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running tansu broker. Dropping it resumes (if paused), SIGKILLs and reaps the process;
/// its temp dir (with `broker.log`) is kept on panic.
pub struct Broker {
    child: Child,
    dir: Option<tempfile::TempDir>,
    log_path: PathBuf,
    listen_port: u16,
    advertised: String,
    paused: bool,
}

/// Path of the tansu binary used by the harness.
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cargo/bin/tansu");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("tansu")
}

impl Broker {
    /// Starts a broker and waits until it answers a metadata request. Async because it polls
    /// for readiness (typically < 1 s). Panics with the broker log on failure.
    pub async fn start() -> Broker {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = super::free_port();
            let advertised = format!("127.0.0.1:{port}");
            match Self::try_start(port, &advertised).await {
                Ok(b) => return b,
                Err(e) => last = e,
            }
        }
        panic!("tansu broker did not start: {last}");
    }

    /// Starts a broker behind a [`TcpProxy`]: the broker listens on its own port but
    /// advertises the proxy's address, so *all* client traffic (bootstrap and partition
    /// leaders) goes through the proxy, which can then pause/cut it.
    /// [`Broker::bootstrap`] returns the proxy address.
    pub async fn start_proxied() -> (Broker, TcpProxy) {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = super::free_port();
            let proxy = TcpProxy::start(([127, 0, 0, 1], port).into()).await;
            let advertised = proxy.addr().to_string();
            match Self::try_start(port, &advertised).await {
                Ok(b) => return (b, proxy),
                Err(e) => last = e,
            }
        }
        panic!("tansu broker (proxied) did not start: {last}");
    }

    async fn try_start(port: u16, advertised: &str) -> Result<Broker, String> {
        let dir = tempfile::Builder::new()
            .prefix("outbox-it-broker-")
            .tempdir_in(super::tmp_root())
            .map_err(|e| format!("temp dir: {e}"))?;
        let log_path = dir.path().join("broker.log");
        let log = File::create(&log_path).map_err(|e| format!("create log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let bin = tansu_bin();
        let child = Command::new(&bin)
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{advertised}"))
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .current_dir(dir.path())
            // Keep the environment from overriding anything relevant.
            .env_remove("CLUSTER_ID")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("NO_COLOR", "1")
            // Not the test's RUST_LOG (which may be set for the relay): `$TANSU_LOG` or warn.
            .env(
                "RUST_LOG",
                std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| {
                format!(
                    "spawn {}: {e} (run scripts/setup.sh to install tansu 0.6.0)",
                    bin.display()
                )
            })?;
        let mut broker = Broker {
            child,
            dir: Some(dir),
            log_path,
            listen_port: port,
            advertised: advertised.to_string(),
            paused: false,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(format!(
                    "tansu exited with {status}\n--- {} ---\n{}",
                    broker.log_path.display(),
                    super::tail_file(&broker.log_path, 30)
                ));
            }
            // tansu prints "ready in …" only after binding its listener: this makes sure the
            // metadata answer comes from this process, not from another one on a reused port.
            let bound = broker.log().contains("ready in");
            let bootstrap = broker.advertised.clone();
            let ok = bound
                && tokio::task::spawn_blocking(move || metadata_ok(&bootstrap))
                    .await
                    .unwrap_or(false);
            if ok {
                eprintln!(
                    "[support] tansu broker pid {} on 127.0.0.1:{port} advertised {} (log: {})",
                    broker.child.id(),
                    broker.advertised,
                    broker.log_path.display()
                );
                return Ok(broker);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "tansu did not answer metadata within {READY_TIMEOUT:?}\n--- {} ---\n{}",
                    broker.log_path.display(),
                    super::tail_file(&broker.log_path, 30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `127.0.0.1:PORT` for `bootstrap.servers` (the proxy's address for a proxied broker).
    pub fn bootstrap(&self) -> String {
        self.advertised.clone()
    }

    /// The port the broker process itself listens on.
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Contents of the broker's stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// SIGSTOP: the broker stops answering but connections stay open.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn signal(&self, sig: libc::c_int) {
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }
}

/// True if a metadata request to `bootstrap` succeeds within ~2 s (blocking).
pub fn metadata_ok(bootstrap: &str) -> bool {
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("socket.connection.setup.timeout.ms", "2000")
        .set("log_level", "3")
        .create()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    consumer
        .fetch_metadata(None, Duration::from_secs(2))
        .map(|m| !m.brokers().is_empty())
        .unwrap_or(false)
}

impl Drop for Broker {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.dir.take() {
            if super::keep_artifacts() {
                let path = dir.keep();
                eprintln!(
                    "[support] kept broker dir {} (log: {})\n--- last lines ---\n{}",
                    path.display(),
                    path.join("broker.log").display(),
                    super::tail_file(&path.join("broker.log"), 30)
                );
            }
        }
    }
}
