//! The one gRPC server every Huitou service runs in.
//!
//! It adds, once for all services: health (`grpc.health.v1`), reflection v1
//! and v1alpha (grpcurl 1.8 asks v1alpha) of the hosted services only, and a
//! call layer that gives every request an id, a trace span following the
//! OpenTelemetry RPC conventions, an authenticated caller, and a place in a
//! bounded number of concurrent requests. Deadlines come from `grpc-timeout`,
//! capped by the configured request timeout. On shutdown health turns
//! NOT_SERVING at once, the listener closes after the drain delay, in-flight
//! calls finish within the grace period, and the process moves on.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::error::Failure;
use crate::telemetry;

/// The request id header, taken from the caller or made up, and echoed back.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// How long a request may wait for a free slot before it is refused.
const QUEUE_WAIT: Duration = Duration::from_millis(500);

/// Why a server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptors.
    #[error("reflection could not start: {0}")]
    Reflection(String),
}

/// Assembles services into one server.
pub struct GrpcServer {
    config: ServerConfig,
    authenticator: Authenticator,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    long_running: Vec<String>,
    health: HealthReporter,
}

/// The deadline cap of methods registered as long-running (history
/// imports): one hour.
pub const LONG_RUNNING_CAP: Duration = Duration::from_secs(3600);

impl GrpcServer {
    /// A server with no services yet.
    pub fn new(config: ServerConfig, authenticator: Authenticator) -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        Self {
            config,
            authenticator,
            routes,
            service_names: Vec::new(),
            long_running: Vec::new(),
            health,
        }
    }

    /// Lets a method (`/package.Service/Method`) run up to an hour when the
    /// caller sets no shorter deadline, instead of the request timeout:
    /// for streams that carry a shop's whole history.
    pub fn allow_long_running(&mut self, path: &str) -> &mut Self {
        self.long_running.push(path.to_owned());
        self
    }

    /// The settings services should apply to their generated servers
    /// (message size limits).
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Hosts a generated service.
    pub fn add_service<S>(&mut self, service: S) -> &mut Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// A handle to flip health, e.g. NOT_SERVING while a dependency is down.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then drains.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(huitou_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        let mut reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(huitou_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in &self.service_names {
            reflection_v1 = reflection_v1.with_service_name(*name);
            reflection_v1alpha = reflection_v1alpha.with_service_name(*name);
        }
        let mut routes = self.routes;
        routes.add_service(
            reflection_v1
                .build_v1()
                .map_err(|e| ServeError::Reflection(e.to_string()))?,
        );
        routes.add_service(
            reflection_v1alpha
                .build_v1alpha()
                .map_err(|e| ServeError::Reflection(e.to_string()))?,
        );
        let routes: Routes = routes.routes();

        for name in &self.service_names {
            self.health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;

        let layer = CallLayer {
            policy: Arc::new(CallPolicy {
                authenticator: self.authenticator,
                slots: Arc::new(Semaphore::new(self.config.max_concurrent_requests)),
                request_timeout: self.config.request_timeout(),
                long_running: self.long_running,
            }),
        };
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        let health = self.health.clone();
        let names = self.service_names.clone();
        let drain = Duration::from_millis(self.config.drain_delay_ms);
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        let (grace_tx, grace_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, draining");
            for name in &names {
                health
                    .set_service_status(*name, ServingStatus::NotServing)
                    .await;
            }
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            tokio::time::sleep(drain).await;
            let _ = close_tx.send(());
            tokio::time::sleep(grace).await;
            let _ = grace_tx.send(());
        });

        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(layer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = close_rx.await;
                },
            );
        tokio::select! {
            result = server => result.map_err(ServeError::from),
            _ = async move { let _ = grace_rx.await; } => {
                tracing::warn!("grace period over with calls still running; stopping anyway");
                Ok(())
            }
        }
    }
}

struct CallPolicy {
    authenticator: Authenticator,
    slots: Arc<Semaphore>,
    request_timeout: Duration,
    long_running: Vec<String>,
}

