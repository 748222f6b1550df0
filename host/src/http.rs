//! The HTTP endpoint: health and readiness for orchestrators, Prometheus
//! metrics, the loaded plugins, and the admin API (the runbook's manual
//! breaker reset).
//!
//! Owns request handling only: it reads [`Status`] and resets breakers; it
//! never touches Kafka or a handler.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::breaker::Breaker;
use crate::config::HttpConfig;
use crate::status::Status;

#[derive(Clone)]
struct Shared {
    status: Arc<Status>,
    /// The broker breaker, for the admin API's reset.
    broker: Arc<Breaker>,
    admin_token: Option<Arc<str>>,
}

/// Binds the configured address (failing with a clear error when it cannot)
/// and returns the server, which runs until `shutdown` completes.
///
/// Connections are served by [`Server`]: a client gets
/// `http.header_timeout_seconds` to send a request's headers and as long
/// between requests on a kept-alive connection; at most
/// `http.max_connections` are served at once; on shutdown, open
/// connections get [`SHUTDOWN_GRACE`] to finish and are then closed.
pub async fn bind(
    config: &HttpConfig,
    status: Arc<Status>,
    broker: Arc<Breaker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (http.listen) for health and metrics; set http.listen to \
                 a free address or http.enabled = false",
                config.listen
            )
        })?;
    let addr = listener.local_addr().context("reading the HTTP address")?;
    status.set_http_addr(addr);
    tracing::info!(%addr, "serving health, metrics and admin on http://{addr}");
    let app = router(Shared {
        status,
        broker,
        admin_token: config.admin_token.as_ref().map(|t| Arc::from(t.expose())),
    });
    let server = Server {
        listener,
        app,
        header_timeout: config.header_timeout(),
        slots: Arc::new(Semaphore::new(config.max_connections)),
        connections: JoinSet::new(),
    };
    Ok(server.run(shutdown))
}

/// On shutdown, how long open connections get to finish the request they
/// are serving before they are closed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The answer to a connection over `http.max_connections`.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
    Content-Length: 21\r\n\r\ntoo many connections\n";

/// The HTTP/1.1 server: accepts connections and serves each on a task of
/// its own, within the configured limits.
struct Server {
    listener: tokio::net::TcpListener,
    app: Router,
    /// The longest wait for a request's headers, and between requests.
    header_timeout: Duration,
    /// One permit per connection served (`http.max_connections`).
    slots: Arc<Semaphore>,
    /// The tasks serving connections, ended on shutdown.
    connections: JoinSet<()>,
}

impl Server {
    /// Serves until `shutdown` completes, then stops accepting, asks every
    /// connection to close after its current request and closes those
    /// still open after [`SHUTDOWN_GRACE`].
    async fn run(mut self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => self.admit(stream, peer, stopped.clone()),
                    Err(e) => {
                        // Out of file descriptors, most likely: let some
                        // close rather than spin.
                        tracing::warn!("cannot accept an HTTP connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = self.connections.join_next(), if !self.connections.is_empty() => {}
            }
        }
        drop(self.listener);
        let _ = stop.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::debug!(
                open = self.connections.len(),
                "closing HTTP connections still open after the shutdown grace"
            );
            self.connections.abort_all();
        }
    }

    /// Serves `stream` on a task of its own, or answers 503 and closes it
    /// when every slot is taken.
    fn admit(
        &mut self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            tracing::debug!(%peer, "HTTP connection refused: http.max_connections are open");
            // Best effort and never blocking: the client may not read.
            let _ = stream.try_write(TOO_MANY);
            return;
        };
        let connection = connection(&self.app, peer, self.header_timeout, stream);
        self.connections
            .spawn(serve_connection(connection, stopped, slot));
    }
}

/// An HTTP/1.1 connection of `app` over `io`, from `peer`.
type Connection<I> = hyper::server::conn::http1::Connection<
    hyper_util::rt::TokioIo<I>,
    hyper_util::service::TowerToHyperService<Router>,
>;

