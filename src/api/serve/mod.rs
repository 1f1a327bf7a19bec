//! `ferrolm serve`: an OpenAI-compatible HTTP server (axum on tokio) over one engine. The engine
//! runs on its own thread ([`worker`]); every request joins its continuous batch, so concurrent
//! clients share steps, the prefix cache and the KV pool. Bounded: body size, connections (the
//! listener waits for a free slot) and requests in flight (429 with `Retry-After` beyond it). A
//! client that disconnects cancels its request; SIGINT/SIGTERM stop accepting, let requests in
//! flight finish for the grace period, cancel the rest and return.

pub mod openai;
pub mod worker;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::cors::{Any, CorsLayer};

use crate::engine::RequestId;
use crate::error::{Error, Result};
use openai::{chat_completion, completion, parse, ApiError, Chunks, Endpoint, Envelope};
use worker::{EngineHandle, Update};

/// How the server listens and what it bounds.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// The model's id in `/v1/models` and responses; requests naming another model get 404.
    pub model_name: String,
    /// When set, `/v1/*` requests must send `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Requests in flight beyond this get 429.
    pub max_requests: usize,
    /// Open connections beyond this wait in the listen backlog.
    pub max_connections: usize,
    pub max_body_bytes: usize,
    /// How long requests in flight may run on after SIGINT/SIGTERM before they are cancelled.
    pub shutdown_grace: Duration,
    /// Expose `POST /ferrolm/faults/lose-device` (tests of how clients see a server error).
    pub faults: bool,
}

impl ApiError {
    fn response(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.response()
    }
}

struct App {
    engine: EngineHandle,
    opts: ServeOptions,
    /// One permit per request in flight.
    slots: Arc<Semaphore>,
    /// Requests refused with 429.
    rejected: AtomicU64,
}

impl App {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.opts.api_key else { return Ok(()) };
        let sent = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match sent {
            Some(s) if s == key => Ok(()),
            _ => Err(ApiError::new(401, "invalid_api_key", "missing or wrong API key: send the server's --api-key as `Authorization: Bearer <key>`")),
        }
    }

    fn check_model(&self, asked: Option<&str>) -> Result<(), ApiError> {
        let name = &self.opts.model_name;
        match asked {
            Some(m) if m != name && m.trim_end_matches(".gguf") != name => {
                Err(ApiError::new(404, "model_not_found", format!("the model '{m}' is not served here; this server serves '{name}' (GET /v1/models)")))
            }
            _ => Ok(()),
        }
    }
}

/// Cancels its request when dropped before the request ended: the client disconnected (hyper
/// drops the handler or the streamed body) or gave up.
struct Guard {
    engine: EngineHandle,
    id: RequestId,
    done: bool,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.engine.cancel(self.id);
        }
    }
}

/// Serves until SIGINT or SIGTERM; `on_listen` gets the bound address (port 0 picks one).
pub fn serve(engine: EngineHandle, opts: ServeOptions, on_listen: impl FnOnce(SocketAddr)) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind((opts.host.as_str(), opts.port)).await.map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("cannot listen on {}:{}: {e}", opts.host, opts.port))))?;
        let listener = Limited { inner: listener, slots: Arc::new(Semaphore::new(opts.max_connections.max(1))) };
        on_listen(listener.inner.local_addr()?);
        let grace = opts.shutdown_grace;
        let app = Arc::new(App { engine: engine.clone(), slots: Arc::new(Semaphore::new(opts.max_requests.max(1))), rejected: AtomicU64::new(0), opts });
        let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            if stopped.await.is_ok() {
                tokio::time::sleep(grace).await;
                engine.cancel_all();
            }
        });
        let signal = async move {
            shutdown_signal().await;
            eprintln!("ferrolm serve: shutting down; requests in flight get {} s to finish", grace.as_secs_f32());
            let _ = stopping.send(());
        };
        axum::serve(listener, router(app)).with_graceful_shutdown(signal).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}

fn router(app: Arc<App>) -> Router {
    let cors = CorsLayer::new().allow_origin(Any).allow_methods(Any).allow_headers(Any).expose_headers([header::RETRY_AFTER]).max_age(Duration::from_secs(3600));
    let max_body = app.opts.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(|s: State<Arc<App>>, h: HeaderMap, b: Result<Bytes, BytesRejection>| generate(s, h, b, Endpoint::Chat)))
        .route("/v1/completions", post(|s: State<Arc<App>>, h: HeaderMap, b: Result<Bytes, BytesRejection>| generate(s, h, b, Endpoint::Completions)))
        .route("/ferrolm/faults/lose-device", post(lose_device))
        .fallback(|| async { ApiError::new(404, "not_found", "no such endpoint; this server has /v1/chat/completions, /v1/completions, /v1/models, /health and /stats") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(cors)
        .with_state(app)
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match app.engine.stats().await {
        Ok(s) if !s.device_lost => Json(json!({ "status": "ok" })).into_response(),
        Ok(_) => ApiError::unavailable("the GPU device was lost; restart the server").response(),
        Err(e) => e.response(),
    }
}

async fn stats(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let mut s = serde_json::to_value(app.engine.stats().await?).map_err(|e| ApiError::new(500, "engine", e.to_string()))?;
    s["rejected"] = app.rejected.load(Ordering::Relaxed).into();
    s["model"] = app.opts.model_name.clone().into();
    Ok(Json(s))
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers)?;
    Ok(Json(json!({ "object": "list", "data": [{ "id": app.opts.model_name, "object": "model", "created": 0, "owned_by": "ferrolm" }] })))
}

