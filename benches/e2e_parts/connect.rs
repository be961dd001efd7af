//! Debezium's PostgreSQL connector with the Outbox Event Router in a Kafka
//! Connect standalone worker, as a contender of the end-to-end benchmark.
//!
//! The jars come from Maven Central (`deploy/debezium/pom.xml`, fetched by
//! `scripts/bench.sh --against debezium` into `$DEBEZIUM_LIBS`); the worker
//! and connector settings are the commented templates in `deploy/debezium/`,
//! filled in here. The JVM is a process-group leader with a watchdog beside
//! it (as in `tests/support/broker.rs`): when this process ends for any
//! reason, the watchdog's stdin closes and it kills the JVM's group.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The connector's replication slot and publication.
pub const SLOT: &str = "dbz_outbox";
pub const PUBLICATION: &str = "dbz_outbox_pub";

/// Debezium's jars: `$DEBEZIUM_LIBS`.
pub fn libs() -> Option<PathBuf> {
    std::env::var_os("DEBEZIUM_LIBS")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
}

/// The Connect JVM's options: `$CONNECT_JAVA_OPTS`, else a 1 GiB heap and
/// the JVM's own choice of GC and JIT (what an operator would run; the
/// broker's C1-only, serial-GC diet would handicap Debezium's throughput).
pub fn java_opts() -> Vec<String> {
    std::env::var("CONNECT_JAVA_OPTS")
        .unwrap_or_else(|_| "-Xms256m -Xmx1g -Djava.awt.headless=true".into())
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Versions of the fetched jars, for the report.
pub fn versions(libs: &Path) -> (String, String) {
    let mut connect = "?".to_string();
    let mut debezium = "?".to_string();
    if let Ok(dir) = std::fs::read_dir(libs) {
        for e in dir.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = n
                .strip_prefix("connect-runtime-")
                .and_then(|v| v.strip_suffix(".jar"))
            {
                connect = v.to_string();
            }
            if let Some(v) = n
                .strip_prefix("debezium-connector-postgres-")
                .and_then(|v| v.strip_suffix(".jar"))
            {
                debezium = v.to_string();
            }
        }
    }
    (connect, debezium)
}

fn template(name: &str) -> Result<String> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/debezium")
        .join(name);
    std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))
}

/// A running Connect worker with the connector.
pub struct Connect {
    jvm: Option<Child>,
    watchdog: Option<Child>,
    _watchdog_stdin: Option<ChildStdin>,
    pub log: PathBuf,
    /// The log is scanned for a failed task at most this often.
    last_scan: Instant,
}

impl Connect {
    /// Write the configs into `dir` (a fresh offsets file each time: the
    /// connector starts at its slot's position) and start the worker.
    pub fn spawn(dir: &Path, bootstrap: &str, pg_port: u16, db: &str) -> Result<Connect> {
        let libs =
            libs().context("DEBEZIUM_LIBS is not set: run scripts/bench.sh --against debezium")?;
        std::fs::create_dir_all(dir)?;
        let offsets = dir.join("offsets.dat");
        let _ = std::fs::remove_file(&offsets);
        let rest_port = crate::support::free_port();
        let fill = |t: String| {
            t.replace("@BOOTSTRAP@", bootstrap)
                .replace("@REST_PORT@", &rest_port.to_string())
                .replace("@OFFSETS_FILE@", &offsets.display().to_string())
                .replace("@PG_PORT@", &pg_port.to_string())
                .replace("@PG_DB@", db)
                .replace("@SLOT@", SLOT)
                .replace("@PUBLICATION@", PUBLICATION)
        };
        let worker = dir.join("worker.properties");
        let connector = dir.join("connector.properties");
        std::fs::write(&worker, fill(template("worker.properties")?))?;
        std::fs::write(&connector, fill(template("connector.properties")?))?;
        let log4j = dir.join("log4j2.properties");
        std::fs::write(&log4j, LOG4J)?;
        let log = dir.join(format!(
            "connect-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ));
        let file = std::fs::File::create(&log)?;
        let jvm = Command::new("java")
            .args(java_opts())
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .arg("-cp")
            .arg(format!("{}/*", libs.display()))
            .arg("org.apache.kafka.connect.cli.ConnectStandalone")
            .arg(&worker)
            .arg(&connector)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .process_group(0)
            .spawn()
            .context("spawn java (Kafka Connect)")?;
        let pgid = jvm.id();
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!("read _ignored; kill -9 -{pgid} 2>/dev/null"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn watchdog")?;
        let stdin = watchdog.stdin.take();
        Ok(Connect {
            jvm: Some(jvm),
            watchdog: Some(watchdog),
            _watchdog_stdin: stdin,
            log,
            last_scan: Instant::now(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.jvm.as_ref().map_or(0, Child::id)
    }

    /// Err with the log tail if the JVM exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.jvm.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!(
                    "Kafka Connect exited with {st}; log {}:\n{}",
                    self.log.display(),
                    crate::support::tail_file(&self.log, 40)
                );
            }
        }
        if self.last_scan.elapsed() < Duration::from_millis(500) {
            return Ok(());
        }
        self.last_scan = Instant::now();
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // Only a task that died counts: Connect also logs ERROR for an offset
        // flush that timed out ("Timed out waiting to flush"), which it
        // retries at the next commit while the task goes on producing.
        if let Some(line) = text.lines().find(|l| {
            l.contains("ERROR")
                && (l.contains("unrecoverable exception")
                    || l.contains("will not recover until manually restarted")
                    || l.contains("Failed to start"))
        }) {
            bail!(
                "Kafka Connect task failed: {line}\nlog {}:\n{}",
                self.log.display(),
                crate::support::tail_file(&self.log, 40)
            );
        }
        Ok(())
    }

    /// SIGTERM (Connect stops the task and flushes offsets), SIGKILL of the
    /// group after `deadline`.
    pub fn stop(&mut self, deadline: Duration) {
        if let Some(mut c) = self.jvm.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + deadline;
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Drop for Connect {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(0));
    }
}

/// Warnings only, plus the producer's effective configuration. A properties
/// file: log4j2 reads YAML only with jackson-dataformat-yaml, which Connect's
/// classpath lacks.
const LOG4J: &str = "status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = STDOUT
logger.producer.name = org.apache.kafka.clients.producer.ProducerConfig
logger.producer.level = info
";