/// Serves `app` to `peer` over `io`, giving the client `header_timeout` for
/// each request's headers.
fn connection<I>(app: &Router, peer: SocketAddr, header_timeout: Duration, io: I) -> Connection<I>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(
        app.clone().layer(axum::Extension(ConnectInfo(peer))),
    );
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
}

/// Serves the bytes of `request`, then the end of the client's stream, on
/// one connection from `peer`, and returns the answer (for the fuzz
/// targets: the connection is the one the server makes).
#[cfg(feature = "fuzzing")]
pub(crate) async fn answer_one(
    status: Arc<Status>,
    broker: Arc<Breaker>,
    admin_token: Option<&str>,
    peer: SocketAddr,
    request: &[u8],
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = router(Shared {
        status,
        broker,
        admin_token: admin_token.map(Arc::from),
    });
    let (client, server) = tokio::io::duplex(1 << 16);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let slot = Arc::new(Semaphore::new(1))
        .try_acquire_owned()
        .expect("a new semaphore has a permit");
    let served = tokio::spawn(serve_connection(
        connection(&app, peer, Duration::from_secs(10), server),
        stopped,
        slot,
    ));
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let sending = async {
        let _ = to_server.write_all(request).await;
        let _ = to_server.shutdown().await;
    };
    let mut answer = Vec::new();
    let receiving = from_server.read_to_end(&mut answer);
    let _ = tokio::join!(sending, receiving);
    let _ = served.await;
    answer
}

/// One connection, served until the client or the server closes it; asked
/// to close after its current request when `stopped` turns true. The slot
/// is given back when it ends.
async fn serve_connection<I>(
    connection: Connection<I>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop_requested(&mut stopped) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // A client that stalls or goes away; nothing the daemon can fix.
        tracing::debug!("HTTP connection ended: {e}");
    }
}

/// Completes when `stopped` turns true (or its sender is gone).
async fn stop_requested(stopped: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/health/event-bus", get(health))
        .route("/health/ready", get(ready))
        .route("/health/live", get(live))
        .route("/metrics", get(metrics))
        .route("/plugins", get(plugins))
        .route("/admin/breaker/reset", post(reset_breakers))
        .with_state(shared)
}

fn code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The runbook's health fields, plus each route and any stopped partition.
async fn health(State(s): State<Shared>) -> Response {
    let status = &s.status;
    let healthy = status.healthy();
    let routes: Vec<Value> = status
        .routes()
        .iter()
        .map(|r| {
            let module = r.module();
            json!({
                "topic": r.topic,
                "module": module.as_ref().map(|m| m.name.clone()),
                "module_hash": module.as_ref().map(|m| m.hash.clone()),
                "circuit_state": r.breaker.state().as_str(),
            })
        })
        .collect();
    let stopped: Vec<Value> = status
        .stopped_partitions()
        .iter()
        .map(|(tp, reason)| json!({"topic": tp.topic, "partition": tp.partition, "reason": reason}))
        .collect();
    let stalled: Vec<Value> = status
        .stalled()
        .into_iter()
        .map(|s| {
            json!({
                "topic": s.partition.topic,
                "partition": s.partition.partition,
                "lag": s.lag,
                "stalled_for_seconds": s.for_.as_secs(),
            })
        })
        .collect();
    let now = std::time::Instant::now();
    let undecodable: Vec<Value> = status
        .undecodable()
        .into_iter()
        .map(|(tp, s)| {
            json!({
                "topic": tp.topic,
                "partition": tp.partition,
                "offset": s.offset,
                "error": s.error,
                "for_seconds": now.saturating_duration_since(s.since).as_secs(),
                "repeats": s.repeats,
            })
        })
        .collect();
    let started = status.started();
    let topics = status.routes().len();
    let body = json!({
        "healthy": healthy,
        "started": started,
        "environment": status.environment,
        "group": status.group,
        "bootstrap_servers": status.bootstrap_servers(),
        "circuit_state": status.broker_state().as_str(),
        "broker_reachable": status.is_reachable(),
        "broker_error": status.connect_failure().map(|f| f.to_string()),
        "subscriber_count": if started { topics } else { 0 },
        "topic_count": topics,
        "consumer_count": if started { topics } else { 0 },
        "in_flight_messages": status.in_flight(),
        "routes": routes,
        "stopped_partitions": stopped,
        "stalled_partitions": stalled,
        "undecodable_partitions": undecodable,
        "assigned_partitions": status.assigned(),
        "unassigned_for_seconds": status.unassigned_for(now).map(|d| d.as_secs()),
    });
    (code(healthy), axum::Json(body)).into_response()
}