async fn lose_device(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    if !app.opts.faults {
        return Err(ApiError::new(404, "not_found", "fault injection is off; start the server with --faults"));
    }
    app.engine.lose_device().await?;
    Ok(Json(json!({ "device_lost": true })))
}

async fn generate(State(app): State<Arc<App>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>, endpoint: Endpoint) -> Result<Response, ApiError> {
    app.authorize(&headers)?;
    let body =
        body.map_err(|r| ApiError::new(r.status().as_u16(), "invalid_request", format!("invalid request: {} (this server takes bodies of at most {} bytes)", r.body_text(), app.opts.max_body_bytes)))?;
    let slot = app.slots.clone().try_acquire_owned().map_err(|_| {
        app.rejected.fetch_add(1, Ordering::Relaxed);
        ApiError::new(429, "rate_limited", format!("{} requests are in flight, the most this server takes at once; retry shortly", app.opts.max_requests)).retry_after(1)
    })?;
    let parsed = parse(&body, endpoint)?;
    app.check_model(parsed.model.as_deref())?;
    let mut submitted = app.engine.submit(parsed.input, parsed.req).await?;
    let mut guard = Guard { engine: app.engine.clone(), id: submitted.id, done: false, _slot: slot };
    let envelope = Envelope::new(endpoint, &app.opts.model_name);
    if parsed.stream {
        // The headers wait for the first update, so a request that fails before its first
        // token (a lost device) gets its HTTP status rather than an error event.
        let first = match submitted.updates.recv().await {
            Some(Update::Failed(e)) => {
                guard.done = true;
                return Err(e);
            }
            Some(u) => u,
            None => return Err(ApiError::unavailable("the engine stopped before the request started")),
        };
        return Ok(stream(first, submitted.updates, guard, Chunks::new(envelope, endpoint, parsed.tools), parsed.logprobs));
    }
    loop {
        match submitted.updates.recv().await {
            Some(Update::Token { .. }) => {}
            Some(Update::Done { generation, stats, logprobs }) => {
                guard.done = true;
                let lp = parsed.logprobs.then_some(&logprobs[..]);
                let body = match endpoint {
                    Endpoint::Chat => chat_completion(&envelope, &generation, &stats, &parsed.tools, lp),
                    Endpoint::Completions => completion(&envelope, &generation, &stats, lp),
                };
                return Ok(Json(body).into_response());
            }
            Some(Update::Failed(e)) => {
                guard.done = true;
                return Err(e);
            }
            None => return Err(ApiError::unavailable("the engine stopped before the request finished")),
        }
    }
}

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

struct Streaming {
    /// The update that came before the response started.
    first: Option<Update>,
    updates: tokio::sync::mpsc::UnboundedReceiver<Update>,
    guard: Guard,
    chunks: Chunks,
    logprobs: bool,
    pending: std::collections::VecDeque<Bytes>,
    ended: bool,
}

/// Server-sent events: one `data:` line per chunk, `data: [DONE]` at the end; a failure after
/// the response started is sent as `data: {"error": ...}`.
fn stream(first: Update, updates: tokio::sync::mpsc::UnboundedReceiver<Update>, guard: Guard, chunks: Chunks, logprobs: bool) -> Response {
    let pending = chunks.start().iter().map(event).collect();
    let state = Streaming { first: Some(first), updates, guard, chunks, logprobs, pending, ended: false };
    let body = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(b) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(b), s));
            }
            if s.ended {
                return None;
            }
            let update = match s.first.take() {
                Some(u) => Some(u),
                None => s.updates.recv().await,
            };
            match update {
                Some(Update::Token { text }) => {
                    if let Some(c) = s.chunks.token(&text) {
                        s.pending.push_back(event(&c));
                    }
                }
                Some(Update::Done { generation, stats, logprobs }) => {
                    s.guard.done = true;
                    let lp = s.logprobs.then_some(&logprobs[..]);
                    s.pending.extend(s.chunks.done(&generation, &stats, lp).iter().map(event));
                    s.pending.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                    s.ended = true;
                }
                Some(Update::Failed(e)) => {
                    s.guard.done = true;
                    s.pending.push_back(event(&e.body()));
                    s.ended = true;
                }
                None => {
                    s.pending.push_back(event(&ApiError::unavailable("the engine stopped before the request finished").body()));
                    s.ended = true;
                }
            }
        }
    });
    let mut r = Body::from_stream(body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A listener that holds at most `slots` connections open; the next waits in the backlog.
struct Limited {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

/// A connection holding its slot until it closes.
struct Conn {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl axum::serve::Listener for Limited {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        let slot = self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (Conn { io, _slot: slot }, addr)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
