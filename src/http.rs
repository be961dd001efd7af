//! The operations endpoint: `/metrics` (Prometheus text format), `/healthz`
//! (the process is alive) and `/readyz` (the replication stream runs and a
//! broker answers), plus the broker probe that makes "a broker answers" true.
//!
//! The server is a deliberately small HTTP/1.1 responder on a tokio
//! `TcpListener`: three `GET` routes, `Connection: close`, a bounded request
//! head read under a deadline. Nothing here can stall the relay: every
//! connection runs in its own task and the listener stops with the shutdown
//! signal.
//!
//! Metrics are recorded through the `metrics` facade; [`install_recorder`]
//! installs the Prometheus recorder once per process, with histogram buckets
//! for latencies from 0.5 ms to 60 s and for transaction sizes.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::health::SharedHealth;
use crate::metrics as m;

/// Upper bounds (seconds) of latency histograms: 0.5 ms to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Upper bounds of the rows-per-transaction histogram.
pub const TRANSACTION_ROW_BUCKETS: &[f64] = &[
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1_000.0,
    5_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
];

/// How often the broker probe asks for metadata.
pub const BROKER_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long one probe may wait for an answer before the broker counts as
/// unreachable.
pub const BROKER_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often histogram samples are folded into buckets when nobody scrapes
/// (bounds the recorder's memory).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Deadline for a client to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head we read; anything longer is refused.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// The process-wide Prometheus recorder, installed on first call; later calls
/// return the same handle (a process has one global recorder).
///
/// Also describes every metric, registers the counters that alerts and the
/// dashboard compute `increase()` over at zero (with the label values the
/// relay uses), so the first dead-lettered row or retry is an increase from
/// 0 rather than the birth of a series, and sets the blocked-row gauge to
/// its "nothing blocked" value 0.
pub fn install_recorder() -> Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = builder()?
        .install_recorder()
        .map_err(|e| RelayError::Environment(format!("installing the metrics recorder: {e}")))?;
    m::describe();
    metrics::counter!(m::DLQ_TOTAL).increment(0);
    // "0 when none": nothing is blocked until the relay says so.
    metrics::gauge!(m::BLOCKED_ROW).set(0.0);
    for reason in ["transient", "permanent"] {
        metrics::counter!(m::RETRIES, "reason" => reason).increment(0);
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The recorder configuration (histogram buckets), without installing it.
pub fn builder() -> Result<PrometheusBuilder> {
    let bucket_err = |e| RelayError::Environment(format!("metrics histogram buckets: {e}"));
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(bucket_err)?
        .set_buckets_for_metric(
            Matcher::Full(m::TRANSACTION_SIZE.into()),
            TRANSACTION_ROW_BUCKETS,
        )
        .map_err(bucket_err)
}

/// A bound, not yet serving, operations endpoint.
pub struct Server {
    listener: TcpListener,
    handle: PrometheusHandle,
    health: SharedHealth,
}

impl Server {
    /// Bind `addr` (port 0 picks a free port; see [`Server::local_addr`]).
    /// A bind failure is fatal and names `metrics.listen`.
    pub async fn bind(
        addr: SocketAddr,
        handle: PrometheusHandle,
        health: SharedHealth,
    ) -> Result<Server> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            RelayError::Environment(format!("cannot listen on {addr} (metrics.listen): {e}"))
        })?;
        Ok(Server {
            listener,
            handle,
            health,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serve until `shutdown` becomes true (or its sender is gone).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() { break },
                _ = upkeep.tick() => self.handle.run_upkeep(),
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        let (handle, health) = (self.handle.clone(), self.health.clone());
                        tokio::spawn(async move {
                            if let Err(e) = serve_connection(stream, &handle, &health).await {
                                tracing::debug!(error = %e, "metrics connection failed");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        tracing::debug!("metrics endpoint stopped");
    }
}

/// Install the recorder, bind `cfg.metrics.listen` and serve it, and probe
/// the broker for `/readyz`, until `shutdown`. `None` when the endpoint is
/// disabled (empty `metrics.listen`): then no recorder is installed and
/// metrics cost nothing.
pub async fn spawn(
    cfg: &Config,
    health: SharedHealth,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<(SocketAddr, JoinHandle<()>)>> {
    if cfg.metrics.listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = cfg.metrics.listen.parse().map_err(|_| {
        RelayError::Config(crate::error::ConfigError::new(
            "metrics.listen",
            "must be host:port with a numeric IP",
        ))
    })?;
    let handle = install_recorder()?;
    let server = Server::bind(addr, handle, health.clone()).await?;
    let local = server.local_addr();
    let probe = BrokerProbe::new(cfg)?;
    let probe_shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        tokio::join!(
            server.run(shutdown),
            probe.run(health, BROKER_PROBE_INTERVAL, probe_shutdown)
        );
    });
    tracing::info!(listen = %local, "serving /metrics, /healthz, /readyz");
    Ok(Some((local, task)))
}

/// One HTTP exchange: read the request head, answer, close.
async fn serve_connection(
    mut stream: TcpStream,
    handle: &PrometheusHandle,
    health: &SharedHealth,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            let resp = Response::text(431, "request head too large\n");
            return stream.write_all(&resp.to_bytes(false)).await;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()), // slow or silent client: just close
    };
    let (method, path) = parse_request_line(&head);
    let head_only = method == "HEAD";
    let resp = route(method, path, handle, health);
    stream.write_all(&resp.to_bytes(head_only)).await?;
    stream.shutdown().await
}

