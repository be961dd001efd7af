//! Integration-test harness: real PostgreSQL clusters, real Apache Kafka (KRaft) brokers,
//! Kafka helpers and a pausable TCP proxy. Every process/socket is cleaned up on `Drop`,
//! including during a panic; on a panic the temporary directories (with logs) are kept and
//! their paths printed. Set `OUTBOX_TEST_KEEP=1` to keep them always.
#![allow(dead_code)]

pub mod broker;
pub mod kafka;
pub mod postgres;
pub mod proxy;

use std::collections::HashSet;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A `sh` beside this process that runs `script` (`$1`, `$2`… = `args`) once this process
/// has ended, however it ends (`kill -9` included): its stdin is a pipe only this process
/// holds, so the kernel closes it at exit and the shell, blocked reading it, wakes. Dropping
/// the guard kills the shell instead — its owner cleaned up by itself; `std::mem::forget` it
/// to have it run at exit whatever happens before.
pub(crate) struct ExitWatchdog {
    shell: std::process::Child,
    _stdin: std::process::ChildStdin,
}

impl ExitWatchdog {
    pub(crate) fn spawn<S: AsRef<std::ffi::OsStr>>(
        script: &str,
        args: &[S],
    ) -> std::io::Result<ExitWatchdog> {
        use std::process::Stdio;
        let mut shell = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("read _ignored\n{script}"))
            .arg("exit-watchdog")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = shell.stdin.take().expect("piped stdin");
        Ok(ExitWatchdog {
            shell,
            _stdin: stdin,
        })
    }
}

impl Drop for ExitWatchdog {
    fn drop(&mut self) {
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

/// A currently free TCP port on 127.0.0.1. Ports are never handed out twice by one test
/// process (tests run in parallel threads), and servers started by this harness retry with a
/// new port if the bind fails anyway.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 for a free port");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Polls `cond` every `poll` until it returns true; panics if `deadline` (a duration from
/// now) passes first. The condition is always evaluated at least once, and once more at the
/// deadline.
pub async fn wait_until<F, Fut>(deadline: Duration, poll: Duration, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_msg("condition", deadline, poll, cond).await
}

/// Like [`wait_until`] with a description of what is awaited for the panic message.
pub async fn wait_until_msg<F, Fut>(what: &str, deadline: Duration, poll: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut cond = move || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    };
    wait_for_msg(what, deadline, poll, &mut cond).await
}

/// Polls `f` every `poll` until it returns `Some(v)` and returns `v`; panics with `what` if
/// `deadline` (a duration from now) passes first.
pub async fn wait_for<T, F, Fut>(deadline: Duration, poll: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_msg("value", deadline, poll, f).await
}

/// Like [`wait_for`] with a description of what is awaited for the panic message.
pub async fn wait_for_msg<T, F, Fut>(what: &str, deadline: Duration, poll: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let end = start + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        let now = Instant::now();
        if now >= end {
            // One last evaluation exactly at/after the deadline.
            if let Some(v) = f().await {
                return v;
            }
            panic!("timed out after {:?} waiting for {what}", start.elapsed());
        }
        tokio::time::sleep(poll.min(end - now)).await;
    }
}

/// Synchronous variant of [`wait_for_msg`] for use outside async code (e.g. in `Drop`).
pub fn wait_for_blocking<T>(
    what: &str,
    deadline: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    let end = start + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        let now = Instant::now();
        if now >= end {
            if let Some(v) = f() {
                return v;
            }
            panic!("timed out after {:?} waiting for {what}", start.elapsed());
        }
        std::thread::sleep(poll.min(end - now));
    }
}

/// Whether harness temp dirs should be kept: always with `OUTBOX_TEST_KEEP=1`, and when the
/// current thread is panicking (a failing test), so logs can be inspected.
pub(crate) fn keep_artifacts() -> bool {
    std::thread::panicking()
        || std::env::var("OUTBOX_TEST_KEEP").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Directory under which harness temp dirs are created (`OUTBOX_TEST_TMPDIR`, default `/tmp`:
/// it must be traversable by the `postgres` user, which `$TMPDIR` may not be).
pub(crate) fn tmp_root() -> PathBuf {
    std::env::var_os("OUTBOX_TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// The last `max_lines` lines of a text file (lossy), or a note why it can't be read.
pub fn tail_file(path: &std::path::Path, max_lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(max_lines);
            lines[from..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
