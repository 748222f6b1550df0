//! The HTTP endpoint: health and readiness for orchestrators, Prometheus
//! metrics, the loaded plugins, and the admin API (the runbook's manual
//! breaker reset).
//!
//! Owns request handling only: it reads [`Status`] and resets breakers; it
//! never touches Kafka or a handler.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::UNIX_EPOCH;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::HttpConfig;
use crate::status::Status;

#[derive(Clone)]
struct Shared {
    status: Arc<Status>,
    admin_token: Option<Arc<str>>,
}

/// Binds the configured address (failing with a clear error when it cannot)
/// and returns the server, which runs until `shutdown` completes.
pub async fn bind(
    config: &HttpConfig,
    status: Arc<Status>,
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
        admin_token: config.admin_token.as_deref().map(Arc::from),
    });
    Ok(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        if let Err(e) = served {
            tracing::error!("HTTP endpoint failed: {e}");
        }
    })
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
            let module = r.module.lock().unwrap_or_else(PoisonError::into_inner);
            json!({
                "topic": r.topic,
                "module": module.as_ref().map(|m| m.name.clone()),
                "module_hash": module.as_ref().map(|m| m.hash.clone()),
                "circuit_state": r.breaker.state().as_str(),
            })
        })
        .collect();
    let stopped: Vec<Value> = status
        .stopped
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|((topic, partition), reason)| {
            json!({"topic": topic, "partition": partition, "reason": reason})
        })
        .collect();
    let stalled: Vec<Value> = status
        .stalled()
        .into_iter()
        .map(|s| {
            json!({
                "topic": s.partition.0,
                "partition": s.partition.1,
                "lag": s.lag,
                "stalled_for_seconds": s.for_.as_secs(),
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
        "bootstrap_servers": *status.bootstrap_servers.lock().unwrap_or_else(PoisonError::into_inner),
        "circuit_state": status.broker.state().as_str(),
        "broker_reachable": status.is_reachable(),
        "subscriber_count": if started { topics } else { 0 },
        "topic_count": topics,
        "consumer_count": if started { topics } else { 0 },
        "in_flight_messages": status.in_flight(),
        "routes": routes,
        "stopped_partitions": stopped,
        "stalled_partitions": stalled,
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
        let module = r.module.lock().unwrap_or_else(PoisonError::into_inner);
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
            status.broker.reset();
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
            "circuit_state": status.broker.state().as_str(),
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
