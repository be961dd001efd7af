//! Observability and operations (issue 4): the metrics endpoint and health
//! checks of a running relay, a real Prometheus scraping it, heartbeats in
//! the WAL, the fatal lost-slot path, `outbox-relay status`, and the local
//! stack files (compose, Dockerfile, Prometheus rules, Grafana dashboard)
//! checked as far as this machine can without a Docker engine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixture::{relay_bin, Env};
use crate::support::{self, free_port, wait_for_msg, wait_until_msg};

const TOPIC: &str = "outbox.order";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Parse a YAML file with python3 + PyYAML (installed by scripts/setup.sh)
/// into JSON.
fn yaml(rel: &str) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))")
        .arg(root().join(rel))
        .output()
        .expect("run python3 (scripts/setup.sh installs it with PyYAML)");
    assert!(
        out.status.success(),
        "{rel} does not parse as YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// Metric family names (without `_bucket`/`_sum`/`_count`) that `text`
/// mentions: every `outbox_relay_…` identifier.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(pos) = rest.find("outbox_relay_") {
        let tail = &rest[pos..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let preceded_by_ident = rest[..pos]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !preceded_by_ident {
            out.insert(family(&tail[..end]).to_string());
        }
        rest = &tail[end..];
    }
    out
}

fn family(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return base;
        }
    }
    name
}

/// Metric family names in a Prometheus text exposition.
fn exported_metrics(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            family(&l[..end]).to_string()
        })
        .collect()
}

/// `name{labels}` → value, from a Prometheus exposition.
pub fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The metric names the dashboard and the alert rules use.
fn dashboard_and_alert_metrics() -> BTreeSet<String> {
    let mut names = referenced_metrics(&read("deploy/grafana/dashboards/outbox-relay.json"));
    names.extend(referenced_metrics(&read("deploy/prometheus/alerts.yml")));
    names
}

/// A minimal HTTP GET (HTTP/1.0, so the answer is never chunked): status and
/// body.
async fn http_get(addr: &str, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "http get"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text:.200}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn metrics_addr(env: &Env) -> String {
    format!("127.0.0.1:{}", env.metrics_port)
}

