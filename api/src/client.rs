//! A small blocking client of the API for the CLI (`petrel ctl`): hyper's HTTP/1.1 client
//! over a Unix socket, on a current-thread tokio runtime.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// Errors of [`Client::request`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The tokio runtime could not be built.
    #[error("failed to build the client runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Connecting to the socket failed.
    #[error("failed to connect to API socket {0}: {1}")]
    Connect(PathBuf, #[source] std::io::Error),
    /// The method or path is not valid HTTP.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// HTTP failed (the server closed the connection, sent garbage, ...).
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
}

/// A whole response with its raw body (for binary bodies such as screenshots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub body: Vec<u8>,
}

impl BinaryResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy), e.g. an error's JSON.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client of the API socket at one path. Each request uses a new connection.
#[derive(Clone, Debug)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// A client of the socket at `path`; nothing is connected yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Client { path: path.into() }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `method path` with an optional JSON body; returns the status and the body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, String), ClientError> {
        let body = body.map(|v| v.to_string().into_bytes());
        self.request_bytes(method, path, body)
    }

    /// Like [`Client::request`] with a body of raw bytes, sent as `application/json`.
    pub fn request_bytes(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, String), ClientError> {
        let r = self.exchange(method, path, body)?;
        let text = r.text();
        Ok((r.status, text))
    }

    /// `GET path`, returning the status, headers and raw body (`GET /display/screenshot`).
    pub fn get_bytes(&self, path: &str) -> Result<BinaryResponse, ClientError> {
        self.exchange("GET", path, None)
    }

    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<BinaryResponse, ClientError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| ClientError::InvalidRequest(format!("method `{method}`: {e}")))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost");
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::InvalidRequest(format!("path `{path}`: {e}")))?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ClientError::Runtime)?;
        runtime.block_on(async {
            let stream = tokio::net::UnixStream::connect(&self.path)
                .await
                .map_err(|e| ClientError::Connect(self.path.clone(), e))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("API client connection: {e}");
                }
            });
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (n.as_str().to_owned(), value)
                })
                .collect();
            let body = response.into_body().collect().await?.to_bytes().to_vec();
            Ok(BinaryResponse {
                status,
                headers,
                body,
            })
        })
    }
}
