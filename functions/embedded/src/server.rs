//! Serving the HTTP ingress within the machine's limits, as nginx or hyper's own
//! recommendations would: every connection costs a file descriptor and a task, so each
//! is bounded in time and in number, and running out of either gets an answer.
//!
//! - A request's headers must arrive within `header_read_timeout` (hyper's own timer:
//!   a client that never finishes them is closed), its body within
//!   `body_read_timeout` (`408`, in [`crate::ingress`]), and a keep-alive connection
//!   with no request in progress is closed after `idle_timeout`.
//! - At most `max_connections` are served at once; one more is answered `503` with
//!   `Retry-After` and closed, never left waiting in the kernel's backlog.
//! - When `accept` fails (out of file descriptors: `EMFILE`/`ENFILE`), the failure is
//!   logged once per episode, a descriptor kept in reserve answers the waiting client
//!   `503`, and accepting resumes by itself when sockets close.
//! - Shutdown stops accepting, lets requests in progress finish for up to
//!   `shutdown_timeout`, and then abandons what is left: a half-sent request never
//!   holds a stop. Nothing answered `202` depends on it (a message is on disk before).
//!
//! HTTP/1.1 only: no HTTP/2 (h2c) is offered, so every limit above is one protocol's.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::ingress::Guard;
use crate::metrics::Metrics;

/// The HTTP server's bounds and the ingress's access rules.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// How long a request's headers may take to arrive (hyper's default).
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive (nginx's `client_body_timeout`).
    pub body_read_timeout: Duration,
    /// How long a keep-alive connection may sit with no request (nginx's
    /// `keepalive_timeout`; hyper's header timer runs while a connection waits for its
    /// next request too, so the shorter of the two applies).
    pub idle_timeout: Duration,
    /// Connections served at once; one more is answered `503`.
    pub max_connections: usize,
    /// How long a stop waits for requests in progress before it abandons them.
    pub shutdown_timeout: Duration,
    /// Host names the ingress answers to besides IP addresses and `localhost` (a
    /// browser page on any other name is refused: DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// A bearer token every route but `/healthz` requires, if set.
    pub auth_token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(10),
            allowed_hosts: Vec::new(),
            auth_token: None,
        }
    }
}

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Connections still open when the shutdown timeout ran out, closed unanswered.
    pub abandoned: usize,
}