/// The relay's `/metrics` body, `None` unless it answered 200.
pub async fn scrape(env: &Env) -> Option<String> {
    match http_get(&metrics_addr(env), "/metrics").await {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// Insert `n` events in transactions of up to 5 rows; returns their ids.
async fn write_events(env: &Env, n: usize) -> std::collections::HashSet<i64> {
    let mut c = env.client().await;
    let mut ids = std::collections::HashSet::new();
    let mut written = 0;
    while written < n {
        let tx = c.transaction().await.expect("begin");
        for _ in 0..(n - written).min(5) {
            let id: i64 = tx
                .query_one(
                    "SELECT public.outbox_emit('order', $1, 'OrderCreated', '{\"ok\": true}'::jsonb)",
                    &[&format!("o-{}", written % 3)],
                )
                .await
                .expect("emit")
                .get(0);
            ids.insert(id);
            written += 1;
        }
        tx.commit().await.expect("commit");
    }
    ids
}

/// Start a relay and wait until `/readyz` says ready.
async fn ready_relay(env: &Env) -> crate::fixture::RelayProc {
    let relay = env.spawn_relay();
    let addr = metrics_addr(env);
    wait_until_msg(
        "/readyz 200 after start",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { matches!(http_get(&addr, "/readyz").await, Ok((200, _))) },
    )
    .await;
    relay
}

// ---------------------------------------------------------------------------
// Static checks: compose stack, Dockerfile, Prometheus rules, dashboard.

#[test]
fn compose_stack_references_files_that_exist() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    for s in ["postgres", "kafka", "outbox-relay", "prometheus", "grafana"] {
        assert!(services.contains_key(s), "service {s} missing");
    }

    // Every host path mounted into a container exists.
    let mut mounts: BTreeMap<String, String> = BTreeMap::new(); // container path -> host path
    for (name, svc) in services {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let spec = v.as_str().expect("short volume syntax");
            let mut parts = spec.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            if src.starts_with('.') || src.starts_with('/') {
                let p = root().join(src);
                assert!(p.exists(), "{name}: mounted {src} does not exist");
                mounts.insert(format!("{name}:{dst}"), src.trim_start_matches("./").into());
            }
        }
    }

    // PostgreSQL: logical decoding, and every file of sql/ in the init order.
    let pg = &services["postgres"];
    let cmd = pg["command"].to_string();
    assert!(cmd.contains("wal_level=logical"), "{cmd}");
    let initdb: Vec<_> = mounts
        .iter()
        .filter(|(k, _)| k.starts_with("postgres:/docker-entrypoint-initdb.d/"))
        .collect();
    for entry in std::fs::read_dir(root().join("sql")).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let host = format!("sql/{file}");
        assert!(
            mounts.values().any(|h| *h == host),
            "{host} is not mounted into the postgres service"
        );
        if file != "900_relay_role.sql" {
            assert!(
                initdb.iter().any(|(_, h)| **h == host),
                "{host} is not run by /docker-entrypoint-initdb.d"
            );
        }
    }
    // The role script needs -v relay_password: a wrapper runs it.
    let wrapper = "deploy/postgres/900_relay_role.sh";
    assert!(initdb.iter().any(|(_, h)| *h == wrapper));
    let text = read(wrapper);
    assert!(text.contains("relay_password") && text.contains("/outbox-sql/900_relay_role.sql"));
    assert!(mounts.contains_key("postgres:/outbox-sql/900_relay_role.sql"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root().join(wrapper))
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "{wrapper} must be executable");

    // Kafka: the official image in KRaft mode.
    let kafka = &services["kafka"];
    assert!(kafka["image"]
        .as_str()
        .unwrap()
        .starts_with("apache/kafka:"));
    assert!(kafka["environment"]["KAFKA_PROCESS_ROLES"]
        .as_str()
        .unwrap()
        .contains("controller"));

    // The relay: built from the top-level Dockerfile, configured by env.
    let relay = &services["outbox-relay"];
    let ctx = root().join(relay["build"]["context"].as_str().expect("build.context"));
    let dockerfile = ctx.join(
        relay["build"]["dockerfile"]
            .as_str()
            .unwrap_or("Dockerfile"),
    );
    assert!(dockerfile.exists(), "{}", dockerfile.display());
    check_dockerfile(&dockerfile, &ctx);
    let env: BTreeMap<String, String> = relay["environment"]
        .as_object()
        .expect("environment map")
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().map(str::to_string).unwrap_or(v.to_string());
            (k.clone(), interpolate(&v))
        })
        .collect();
    for k in [
        "OUTBOX_RELAY_POSTGRES_URL",
        "OUTBOX_RELAY_KAFKA_BROKERS",
        "OUTBOX_RELAY_METRICS_LISTEN",
    ] {
        assert!(env.contains_key(k), "relay environment lacks {k}");
    }
    // The relay accepts this environment as its configuration.
    let mut c = Command::new(relay_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTBOX_RELAY_") {
            c.env_remove(k);
        }
    }
    let out = c.envs(&env).arg("check-config").output().unwrap();
    assert!(
        out.status.success(),
        "compose environment is not a valid relay config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics_port = env["OUTBOX_RELAY_METRICS_LISTEN"]
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();

    // Prometheus scrapes the relay service on its metrics port and loads the rules.
    let prom = yaml("deploy/prometheus/prometheus.yml");
    let targets = prom["scrape_configs"].to_string();
    assert!(
        targets.contains(&format!("outbox-relay:{metrics_port}")),
        "prometheus.yml must scrape outbox-relay:{metrics_port}: {targets}"
    );
    for rule_file in prom["rule_files"].as_array().expect("rule_files") {
        let rf = rule_file.as_str().unwrap();
        assert!(root().join("deploy/prometheus").join(rf).exists(), "{rf}");
        assert!(
            mounts.contains_key(&format!("prometheus:/etc/prometheus/{rf}")),
            "rule file {rf} is not mounted next to prometheus.yml"
        );
    }
    assert!(mounts.contains_key("prometheus:/etc/prometheus/prometheus.yml"));

    // Grafana: provisioning mounted, provider path = mounted dashboards dir,
    // datasource uid = the uid the dashboard uses.
    assert_eq!(
        mounts
            .get("grafana:/etc/grafana/provisioning")
            .map(String::as_str),
        Some("deploy/grafana/provisioning")
    );
    let provider = yaml("deploy/grafana/provisioning/dashboards/outbox-relay.yml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(
        mounts.get(&format!("grafana:{path}")).map(String::as_str),
        Some("deploy/grafana/dashboards"),
        "the dashboard provider reads {path}, which must be the mounted dashboards dir"
    );
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let ds_uid = ds["datasources"][0]["uid"].as_str().unwrap();
    assert!(ds["datasources"][0]["url"]
        .as_str()
        .unwrap()
        .contains("prometheus:9090"));
    let dash: Value = serde_json::from_str(&read("deploy/grafana/dashboards/outbox-relay.json"))
        .expect("dashboard is JSON");
    for p in dash["panels"].as_array().unwrap() {
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], ds_uid, "panel {}", p["title"]);
        }
    }
}

