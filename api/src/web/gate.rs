//! The loopback TCP listener of the web console and the checks every request on it passes.

use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE as COOKIE_HEADER, HOST, LOCATION,
    ORIGIN, SET_COOKIE, WWW_AUTHENTICATE,
};
use hyper::{Response, StatusCode};

use crate::router::match_template;
use crate::types::ApiError;

/// The cookie that carries the token.
pub const COOKIE: &str = "petrel_console";

/// Bytes of randomness in a token (printed as twice as many hex digits).
const TOKEN_BYTES: usize = 16;

/// The routes served on the TCP listener: the page's own and what it calls. No route that
/// configures the VM, takes snapshots or writes host files.
pub const WEB_ROUTES: &[(&str, &[&str])] = &[
    ("/console", &["GET"]),
    ("/console.js", &["GET"]),
    ("/console.css", &["GET"]),
    ("/", &["GET"]),
    ("/vm", &["PATCH"]),
    ("/vm/config", &["GET"]),
    ("/serial", &["GET", "PUT"]),
    ("/display/screenshot", &["GET"]),
    ("/input/{id}", &["PUT"]),
];

/// Errors opening the web console's listener.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The address is not a loopback address.
    #[error("--web-console {0}: only a loopback address (127.0.0.1 or [::1]) is allowed")]
    NotLoopback(SocketAddr),
    /// Binding failed.
    #[error("--web-console {0}: {1}")]
    Bind(SocketAddr, #[source] io::Error),
    /// The token could not be drawn.
    #[error("cannot read a random token from /dev/urandom: {0}")]
    Random(#[source] io::Error),
}

/// A bound loopback listener and its token, before the server serves it.
#[derive(Debug)]
pub struct WebListener {
    pub(crate) listener: TcpListener,
    pub(crate) gate: WebGate,
}

impl WebListener {
    /// Binds `addr` (port 0 picks a free port) with a fresh token. Refuses a non-loopback
    /// address.
    pub fn bind(addr: SocketAddr) -> Result<Self, WebError> {
        if !addr.ip().is_loopback() {
            return Err(WebError::NotLoopback(addr));
        }
        let token = random_token().map_err(WebError::Random)?;
        let listener = TcpListener::bind(addr).map_err(|e| WebError::Bind(addr, e))?;
        let addr = listener.local_addr().map_err(|e| WebError::Bind(addr, e))?;
        Ok(Self {
            listener,
            gate: WebGate::new(addr, token),
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.gate.addr
    }

    /// The URL to open: the page with the token in the query.
    pub fn url(&self) -> String {
        format!(
            "http://{}/console?token={}",
            self.gate.addr, self.gate.token
        )
    }
}

/// 16 bytes from `/dev/urandom` as 32 lowercase hex digits.
fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let mut hex = String::with_capacity(2 * TOKEN_BYTES);
    for b in bytes {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

/// Compares without stopping at the first difference, so timing does not tell how much of a
/// guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the gate decided about a request.
#[derive(Debug)]
pub enum Gate {
    /// Serve it.
    Pass,
    /// Answer with this instead.
    Reply(Response<Full<Bytes>>),
}

/// The checks of the TCP listener.
#[derive(Debug, Clone)]
pub struct WebGate {
    addr: SocketAddr,
    token: String,
}

fn reply(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::to_string(&ApiError {
        fault_message: message.into(),
    })
    .unwrap_or_else(|_| String::from("{}"));
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl WebGate {
    /// A gate for a listener on `addr` with `token`.
    pub fn new(addr: SocketAddr, token: String) -> Self {
        Self { addr, token }
    }

    /// The `Host` values that name this listener.
    fn is_own_host(&self, host: &str) -> bool {
        let port = self.addr.port();
        host == self.addr.to_string() || host == format!("localhost:{port}")
    }

    /// Whether the request carries the token (cookie or bearer).
    fn is_authorized(&self, headers: &HeaderMap) -> bool {
        let token = self.token.as_bytes();
        let bearer = headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|t| same_secret(t.trim().as_bytes(), token));
        let cookie = headers
            .get_all(COOKIE_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| name == COOKIE && same_secret(value.as_bytes(), token));
        bearer || cookie
    }

    /// Checks one request: Host, Origin, token, route. `query` is the part after `?`.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Gate {
        let host = headers.get(HOST).and_then(|v| v.to_str().ok());
        if !host.is_some_and(|h| self.is_own_host(h)) {
            return Gate::Reply(reply(
                StatusCode::FORBIDDEN,
                &format!(
                    "Host must be {} or localhost:{}: the web console answers only requests for the loopback address",
                    self.addr,
                    self.addr.port()
                ),
            ));
        }
        let own_origin = format!("http://{}", host.unwrap_or_default());
        if let Some(origin) = headers.get(ORIGIN) {
            if origin.as_bytes() != own_origin.as_bytes() {
                return Gate::Reply(reply(
                    StatusCode::FORBIDDEN,
                    "cross-origin requests are not allowed",
                ));
            }
        }
        let given = query
            .unwrap_or_default()
            .split('&')
            .find_map(|p| p.strip_prefix("token="));
        if let (Some(given), "/console", "GET") = (given, path, method) {
            if !same_secret(given.as_bytes(), self.token.as_bytes()) {
                return Gate::Reply(self.unauthorized("wrong token"));
            }
            return Gate::Reply(self.login());
        }
        if !self.is_authorized(headers) {
            return Gate::Reply(self.unauthorized("missing or wrong token"));
        }
        let served = WEB_ROUTES
            .iter()
            .any(|(t, m)| match_template(t, path).is_some() && m.contains(&method));
        if !served {
            return Gate::Reply(reply(
                StatusCode::NOT_FOUND,
                &format!(
                    "{method} {} is not served on the web console's port; use the API socket",
                    path.escape_default()
                ),
            ));
        }
        Gate::Pass
    }

    /// 303 to the page without the token, which moves into an HttpOnly cookie.
    fn login(&self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SEE_OTHER;
        let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", self.token);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(SET_COOKIE, v);
        }
        r.headers_mut()
            .insert(LOCATION, HeaderValue::from_static("/console"));
        r
    }

    fn unauthorized(&self, why: &str) -> Response<Full<Bytes>> {
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            &format!("{why}: open the URL petrel printed at start (it carries the token)"),
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"petrel\""),
        );
        r
    }
}

#[cfg(test)]
mod tests;