impl CallPolicy {
    /// The caller's deadline (`grpc-timeout`), capped by the server's.
    fn budget(&self, path: &str, headers: &http::HeaderMap) -> Duration {
        let cap = if self.long_running.iter().any(|p| p == path) {
            LONG_RUNNING_CAP
        } else {
            self.request_timeout
        };
        match headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
        {
            // Finish a little before the caller's deadline so the answer is
            // DEADLINE_EXCEEDED with details, not tonic's bare CANCELLED
            // racing us at the same instant.
            Some(asked) if asked < cap => {
                asked.saturating_sub((asked / 20).min(Duration::from_millis(25)))
            }
            _ => cap,
        }
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[derive(Clone)]
struct CallLayer {
    policy: Arc<CallPolicy>,
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone)]
struct CallService<S> {
    inner: S,
    policy: Arc<CallPolicy>,
}

/// Paths that need no API key: health probes and reflection.
fn is_open_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

impl<S, B> Service<Request<B>> for CallService<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Standard tower pattern: the ready service goes into the future.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();

        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let (rpc_service, rpc_method) = path
                .trim_start_matches('/')
                .split_once('/')
                .unwrap_or(("unknown", "unknown"));
            let request_id = request
                .headers()
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| {
                    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
                })
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            let open = is_open_path(&path);
            let budget = policy.budget(&path, request.headers());
            let span = tracing::info_span!(
                "rpc",
                otel.name = %path.trim_start_matches('/'),
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.service = %rpc_service,
                rpc.method = %rpc_method,
                rpc.grpc.status_code = tracing::field::Empty,
                request_id = %request_id,
                shop_id = tracing::field::Empty,
            );
            telemetry::adopt_remote_parent(&span, request.headers());
            let started = Instant::now();

            let outcome: Result<Response<Body>, S::Error> = async {
                let _slot =
                    match tokio::time::timeout(QUEUE_WAIT, policy.slots.clone().acquire_owned())
                        .await
                    {
                        Ok(Ok(permit)) => Some(permit),
                        _ => {
                            return Ok(Failure::new(
                                tonic::Code::ResourceExhausted,
                                "SERVER_BUSY",
                                "the server is at its concurrent request limit; retry shortly",
                            )
                            .with_retry_after(Duration::from_millis(200))
                            .into_response());
                        }
                    };
                if !open {
                    match policy.authenticator.authenticate(request.headers()).await {
                        Ok(caller) => {
                            tracing::Span::current().record("shop_id", caller.shop_id.as_str());
                            request.extensions_mut().insert(caller);
                        }
                        Err(failure) => return Ok(failure.into_response()),
                    }
                }
                match tokio::time::timeout(budget, inner.call(request)).await {
                    Ok(response) => response,
                    Err(_) => Ok(Failure::new(
                        tonic::Code::DeadlineExceeded,
                        "DEADLINE_EXCEEDED",
                        format!(
                            "the call did not finish within its deadline of {} ms",
                            budget.as_millis()
                        ),
                    )
                    .into_response()),
                }
            }
            .instrument(span.clone())
            .await;

            let mut response = outcome?;
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0);
            span.record("rpc.grpc.status_code", code);
            if code != 0 {
                span.record("otel.status_code", "ERROR");
            }
            let elapsed = started.elapsed().as_secs_f64();
            crate::metrics::record_rpc(rpc_service, rpc_method, code, elapsed);
            let elapsed_ms = elapsed * 1000.0;
            // Server-side faults are worth a line each; the rest only on demand.
            if matches!(code, 2 | 4 | 13 | 14 | 15) {
                span.in_scope(|| tracing::warn!(grpc_status = code, elapsed_ms, "call failed"));
            } else {
                span.in_scope(|| tracing::debug!(grpc_status = code, elapsed_ms, "call done"));
            }
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, v);
            }
            Ok(response)
        })
    }
}

impl Failure {
    /// This failure as a trailers-only gRPC response.
    pub fn into_response(self) -> Response<Body> {
        tonic::Status::from(self).into_http()
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }
}