/// `${VAR:-default}` → default (what compose does with VAR unset).
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map(|(_, d)| d).unwrap_or(""));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Multi-stage, the required base images, and every COPY source exists in
/// the build context (and is not excluded by .dockerignore).
fn check_dockerfile(path: &Path, ctx: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let froms: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains("rust:1-bookworm"), "{froms:?}");
    assert!(
        froms.last().unwrap().contains("debian:bookworm-slim"),
        "{froms:?}"
    );
    let ignored: Vec<String> = std::fs::read_to_string(ctx.join(".dockerignore"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    for line in text.lines().map(str::trim) {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.contains("--from=") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(ctx.join(src).exists(), "Dockerfile copies missing {src}");
            assert!(
                !ignored.iter().any(|i| i == src),
                ".dockerignore excludes {src}, which the Dockerfile copies"
            );
        }
    }
}

#[test]
fn promtool_accepts_config_and_rules() {
    for args in [
        vec!["check", "config", "deploy/prometheus/prometheus.yml"],
        vec!["check", "rules", "deploy/prometheus/alerts.yml"],
        vec!["test", "rules", "deploy/prometheus/alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(root())
            .output()
            .expect("run promtool (Debian package prometheus; scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dashboard_and_alerts_use_only_declared_metrics() {
    let declared: BTreeSet<String> = outbox_relay::metrics::ALL
        .iter()
        .map(|s| s.to_string())
        .collect();
    let used = dashboard_and_alert_metrics();
    let unknown: Vec<_> = used.difference(&declared).collect();
    assert!(
        unknown.is_empty(),
        "not in outbox_relay::metrics::ALL: {unknown:?}"
    );
    for required in [
        outbox_relay::metrics::LAG_BYTES,
        outbox_relay::metrics::LAG_SECONDS,
        outbox_relay::metrics::EVENTS_PUBLISHED,
        outbox_relay::metrics::PRODUCE_LATENCY,
        outbox_relay::metrics::DLQ_TOTAL,
        outbox_relay::metrics::IN_FLIGHT,
    ] {
        assert!(
            referenced_metrics(&read("deploy/grafana/dashboards/outbox-relay.json"))
                .contains(required),
            "dashboard lacks {required}"
        );
    }
    let dash = read("deploy/grafana/dashboards/outbox-relay.json");
    assert!(
        dash.contains("histogram_quantile(0.99"),
        "latency quantiles"
    );
}

/// The README's metrics reference names every exported metric. (README.md
/// is the lead's; this fails until it lists them.)
#[test]
fn every_metric_is_documented_in_readme() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap_or_default();
    let missing: Vec<_> = outbox_relay::metrics::ALL
        .iter()
        .filter(|m| !readme.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md does not document: {missing:?}"
    );
}

// ---------------------------------------------------------------------------
// Against a running relay.

/// Metrics only a relay with `kafka.delivery = "exactly-once"` records.
const EXACTLY_ONCE_ONLY: &[&str] = &[outbox_relay::metrics::KAFKA_COMMIT_SECONDS];

/// Scrape until every name of `wanted` is exported (30 s at most); the
/// exposition.
async fn scrape_until_exported(env: &Env, wanted: &BTreeSet<String>, relay: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(env).await.unwrap_or_default();
        let exported = exported_metrics(&text);
        let missing: Vec<_> = wanted.difference(&exported).collect();
        if missing.is_empty() {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "used by the dashboard or alerts but not exported by a running {relay} relay: \
             {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_exports_every_dashboard_and_alert_metric() {
    let env = Env::start(&[TOPIC]).await;
    let _relay = ready_relay(&env).await;
    let ids = write_events(&env, 30).await;
    let got = env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
    assert!(got.len() >= ids.len());

    let mut wanted = dashboard_and_alert_metrics();
    for m in EXACTLY_ONCE_ONLY {
        assert!(wanted.remove(*m), "{m} is not on the dashboard any more");
    }
    let text = scrape_until_exported(&env, &wanted, "at-least-once").await;
    // Histograms are real Prometheus histograms with the configured buckets.
    let pl = outbox_relay::metrics::PRODUCE_LATENCY;
    assert!(
        text.contains(&format!("{pl}_bucket{{le=\"0.0005\"}}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{pl}_bucket{{le=\"60\"}}")),
        "{text}"
    );
    assert!(text.contains(&format!("# HELP {pl} ")), "described");
    let ws = outbox_relay::metrics::SLOT_WAL_STATUS;
    assert!(
        text.contains(&format!("{ws}{{status=\"reserved\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{ws}{{status=\"lost\"}} 0")),
        "{text}"
    );
}

/// The dashboard's exactly-once panel has data: an exactly-once relay
/// exports what the at-least-once one does not, as a real histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_of_an_exactly_once_relay_exports_its_dashboard_metrics() {
    let eo = crate::exactly_once::Eo::start(1000).await;
    let _relay = eo.spawn(&[]);
    let ids = write_events(&eo.env, 30).await;
    let got = eo
        .read_committed(TOPIC, &ids, Duration::from_secs(60))
        .await;
    assert!(got.len() >= ids.len());
    let wanted: BTreeSet<String> = EXACTLY_ONCE_ONLY.iter().map(|m| m.to_string()).collect();
    let text = scrape_until_exported(&eo.env, &wanted, "exactly-once").await;
    let commit = outbox_relay::metrics::KAFKA_COMMIT_SECONDS;
    assert!(
        text.contains(&format!("{commit}_bucket{{le=\"60\"}}")),
        "{text}"
    );
}

/// Prometheus (Debian package) on a free port, deleted with its data on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Prometheus {
    fn start(target: &str, rule_file: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: outbox-relay\n    static_configs:\n      - targets: ['{target}']\n",
                rule_file.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("prometheus.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start prometheus (Debian package; scripts/setup.sh installs it)");
        Prometheus {
            child,
            port,
            _dir: dir,
            log,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn api(&self, path_and_query: &str) -> Option<Value> {
        let (status, body) = http_get(&self.addr(), path_and_query).await.ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// Instant query → the result vector.
    async fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let v = self
            .api(&format!("/api/v1/query?query={}", urlencode(promql)))
            .await?;
        (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned())?
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ---\n{}",
                support::tail_file(&self.log, 40)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_lag_from_the_relay() {
    let env = Env::start(&[TOPIC]).await;
    let _relay = ready_relay(&env).await;
    let ids = write_events(&env, 10).await;
    env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;

    let target = metrics_addr(&env);
    let prom = Prometheus::start(&target, &root().join("deploy/prometheus/alerts.yml"));
    for metric in [
        outbox_relay::metrics::LAG_BYTES,
        outbox_relay::metrics::LAG_SECONDS,
    ] {
        let value = wait_for_msg(
            &format!("{metric} through Prometheus's query API"),
            Duration::from_secs(60),
            Duration::from_millis(500),
            || async {
                let result = prom.query(metric).await?;
                let sample = result.first()?;
                assert_eq!(sample["metric"]["instance"], target.as_str());
                assert_eq!(sample["metric"]["job"], "outbox-relay");
                sample["value"][1].as_str()?.parse::<f64>().ok()
            },
        )
        .await;
        assert!(value.is_finite() && value >= 0.0, "{metric} = {value}");
    }
    let up = prom.query("up").await.expect("up");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");

    // The alert rules evaluate cleanly against the relay's real series.
    wait_until_msg(
        "every alert rule evaluated with health ok",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let Some(v) = prom.api("/api/v1/rules").await else {
                return false;
            };
            let rules: Vec<&Value> = v["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            for r in &rules {
                assert_ne!(
                    r["health"], "err",
                    "rule {} failed: {}",
                    r["name"], r["lastError"]
                );
            }
            !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok")
        },
    )
    .await;
    // A healthy relay fires none of them.
    let alerts = prom.api("/api/v1/alerts").await.expect("alerts");
    let firing: Vec<_> = alerts["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert!(firing.is_empty(), "{firing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_follow_stream_and_broker() {
    let env = Env::start_own_broker(&[TOPIC], "", 1000).await;
    let _relay = ready_relay(&env).await;
    let addr = metrics_addr(&env);
    assert_eq!(
        http_get(&addr, "/healthz").await.unwrap(),
        (200, "ok\n".into())
    );
    assert_eq!(http_get(&addr, "/nope").await.unwrap().0, 404);

    env.broker.pause();
    let body = wait_for_msg(
        "/readyz 503 while the broker is paused",
        Duration::from_secs(40),
        Duration::from_millis(250),
        || async {
            match http_get(&addr, "/readyz").await {
                Ok((503, body)) => Some(body),
                _ => None,
            }
        },
    )
    .await;
    assert!(body.contains("broker"), "{body}");
    assert_eq!(body.trim().lines().count(), 1, "{body}");
    // Liveness is not readiness: the process is fine.
    assert_eq!(http_get(&addr, "/healthz").await.unwrap().0, 200);

    env.broker.resume();
    wait_until_msg(
        "/readyz 200 after the broker resumed",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async { matches!(http_get(&addr, "/readyz").await, Ok((200, _))) },
    )
    .await;
    // And the relay still publishes.
    let ids = write_events(&env, 5).await;
    env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_reports_slot_and_row_counts() {
    let env = Env::start(&[TOPIC]).await;
    let _relay = ready_relay(&env).await;
    let ids = write_events(&env, 12).await;
    env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
    wait_until_msg(
        "a checkpoint row",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { env.checkpoint().await.is_some() },
    )
    .await;
    let c = env.client().await;
    // Give the counts some variety (the janitor may mark more meanwhile).
    let mut sorted: Vec<i64> = ids.iter().copied().collect();
    sorted.sort();
    c.execute(
        "UPDATE public.outbox SET status = 'FAILED' WHERE id = ANY($1)",
        &[&sorted[..2].to_vec()],
    )
    .await
    .unwrap();

    let counts = || async {
        let rows = c
            .query(
                "SELECT count(*) FILTER (WHERE status = 'PENDING'), \
                        count(*) FILTER (WHERE status = 'PROCESSED'), \
                        count(*) FILTER (WHERE status = 'FAILED') FROM public.outbox",
                &[],
            )
            .await
            .unwrap();
        (
            rows[0].get::<_, i64>(0),
            rows[0].get::<_, i64>(1),
            rows[0].get::<_, i64>(2),
        )
    };
    let (status, before) = wait_for_msg(
        "status --json with counts stable around it",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let before = counts().await;
            let out = env.relay_command(&["status", "--json"]).output().unwrap();
            assert!(
                out.status.success(),
                "status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8(out.stdout).unwrap();
            assert!(
                !stdout.contains("postgres://"),
                "status must not print the URL"
            );
            let v: Value = serde_json::from_str(&stdout).expect("status --json is JSON");
            (counts().await == before).then_some((v, before))
        },
    )
    .await;
    assert_eq!(status["rows"]["pending"], before.0, "{status:#}");
    assert_eq!(status["rows"]["processed"], before.1, "{status:#}");
    assert_eq!(status["rows"]["failed"], before.2, "{status:#}");
    assert_eq!(before.0 + before.1 + before.2, ids.len() as i64);

    let slot = &status["slot"];
    assert_eq!(slot["name"], "outbox_relay");
    assert_eq!(slot["active"], true, "{status:#}");
    assert_eq!(slot["wal_status"], "reserved");
    let confirmed = outbox_relay::sink::message::parse_lsn(
        slot["confirmed_flush_lsn"].as_str().expect("confirmed lsn"),
    )
    .unwrap();
    assert!(confirmed <= env.confirmed_flush().await);
    let ckpt = outbox_relay::sink::message::parse_lsn(
        status["checkpoint"]["lsn"]
            .as_str()
            .expect("checkpoint lsn"),
    )
    .unwrap();
    assert!(ckpt <= env.checkpoint().await.expect("checkpoint row"));
    assert!(status["checkpoint"]["age_seconds"].as_f64().unwrap() >= 0.0);
    assert!(status["lag"]["bytes"].as_i64().unwrap() >= 0);
    assert!(status["lag"]["seconds"].as_f64().unwrap() >= 0.0);
    if before.0 > 0 {
        assert!(status["oldest_pending"]["age_seconds"].as_f64().unwrap() >= 0.0);
    }

    // The table form names the same things.
    let out = env.relay_command(&["status"]).output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    for word in [
        "slot",
        "outbox_relay",
        "reserved",
        "checkpoint",
        "lag",
        "pending",
    ] {
        assert!(table.contains(word), "{word} missing from:\n{table}");
    }
}

/// Heartbeats reach the WAL, also when the relay runs as the least-privilege
/// role of sql/900_relay_role.sql (pg_logical_emit_message needs no grant),
/// which can also run `status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_reach_the_wal_as_least_privilege_role() {
    let env = Env::start_with(&[TOPIC], "heartbeat-interval = \"300ms\"\n", 1000).await;
    let c = env.client().await;
    // The role as 900_relay_role.sql creates it (minus the psql variable).
    let cfg = outbox_relay::config::Config::from_sources(
        None,
        &[],
        &outbox_relay::config::Overrides {
            postgres_url: Some(env.url()),
            kafka_brokers: Some(env.broker.bootstrap()),
        },
    )
    .unwrap();
    let role_sql = outbox_relay::schema::role_statement(&cfg).sql;
    let grants: String = role_sql
        .lines()
        .filter(|l| l.starts_with("GRANT "))
        .map(|l| format!("{l}\n"))
        .collect();
    c.batch_execute(&format!(
        "CREATE ROLE outbox_relay LOGIN REPLICATION PASSWORD 'hb-secret';\n{grants}"
    ))
    .await
    .unwrap();
    // A second slot with test_decoding shows what the WAL carries.
    c.execute(
        "SELECT pg_create_logical_replication_slot('hb_probe', 'test_decoding')",
        &[],
    )
    .await
    .unwrap();

    let config = std::fs::read_to_string(env.config_path()).unwrap().replace(
        &env.url(),
        &env.pg.url_for("app", "outbox_relay", "hb-secret"),
    );
    let role_config = env.dir.path().join("role.toml");
    std::fs::write(&role_config, config).unwrap();
    let mut cmd = Command::new(relay_bin());
    cmd.arg("--config")
        .arg(&role_config)
        .env_remove("OUTBOX_RELAY_POSTGRES_URL")
        .env("OUTBOX_RELAY_LOG", "info,librdkafka=warn");
    let log = env.dir.path().join("role-relay.log");
    let mut relay = KillOnDrop(
        cmd.arg("run")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log.clone(),
    );

    let heartbeats = wait_for_msg(
        "heartbeat messages in the WAL",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || async {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_logical_slot_peek_changes('hb_probe', NULL, NULL) \
                     WHERE data LIKE 'message: transactional: 0 prefix: outbox-relay-heartbeat%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (n >= 3).then_some(n)
        },
    )
    .await;
    assert!(heartbeats >= 3);
    assert!(relay.0.try_wait().unwrap().is_none(), "relay still running");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("heartbeat failed"), "{text}");
    // Events still flow as that role.
    let ids = write_events(&env, 5).await;
    env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;

    let out = Command::new(relay_bin())
        .arg("--config")
        .arg(&role_config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status as outbox_relay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("hb-secret"));
    c.execute("SELECT pg_drop_replication_slot('hb_probe')", &[])
        .await
        .unwrap();
}

struct KillOnDrop(Child, PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- relay log ---\n{}", support::tail_file(&self.1, 60));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A slot invalidated by `max_slot_wal_keep_size` stops the relay with a
/// fatal error naming it; the relay does not recreate it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_slot_is_fatal() {
    let env = Env::start_with(&[TOPIC], "slot-check-interval = \"300ms\"\n", 1000).await;
    {
        let _relay = ready_relay(&env).await;
        let ids = write_events(&env, 5).await;
        env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
        let text = scrape(&env).await.expect("scrape");
        assert!(text.contains("outbox_relay_slot_wal_status{status=\"reserved\"} 1"));
    } // relay killed: the slot is inactive and falls behind

    let su = env.pg.client().await;
    // ALTER SYSTEM refuses to run in a (multi-statement) transaction.
    su.batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .await
        .unwrap();
    su.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let app = env.client().await;
    app.batch_execute("CREATE TABLE filler (x text)")
        .await
        .unwrap();
    wait_until_msg(
        "slot invalidated (wal_status = lost)",
        Duration::from_secs(60),
        Duration::from_millis(10),
        || async {
            app.batch_execute(
                "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000); \
                 SELECT pg_switch_wal(); CHECKPOINT;",
            )
            .await
            .unwrap();
            let st: Option<String> = su
                .query_one(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'outbox_relay'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            st.as_deref() == Some("lost")
        },
    )
    .await;

    let out = env.relay_command(&["status", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(v["slot"]["wal_status"], "lost");

    let log = env.dir.path().join("lost.log");
    let mut relay = KillOnDrop(
        env.relay_command(&["run"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log.clone(),
    );
    let status = support::wait_for_blocking(
        "the relay to exit on a lost slot",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || relay.0.try_wait().unwrap(),
    );
    assert_eq!(status.code(), Some(1), "fatal, non-zero exit");
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap_or("");
    assert!(
        last.contains("replication slot outbox_relay was invalidated (wal_status=lost)")
            && last.contains("Slot health"),
        "last line: {last}\n{text}"
    );
    // Not recreated.
    let st: Option<String> = su
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'outbox_relay'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(st.as_deref(), Some("lost"));
}

#[test]
fn metric_name_helpers() {
    let names = referenced_metrics(
        "histogram_quantile(0.5, rate(outbox_relay_produce_latency_seconds_bucket[1m])) \
         x_outbox_relay_no outbox_relay_dlq_total",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "outbox_relay_dlq_total",
            "outbox_relay_produce_latency_seconds"
        ]
    );
    let exported = exported_metrics("# HELP a b\na_bucket{le=\"1\"} 1\nb 2\nc{x=\"y\"} 3\n");
    assert_eq!(exported.into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(interpolate("u:${P:-dev}@h"), "u:dev@h");
}
