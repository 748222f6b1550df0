//! The endpoint's connections (timeouts, the connection limit, shutdown)
//! and that no answer shows a configured secret.

use std::time::Instant;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Config;

/// A config whose one route's module is an empty file in `dir`, with
/// `http` as its `[http]` table.
fn config(dir: &std::path::Path, http: &str) -> Config {
    std::fs::create_dir_all(dir.join("plugins")).expect("create plugins/");
    std::fs::write(dir.join("plugins/m.wasm"), b"").expect("write a module");
    let text = format!(
        "[kafka]\n[http]\nlisten = \"127.0.0.1:0\"\n{http}\n\
         [[routes]]\ntopic = \"t\"\nmodule = \"m\"\n"
    );
    Config::parse(&text, dir, &|_| None).expect("a valid config")
}

/// A server on a free port, its address, and what stops it.
async fn serve(
    http: &str,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), http);
    let status = Status::new(&config);
    let stop = CancellationToken::new();
    let broker = Breaker::new("broker", 1, Duration::from_secs(60));
    status.observe_broker(broker.view());
    let server = bind(
        &config.http,
        status.clone(),
        broker,
        stop.clone().cancelled_owned(),
    )
    .await
    .expect("bind");
    let task = tokio::spawn(server);
    let addr = status.http_addr().borrow().expect("bind sets the address");
    (addr, stop, task, dir)
}

/// The whole answer to `GET path` on a connection of its own.
async fn get_raw(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    String::from_utf8_lossy(&raw).into_owned()
}

/// The status code of `GET path` on a connection of its own.
async fn get_status(addr: SocketAddr, path: &str) -> String {
    let raw = get_raw(addr, path).await;
    raw.split_whitespace().nth(1).unwrap_or_default().to_owned()
}

/// Waits until the server closes `stream`; returns how long after
/// `since` it did.
async fn until_closed(stream: &mut TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 256];
    let bound = Duration::from_secs(20);
    loop {
        match tokio::time::timeout(bound, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept a stalled connection open for {bound:?}"),
        }
    }
}

#[tokio::test]
async fn a_stalled_or_idle_client_is_cut_off_after_the_header_timeout() {
    let (addr, stop, task, _dir) = serve("header_timeout_seconds = 0.5").await;
    let opened = Instant::now();
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET /heal")
        .await
        .expect("send half a line");
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let half_took = until_closed(&mut half, opened).await;
    let silent_took = until_closed(&mut silent, opened).await;
    for took in [half_took, silent_took] {
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(5),
            "cut off after {took:?}, not the 0.5 s header timeout"
        );
    }
    // A kept-alive connection is cut off once idle for as long.
    let mut kept = TcpStream::connect(addr).await.expect("connect");
    kept.write_all(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("send");
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await.expect("a response");
    assert_eq!(&first, b"HTTP/1.1 200");
    let idle = until_closed(&mut kept, Instant::now()).await;
    assert!(idle < Duration::from_secs(5), "idle for {idle:?}");
    stop.cancel();
    task.await.expect("the server ends");
}

#[tokio::test]
async fn shutdown_does_not_wait_for_stalled_clients() {
    let (addr, stop, task, _dir) = serve("header_timeout_seconds = 300").await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /health/li").await.expect("send");
        stalled.push(stream);
    }
    // The server has them all once it answers a request after them.
    assert_eq!(get_status(addr, "/health/live").await, "200");
    let started = Instant::now();
    stop.cancel();
    task.await.expect("the server ends");
    assert!(
        started.elapsed() < SHUTDOWN_GRACE + Duration::from_secs(2),
        "shutdown took {:?} with stalled clients connected",
        started.elapsed()
    );
    for stream in &mut stalled {
        until_closed(stream, started).await;
    }
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_and_served_again_once_closed() {
    let (addr, stop, task, _dir) = serve("max_connections = 2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /health/li").await.expect("send");
        held.push(stream);
    }
    // Accepted in order: the third connection finds both slots taken.
    assert_eq!(get_status(addr, "/health/live").await, "503");
    drop(held);
    // The slots come back as the server sees the two connections close.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answer = get_status(addr, "/health/live").await;
    while answer != "200" && Instant::now() < deadline {
        tokio::task::yield_now().await;
        answer = get_status(addr, "/health/live").await;
    }
    assert_eq!(
        answer, "200",
        "/health/live answers once the slow clients close"
    );
    stop.cancel();
    task.await.expect("the server ends");
}

#[tokio::test]
async fn no_endpoint_shows_a_configured_secret() {
    let secrets = ["admin-token-5e1d-b7a0", "sasl-password-9b2f"];
    let (addr, stop, task, _dir) = serve(&format!(
        "admin_token = \"{}\"\n[kafka.tls]\n[kafka.sasl]\nmechanism = \"PLAIN\"\n\
         username = \"u\"\npassword = \"{}\"",
        secrets[0], secrets[1]
    ))
    .await;
    for path in ["/health/event-bus", "/health/ready", "/metrics", "/plugins"] {
        let raw = get_raw(addr, path).await;
        assert!(
            raw.contains(" 200 ") || raw.contains(" 503 "),
            "{path}: {raw}"
        );
        for secret in secrets {
            assert!(!raw.contains(secret), "{path} shows {secret}: {raw}");
        }
    }
    stop.cancel();
    task.await.expect("the server ends");
}
