//! The API server: a thread named `petrel-api` running hyper (HTTP/1.1) on a single-threaded
//! tokio runtime over the API Unix socket.
//!
//! Each connection is its own task, so a slow or half-sent request never holds up another
//! client; the VMM thread only ever sees whole, validated requests.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;
use vmm_sys_util::eventfd::EventFd;

use crate::request::{ApiRequest, ApiResponse};
use crate::service::{handle, handle_web, Shared};
use crate::socket::bind_private;
use crate::web::{WebGate, WebListener};

/// The channel the API thread sends requests on, each with its own reply channel.
pub type RequestSender = mpsc::Sender<(ApiRequest, mpsc::Sender<ApiResponse>)>;

/// Statuses the HTTP layer (hyper) answers malformed requests with by itself, without a body:
/// 400 (unparsable request line or header), 414 (request target too long) and 431 (request
/// head over [`MAX_BUF_BYTES`] or more than 100 headers). The OpenAPI document lists them.
pub const HTTP_LAYER_STATUSES: &[u16] = &[400, 414, 431];

/// Time allowed for a client to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest read buffer per connection, which bounds the request head.
const MAX_BUF_BYTES: usize = 32 * 1024;
/// Time given to open connections to finish when the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process serves on the socket path.
    #[error("API socket {0} is in use by a running process; refusing to start")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("API socket path {0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The path cannot be a Unix socket address.
    #[error("API socket path {0} is empty, contains NUL or is too long for a Unix socket")]
    BadPath(PathBuf),
    /// A system call on the socket failed.
    #[error("API socket {0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    /// The tokio runtime could not be built.
    #[error("failed to build the API runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The API thread could not be spawned.
    #[error("failed to spawn the API thread: {0}")]
    Thread(#[source] io::Error),
}

/// A running API server. Dropping it stops the thread and removes the socket file.
#[derive(Debug)]
pub struct ApiServer {
    path: Option<PathBuf>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` (mode 0600; a stale socket is replaced, a live one refused) and serves it
    /// on a new thread named `petrel-api`. Valid requests are sent on `requests` with a fresh
    /// reply channel, then `wake` is written.
    pub fn start(
        path: &Path,
        requests: RequestSender,
        wake: EventFd,
    ) -> Result<ApiServer, ServerError> {
        Self::start_with(Some(path), None, requests, wake)
    }

    /// Like [`ApiServer::start`], on the socket `path` if given and on the web console's
    /// TCP listener `web` if given, both from the same thread and HTTP stack.
    pub fn start_with(
        path: Option<&Path>,
        web: Option<WebListener>,
        requests: RequestSender,
        wake: EventFd,
    ) -> Result<ApiServer, ServerError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ServerError::Runtime)?;
        let unix = match path {
            Some(path) => Some(unix_listener(&runtime, path)?),
            None => None,
        };
        let remove_socket = || {
            if let Some(path) = path {
                let _ = std::fs::remove_file(path);
            }
        };
        let tcp = match web {
            Some(web) => {
                let addr = web.local_addr();
                let _guard = runtime.enter();
                let listener = web
                    .listener
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(web.listener));
                match listener {
                    Ok(l) => Some((l, Arc::new(web.gate))),
                    Err(e) => {
                        remove_socket();
                        return Err(ServerError::Io(PathBuf::from(addr.to_string()), e));
                    }
                }
            }
            None => None,
        };
        let shared = Arc::new(Shared { requests, wake });
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("petrel-api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Some(listener) = unix {
                        tokio::spawn(accept_loop(listener, shared.clone()));
                    }
                    if let Some((listener, gate)) = tcp {
                        tokio::spawn(web_accept_loop(listener, shared, gate));
                    }
                    // Stops on a signal or when the sender is dropped.
                    let _ = shutdown_rx.await;
                });
                runtime.shutdown_timeout(SHUTDOWN_GRACE);
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                remove_socket();
                return Err(ServerError::Thread(e));
            }
        };
        if let Some(path) = path {
            tracing::info!("API server listening on {}", path.display());
        }
        Ok(ApiServer {
            path: path.map(Path::to_owned),
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// The socket path, if the server listens on a socket.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// Binds the API socket and hands it to the runtime.
fn unix_listener(
    runtime: &tokio::runtime::Runtime,
    path: &Path,
) -> Result<tokio::net::UnixListener, ServerError> {
    let std_listener = bind_private(path)?;
    let _guard = runtime.enter();
    std_listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(std_listener))
        .map_err(|e| {
            let _ = std::fs::remove_file(path);
            ServerError::Io(path.to_owned(), e)
        })
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the API thread panicked");
            }
        }
        let Some(path) = &self.path else { return };
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("failed to remove API socket {}: {e}", path.display());
            }
        }
    }
}

/// Serves one connection with `service` under the common limits.
fn serve_connection<I, S>(io: I, service: S)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_BUF_BYTES);
        if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
            tracing::debug!("API connection ended: {e}");
        }
    });
}

async fn accept_loop(listener: tokio::net::UnixListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. EMFILE: back off rather than spin.
                tracing::warn!("API accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        serve_connection(stream, service_fn(move |req| handle(req, shared.clone())));
    }
}

async fn web_accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    gate: Arc<WebGate>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("web console accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (shared, gate) = (shared.clone(), gate.clone());
        serve_connection(
            stream,
            service_fn(move |req| handle_web(req, shared.clone(), gate.clone())),
        );
    }
}
