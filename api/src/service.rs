//! One HTTP request on the API thread: read the body within limits, route it, carry it to
//! the VMM thread and turn the answer into an HTTP response.

use std::convert::Infallible;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, IF_NONE_MATCH};
use hyper::{Request, Response, StatusCode};
use vmm_sys_util::eventfd::EventFd;

use crate::image::{encode_png, RawImage, GENERATION_HEADER, PNG_CONTENT_TYPE};
use crate::openapi::OPENAPI_JSON;
use crate::request::{ApiRequest, ApiResponse, ERROR_STATUSES};
use crate::router::{allowed_methods, route_query, Routed};
use crate::server::RequestSender;
use crate::types::ApiError;
use crate::web::{asset_response, secure, Gate, WebGate};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time allowed to read a request body once the headers are in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection task shares.
pub struct Shared {
    /// Where requests for the VMM thread go.
    pub requests: RequestSender,
    /// Written after each request to wake the VMM thread.
    pub wake: EventFd,
}

/// Encodes an [`ApiResponse::Image`] as a PNG `Binary` reply (a 500 if it cannot be);
/// other replies pass unchanged. CPU-heavy: the server runs it on a blocking thread.
pub fn encode_image(resp: ApiResponse) -> ApiResponse {
    let ApiResponse::Image(image) = resp else {
        return resp;
    };
    // Default rather than Fast: on desktop-like pictures Fast's output is ~40x larger
    // (1.6 MB against 42 KB for 1280x800) for a third of the time (devices/benches/gpu.rs).
    match encode_png(&image, png::Compression::Default) {
        Ok(body) => ApiResponse::Binary {
            content_type: PNG_CONTENT_TYPE,
            body,
            headers: image_headers(image.generation),
        },
        Err(e) => ApiResponse::error(500, format!("cannot encode the screenshot: {e}")),
    }
}

/// The headers naming a screenshot's frame: `x-petrel-generation: N` and `etag: "N"`.
fn image_headers(generation: u64) -> Vec<(&'static str, String)> {
    vec![
        (GENERATION_HEADER, generation.to_string()),
        ("etag", format!("\"{generation}\"")),
    ]
}

/// Whether an `If-None-Match` header value names frame `generation` (`"N"`, `W/"N"`, in a
/// list or as `*`): the client has that picture, so it gets a 304 and no PNG is encoded.
fn client_has(if_none_match: Option<&str>, generation: u64) -> bool {
    let Some(value) = if_none_match else {
        return false;
    };
    let tag = format!("\"{generation}\"");
    value
        .split(',')
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag)
}

/// The reply to a screenshot request: 304 when the client has the frame, else the PNG
/// (encoded on a blocking thread).
async fn screenshot_reply(image: RawImage, if_none_match: Option<&str>) -> ApiResponse {
    if client_has(if_none_match, image.generation) {
        return ApiResponse::NotModified {
            headers: image_headers(image.generation),
        };
    }
    tokio::task::spawn_blocking(move || encode_image(ApiResponse::Image(image)))
        .await
        .unwrap_or_else(|e| ApiResponse::error(500, format!("screenshot encoder failed: {e}")))
}