/// Read until the blank line ending the head; `None` if it exceeds the limit.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Method and path (without query string) of the request line.
fn parse_request_line(head: &str) -> (&str, &str) {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split(['?', '#']).next().unwrap_or("");
    (method, path)
}

/// An HTTP response, rendered with `Connection: close`.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// The three routes.
pub fn route(
    method: &str,
    path: &str,
    handle: &PrometheusHandle,
    health: &SharedHealth,
) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET and HEAD\n");
    }
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: handle.render(),
        },
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            if !health.is_ready() {
                Response::text(503, format!("not ready: {}\n", not_ready_reason(health)))
            } else if health.leader() == Some(false) {
                Response::text(200, "ready: standby\n")
            } else {
                Response::text(200, "ready\n")
            }
        }
        // For routing to (or alerting on) the one relay that produces: 200
        // on the leader (or a relay without election), 503 on a standby.
        "/leader" => match health.leader() {
            Some(false) => Response::text(503, "standby\n"),
            _ => Response::text(200, "leader\n"),
        },
        _ => Response::text(
            404,
            "not found: try /metrics, /healthz, /readyz or /leader\n",
        ),
    }
}

/// Why `/readyz` fails, in one line.
pub fn not_ready_reason(health: &SharedHealth) -> String {
    let mut why = Vec::new();
    if health.leader() == Some(false) {
        why.push("standby: the leader-election connection to PostgreSQL fails");
    } else if !health.stream_up() {
        why.push("replication stream is not running");
    }
    if !health.broker_ok() {
        why.push("no Kafka broker answered a metadata request");
    }
    if why.is_empty() {
        "ready".to_string()
    } else {
        why.join("; ")
    }
}

/// Keeps `Health::broker_ok` true while a broker answers a metadata request,
/// on its own client so the relay's producer is never touched.
pub struct BrokerProbe {
    admin: Arc<AdminClient<ProbeContext>>,
}

/// librdkafka's complaints from the probe are expected while a broker is
/// down (the readiness flag reports it): keep them at debug level.
pub struct ProbeContext;

impl ClientContext for ProbeContext {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(target: "librdkafka", facility = fac, "broker probe: {log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, "broker probe: {reason}");
    }
}