/// 200 only when started, a broker is reachable and the broker circuit is
/// closed.
async fn ready(State(s): State<Shared>) -> Response {
    let ready = s.status.healthy();
    (code(ready), if ready { "ready\n" } else { "not ready\n" }).into_response()
}

/// 200 while the process serves requests.
async fn live() -> &'static str {
    "live\n"
}

async fn metrics(State(s): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&s.status),
    )
        .into_response()
}

/// Every loaded module: hash, size, load time and the routes it serves.
async fn plugins(State(s): State<Shared>) -> axum::Json<Value> {
    let mut modules: std::collections::BTreeMap<String, Value> = Default::default();
    for r in s.status.routes() {
        let module = r.module();
        let Some(m) = module.as_ref() else { continue };
        let entry = modules.entry(m.name.clone()).or_insert_with(|| {
            json!({
                "module": m.name,
                "hash": m.hash,
                "size": m.size,
                "loaded_at_ms": m.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                "load_time_ms": m.load_time.as_secs_f64() * 1000.0,
                "from_compile_cache": m.from_cache,
                "routes": [],
            })
        });
        if let Some(routes) = entry["routes"].as_array_mut() {
            routes.push(json!(r.topic));
        }
    }
    axum::Json(json!({ "plugins": modules.into_values().collect::<Vec<_>>() }))
}

#[derive(Deserialize)]
struct ResetQuery {
    /// Reset only this route's handler breaker (by input topic).
    route: Option<String>,
}

/// The runbook's manual reset: closes the broker breaker and every route's
/// (or one route's) handler breaker.
async fn reset_breakers(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<ResetQuery>,
) -> Response {
    if let Some(refusal) = refuse_unauthorized(&s, peer, &headers) {
        return refusal;
    }
    let status = &s.status;
    let mut reset = Vec::new();
    match &query.route {
        Some(topic) => {
            let Some(route) = status.route(topic) else {
                let known: Vec<String> = status.routes().iter().map(|r| r.topic.clone()).collect();
                return (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({
                        "error": format!("no route consumes topic {topic:?}; routes: {known:?}")
                    })),
                )
                    .into_response();
            };
            route.breaker.reset();
            reset.push(format!("route {topic}"));
        }
        None => {
            s.broker.reset();
            reset.push("broker".to_owned());
            for route in status.routes() {
                route.breaker.reset();
                reset.push(format!("route {}", route.topic));
            }
        }
    }
    tracing::warn!(%peer, reset = ?reset, "circuit breakers reset by the admin API");
    (
        StatusCode::OK,
        axum::Json(json!({
            "reset": reset,
            "circuit_state": status.broker_state().as_str(),
        })),
    )
        .into_response()
}

/// The refusal of an admin request, if it is not allowed. With a configured
/// token the request must carry it as a bearer token; without one only
/// loopback clients are served.
fn refuse_unauthorized(s: &Shared, peer: SocketAddr, headers: &HeaderMap) -> Option<Response> {
    let refuse = |code: StatusCode, why: &str| {
        tracing::warn!(%peer, "admin request refused: {why}");
        Some((code, axum::Json(json!({ "error": why }))).into_response())
    };
    match &s.admin_token {
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match given {
                Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => None,
                Some(_) => refuse(StatusCode::UNAUTHORIZED, "wrong bearer token"),
                None => refuse(
                    StatusCode::UNAUTHORIZED,
                    "missing bearer token: send Authorization: Bearer <http.admin_token>",
                ),
            }
        }
        None if peer.ip().is_loopback() => None,
        None => refuse(
            StatusCode::FORBIDDEN,
            "the admin API answers only loopback clients unless http.admin_token is set",
        ),
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
