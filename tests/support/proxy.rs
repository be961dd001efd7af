//! A tiny in-test TCP proxy on a free 127.0.0.1 port, to simulate network outages between
//! the relay and PostgreSQL or the broker. Must be created inside a tokio runtime.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

struct Shared {
    target: SocketAddr,
    paused: watch::Sender<bool>,
    refusing: AtomicBool,
    conns: Mutex<Vec<AbortHandle>>,
    accepted: AtomicU64,
}

/// Forwards every accepted connection to `target`. Dropping it stops listening and closes
/// all connections.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: AbortHandle,
}

impl TcpProxy {
    /// Binds a free loopback port and starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind proxy listener");
        let addr = listener.local_addr().expect("proxy local_addr");
        let (paused, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            target,
            paused,
            refusing: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                if s.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let s2 = s.clone();
                let h = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(s2.target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, s2.paused.subscribe());
                    let down = pump(sr, cw, s2.paused.subscribe());
                    // When either direction ends, close both (like a dying middlebox).
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
                let mut conns = s.conns.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(h.abort_handle());
            }
        })
        .abort_handle();
        TcpProxy {
            addr,
            shared,
            accept_task,
        }
    }

    /// The proxy's listening address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Stop forwarding bytes in both directions; sockets stay open (a network black hole).
    /// New connections are still accepted (and also stalled).
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Resume forwarding (buffered bytes are delivered).
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Drop all current connections (peers see the connection closed).
    pub fn cut(&self) {
        for c in self.shared.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// While refusing, new connections are closed right after accept (like a service that is
    /// down). Current connections are unaffected: combine with [`TcpProxy::cut`].
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Number of connections accepted (and forwarded) so far.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.cut();
    }
}