impl BrokerProbe {
    /// A metadata-only client for `kafka.brokers` with the relay's security
    /// settings (`security.*`, `sasl.*`, `ssl.*` pass-through properties).
    pub fn new(cfg: &Config) -> Result<BrokerProbe> {
        let mut cc = ClientConfig::new();
        for (k, v) in &cfg.kafka.properties {
            if k.starts_with("security.")
                || k.starts_with("sasl.")
                || k.starts_with("ssl.")
                || k == "client.id"
                || k == "broker.address.family"
            {
                cc.set(k, v);
            }
        }
        cc.set("bootstrap.servers", cfg.kafka_brokers());
        // A request stuck on a frozen broker must fail, not linger.
        cc.set("socket.timeout.ms", "10000");
        let admin: AdminClient<ProbeContext> = cc
            .create_with_context(ProbeContext)
            .map_err(|e| RelayError::kafka("creating the broker probe client", e))?;
        Ok(BrokerProbe {
            admin: Arc::new(admin),
        })
    }

    /// One metadata request with a deadline; true if any broker answered.
    pub async fn check(&self, timeout: Duration) -> bool {
        let admin = self.admin.clone();
        tokio::task::spawn_blocking(move || {
            admin
                .inner()
                .fetch_metadata(None, timeout)
                .map(|md| !md.brokers().is_empty())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }

    /// Probe every `interval` until `shutdown`, updating `health`.
    pub async fn run(
        self,
        health: SharedHealth,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut last: Option<bool> = None;
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            let ok = tokio::select! {
                ok = self.check(BROKER_PROBE_TIMEOUT) => ok,
                changed = shutdown.changed() => { if changed.is_err() { return; } continue; }
            };
            health.set_broker_ok(ok);
            if last != Some(ok) {
                if ok {
                    tracing::info!("broker probe: a broker answered");
                } else {
                    tracing::warn!(
                        "broker probe: no broker answered a metadata request within {BROKER_PROBE_TIMEOUT:?}; /readyz reports not ready"
                    );
                }
                last = Some(ok);
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = shutdown.changed() => if changed.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;

    fn handle() -> PrometheusHandle {
        builder().unwrap().build_recorder().handle()
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[test]
    fn request_line() {
        assert_eq!(
            parse_request_line("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("GET", "/metrics")
        );
        assert_eq!(parse_request_line(""), ("", ""));
    }

    #[test]
    fn routes() {
        let h = handle();
        let health = Health::shared();
        assert_eq!(route("GET", "/healthz", &h, &health).status, 200);
        let r = route("GET", "/readyz", &h, &health);
        assert_eq!(r.status, 503);
        assert!(
            r.body.contains("replication stream is not running"),
            "{}",
            r.body
        );
        assert!(r.body.contains("broker"), "{}", r.body);
        assert_eq!(r.body.lines().count(), 1);
        health.set_stream_up(true);
        health.set_broker_ok(true);
        assert_eq!(route("GET", "/readyz", &h, &health).status, 200);
        assert_eq!(route("POST", "/readyz", &h, &health).status, 405);
        assert_eq!(route("GET", "/nope", &h, &health).status, 404);
        let bytes = route("HEAD", "/healthz", &h, &health).to_bytes(true);
        assert!(String::from_utf8(bytes).unwrap().ends_with("\r\n\r\n"));
    }

    #[tokio::test]
    async fn serves_on_port_zero_and_stops() {
        let health = Health::shared();
        let server = Server::bind(([127, 0, 0, 1], 0).into(), handle(), health.clone())
            .await
            .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(server.run(rx));
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(get(addr, "/readyz").await.0, 503);
        health.set_stream_up(true);
        health.set_broker_ok(true);
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
        assert_eq!(get(addr, "/metrics").await.0, 200);
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("server stops on shutdown")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    #[test]
    fn histograms_render_with_buckets() {
        let recorder = builder().unwrap().build_recorder();
        let h = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(m::PRODUCE_LATENCY).record(0.003);
            metrics::histogram!(m::TRANSACTION_SIZE).record(7.0);
        });
        let text = h.render();
        assert!(
            text.contains(&format!("{}_bucket{{le=\"0.005\"}} 1", m::PRODUCE_LATENCY)),
            "{text}"
        );
        assert!(
            text.contains(&format!("{}_bucket{{le=\"10\"}} 1", m::TRANSACTION_SIZE)),
            "{text}"
        );
    }
}