/// Turns an [`ApiResponse`] into an HTTP response.
pub fn to_http(resp: ApiResponse) -> Response<Full<Bytes>> {
    let mut extra = Vec::new();
    let (status, content_type, body) = match encode_image(resp) {
        ApiResponse::NoContent => (StatusCode::NO_CONTENT, None, Bytes::new()),
        ApiResponse::Json(v) => (
            StatusCode::OK,
            Some("application/json"),
            Bytes::from(v.to_string()),
        ),
        ApiResponse::Text(t) => (
            StatusCode::OK,
            Some("text/plain; version=0.0.4"),
            Bytes::from(t),
        ),
        ApiResponse::Binary {
            content_type,
            body,
            headers,
        } => {
            extra = headers;
            (StatusCode::OK, Some(content_type), Bytes::from(body))
        }
        ApiResponse::NotModified { headers } => {
            extra = headers;
            (StatusCode::NOT_MODIFIED, None, Bytes::new())
        }
        // encode_image turned it into Binary or Error.
        ApiResponse::Image(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("application/json"),
            Bytes::from_static(b"{\"fault_message\": \"unencoded image\"}"),
        ),
        ApiResponse::Error {
            status,
            fault_message,
        } => {
            // Only statuses the OpenAPI document lists go out.
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|s| ERROR_STATUSES.contains(&s.as_u16()))
                .unwrap_or_else(|| {
                    tracing::warn!(status, "undocumented API error status sent as 500");
                    StatusCode::INTERNAL_SERVER_ERROR
                });
            let body = serde_json::to_string(&ApiError { fault_message })
                .unwrap_or_else(|_| String::from("{}"));
            (status, Some("application/json"), Bytes::from(body))
        }
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

fn too_large() -> ApiResponse {
    ApiResponse::error(
        413,
        format!("request body too large: the limit is {MAX_BODY_BYTES} bytes"),
    )
}

/// Reads the whole body within [`MAX_BODY_BYTES`] and [`BODY_READ_TIMEOUT`].
async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiResponse> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), MAX_BODY_BYTES);
    match tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect()).await {
        Err(_) => Err(ApiResponse::error(
            408,
            format!(
                "request body not received within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiResponse::error(
            400,
            format!("failed to read request body: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Sends `req` to the VMM thread and waits for its answer without blocking other
/// connections.
async fn dispatch(req: ApiRequest, shared: &Shared) -> ApiResponse {
    let gone = || {
        ApiResponse::error(
            503,
            "the VMM thread is not running: request not carried out",
        )
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    if shared.requests.send((req, reply_tx)).is_err() {
        return gone();
    }
    if let Err(e) = shared.wake.write(1) {
        tracing::warn!("failed to wake the VMM thread: {e}");
    }
    match tokio::task::spawn_blocking(move || reply_rx.recv()).await {
        Ok(Ok(resp)) => resp,
        _ => gone(),
    }
}

/// Handles one request; never fails, errors become 4xx/5xx replies.
pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(serve(req, &shared).await)
}

/// Handles one request on the web console's TCP listener: the gate first, then as on the
/// socket; every reply carries the security headers.
pub async fn handle_web(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    gate: Arc<WebGate>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let decision = gate.check(
        req.method().as_str(),
        req.uri().path(),
        req.uri().query(),
        req.headers(),
    );
    let mut response = match decision {
        Gate::Pass => serve(req, &shared).await,
        Gate::Reply(r) => r,
    };
    secure(&mut response);
    Ok(response)
}

async fn serve(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let if_none_match = req
        .headers()
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    tracing::debug!("API request {method} {path}");
    let resp = match read_body(req).await {
        Err(resp) => resp,
        Ok(body) => match route_query(&method, &path, query.as_deref(), &body) {
            Err(resp) => resp,
            Ok(Routed::OpenApi) => {
                let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI_JSON.as_bytes())));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return r;
            }
            Ok(Routed::Asset(asset)) => return asset_response(asset),
            Ok(Routed::Vmm(request)) => match dispatch(*request, shared).await {
                ApiResponse::Image(image) => {
                    screenshot_reply(image, if_none_match.as_deref()).await
                }
                other => other,
            },
        },
    };
    let mut http = to_http(resp);
    if http.status() == StatusCode::METHOD_NOT_ALLOWED {
        if let Some(allowed) = allowed_methods(&path) {
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                http.headers_mut().insert(ALLOW, v);
            }
        }
    }
    http
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_with_the_frame_gets_304_and_no_body() {
        for has in [r#""7""#, r#"W/"7""#, r#""1", "7""#, "*"] {
            assert!(client_has(Some(has), 7), "{has}");
        }
        for lacks in [r#""8""#, "7", r#""07""#, "", r#"W/"""#] {
            assert!(!client_has(Some(lacks), 7), "{lacks}");
        }
        assert!(!client_has(None, 7));
        let http = to_http(ApiResponse::NotModified {
            headers: image_headers(7),
        });
        assert_eq!(http.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(http.headers()["etag"], r#""7""#);
        assert_eq!(http.headers()["x-petrel-generation"], "7");
        assert!(http.headers().get(CONTENT_TYPE).is_none());
    }

    #[test]
    fn images_go_out_as_png_with_their_generation() {
        let image = crate::image::RawImage {
            width: 2,
            height: 1,
            rgba: vec![1, 2, 3, 4, 5, 6, 7, 8],
            generation: 42,
        };
        let http = to_http(ApiResponse::Image(image));
        assert_eq!(http.status(), StatusCode::OK);
        assert_eq!(http.headers()[CONTENT_TYPE], "image/png");
        assert_eq!(http.headers()["x-petrel-generation"], "42");
        assert_eq!(http.headers()["etag"], r#""42""#);
        let bad = crate::image::RawImage {
            width: 2,
            height: 2,
            rgba: vec![0; 3],
            generation: 1,
        };
        assert_eq!(
            to_http(ApiResponse::Image(bad)).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let route = crate::router::route("GET", "/display/screenshot", b"");
        assert_eq!(
            route,
            Ok(crate::router::Routed::Vmm(Box::new(
                ApiRequest::GetScreenshot
            )))
        );
        assert!(crate::router::route("PUT", "/display/screenshot", b"{}").is_err());
    }

    #[test]
    fn only_documented_error_statuses_go_out() {
        for &status in ERROR_STATUSES {
            let http = to_http(ApiResponse::error(status, "x"));
            assert_eq!(http.status().as_u16(), status);
            assert_eq!(http.headers()[CONTENT_TYPE], "application/json");
        }
        for status in [0, 200, 204, 302, 401, 418, 429, 502, 599, 1000] {
            let http = to_http(ApiResponse::error(status, "x"));
            assert_eq!(http.status(), StatusCode::INTERNAL_SERVER_ERROR, "{status}");
        }
    }
}