/// The answer to a connection that cannot be served: the cap is reached, or the process
/// is out of file descriptors.
fn refusal(why: &str) -> String {
    let body = serde_json::json!({ "error": why }).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn refuse(mut stream: TcpStream, why: &'static str) {
    let answer = refusal(why);
    // A client that does not read its answer is dropped after a second.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// `EMFILE` or `ENFILE`: the process or the system has no descriptor left.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    // The same numbers on Linux, the BSDs and macOS.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// A descriptor kept open so that a client can still be answered when the process has
/// none left (the spare-descriptor trick of libev and nginx's users).
struct Spare(Option<std::fs::File>);

impl Spare {
    fn new() -> Self {
        Spare(std::fs::File::open(std::env::temp_dir()).ok())
    }

    /// Frees the reserve, answers one waiting client `503`, and takes the reserve back
    /// (or tries to, when it could not be taken back last time).
    async fn answer_one(&mut self, listener: &TcpListener) {
        if self.0.take().is_none() {
            *self = Spare::new();
            return;
        }
        if let Ok(Ok((stream, _))) =
            tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
        {
            refuse(
                stream,
                "the server is out of file descriptors; retry shortly",
            )
            .await;
        }
        *self = Spare::new();
    }
}

/// A connection's requests in progress and when the last one ended, for its idle timer.
#[derive(Default)]
struct Activity {
    in_progress: AtomicUsize,
    /// Milliseconds since `started` at the last request's end.
    last_ms: AtomicU64,
}

struct InProgress(Arc<Activity>, Instant, Arc<Metrics>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.2.http_requests_in_progress.dec();
        self.0
            .last_ms
            .store(self.1.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection is served with: the routes, behind the guard.
struct Service {
    app: Router,
    guard: Arc<Guard>,
}

/// What a served connection holds until it ends: its place under the cap, and its
/// count in the metrics.
struct Held {
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics.http_connections.dec();
    }
}

/// Serves `app` on `listener` within `config`'s bounds until `shutdown` completes,
/// then stops as the module docs say.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    guard: Arc<Guard>,
    metrics: Arc<Metrics>,
    config: &HttpConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<Served> {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut spare = Spare::new();
    // The accept error of the current episode: logged once, and once when it ends.
    let mut failing: Option<String> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Some(error) = failing.take() {
                    info!(after = %error, "accepting connections again");
                }
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let service = Service {
                            app: app.clone(),
                            guard: guard.clone(),
                        };
                        let config = config.clone();
                        let stopping = stopping.clone();
                        let held = Held {
                            metrics: metrics.clone(),
                            _permit: permit,
                        };
                        held.metrics.http_connections.inc();
                        connections
                            .spawn(connection(stream, peer, service, config, stopping, held));
                    }
                    Err(_) => {
                        debug!(%peer, max = config.max_connections, "connection refused: at the cap");
                        connections.spawn(refuse(stream, "too many connections; retry shortly"));
                    }
                }
            }
            Err(e) => {
                let text = e.to_string();
                if failing.as_deref() != Some(text.as_str()) {
                    error!(reason = %text, open = connections.len(), "accepting a connection failed; accepting resumes when connections close");
                    failing = Some(text);
                }
                if out_of_descriptors(&e) {
                    spare.answer_one(&listener).await;
                }
                // Connections that end free descriptors; wait for one, or a moment.
                tokio::select! {
                    Some(_) = connections.join_next(), if !connections.is_empty() => {},
                    () = tokio::time::sleep(Duration::from_millis(50)) => {},
                }
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    let abandoned = if drained.is_err() {
        let left = connections.len();
        warn!(
            connections = left,
            timeout = ?config.shutdown_timeout,
            "requests still in progress at the shutdown timeout: closing them unanswered"
        );
        connections.shutdown().await;
        left
    } else {
        0
    };
    Ok(Served { abandoned })
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    Service { app, guard }: Service,
    config: HttpConfig,
    mut stopping: watch::Receiver<bool>,
    held: Held,
) {
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        let metrics = held.metrics.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            activity.in_progress.fetch_add(1, Ordering::Relaxed);
            metrics.http_requests_in_progress.inc();
            let in_progress = InProgress(activity.clone(), started, metrics.clone());
            let refused = guard.refuse(request.uri().path(), request.headers());
            let mut app = app.clone();
            async move {
                let response = match refused {
                    Some(response) => Ok(response),
                    None => tower_service::Service::call(&mut app, request).await,
                };
                drop(in_progress);
                response
            }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // When the connection was asked to close: it gets `idle_timeout` more to finish
    // (a client that stops reading its answer holds nothing for ever).
    let mut closing: Option<Instant> = None;
    loop {
        let now_ms = started.elapsed().as_millis() as u64;
        let idle_ms = now_ms.saturating_sub(activity.last_ms.load(Ordering::Relaxed));
        let idle_left = config
            .idle_timeout
            .saturating_sub(Duration::from_millis(idle_ms));
        // A request in progress is the body timeout's business: check again later.
        let check = if activity.in_progress.load(Ordering::Relaxed) > 0 {
            config.idle_timeout
        } else {
            idle_left
        };
        let close_by = closing.map(|since| since + config.idle_timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, reason = %e, "connection ended");
                }
                return;
            }
            _ = stopping.changed(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            () = tokio::time::sleep(check), if closing.is_none() => {
                let idle = activity.in_progress.load(Ordering::Relaxed) == 0
                    && idle_left.is_zero();
                if idle {
                    debug!(%peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
            }
            () = sleep_until(close_by) => {
                debug!(%peer, "dropping a connection that did not finish closing");
                return;
            }
        }
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Raises the process's soft open-files limit to its hard limit (many distributions
/// start services at 1,024) and returns the soft limit now in force, where known.
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let raised = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                warn!(reason = %e, "the open-files limit stays as it is");
            }
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(target_os = "linux"))]
    None
}
