//! The web console: one page (with its script and style sheet) that shows the screen, sends
//! keyboard and pointer input, shows the serial log and pauses or resumes the VM.
//!
//! The page is served on the API socket (`GET /console`) and, when asked for, on a
//! loopback-only TCP listener ([`WebListener`]). A browser cannot tell which local user a
//! TCP connection comes from, so that listener checks every request ([`WebGate`]): the
//! `Host` header must name the loopback address (against DNS rebinding), an `Origin` header
//! must be the page's own, and the request must carry the random token printed at start, as
//! a cookie (set once from `?token=` on `/console`) or as `Authorization: Bearer`. Only the
//! routes the page uses are served there.

mod gate;

pub use gate::{Gate, WebError, WebGate, WebListener, COOKIE, WEB_ROUTES};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

/// A file of the web console, served as is.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    /// Its route.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its content.
    pub body: &'static str,
}

/// The console's files. The page loads the other two: the Content-Security-Policy allows no
/// inline script or style.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/console",
        content_type: "text/html; charset=utf-8",
        body: include_str!("console.html"),
    },
    Asset {
        path: "/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("console.js"),
    },
    Asset {
        path: "/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("console.css"),
    },
];

/// The asset served at `path` (one of [`ASSETS`]; the router only asks for those).
pub fn asset(path: &str) -> &'static Asset {
    ASSETS.iter().find(|a| a.path == path).unwrap_or(&ASSETS[0])
}

/// Headers on every web console file and every reply on the TCP listener.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
];

/// Adds [`SECURITY_HEADERS`] and `Cache-Control: no-store` to `response`.
pub fn secure(response: &mut Response<Full<Bytes>>) {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The reply carrying `asset`.
pub fn asset_response(asset: &'static Asset) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(asset.body.as_bytes())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    secure(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_routed_and_the_page_loads_only_its_own_files() {
        for a in ASSETS {
            assert_eq!(asset(a.path), a);
            assert!(crate::router::allowed_methods(a.path) == Some(&["GET"][..]));
        }
        let page = asset("/console").body;
        assert!(page.contains(r#"src="/console.js""#));
        assert!(page.contains(r#"href="/console.css""#));
        // The CSP forbids inline code: the page has none, and nothing from elsewhere.
        assert!(!page.contains("<script>"), "inline script");
        assert!(!page.contains("<style"), "inline style");
        let handler = page.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
        for a in ASSETS {
            assert!(!a.body.contains("http://"), "{}: external resource", a.path);
            assert!(
                !a.body.contains("https://"),
                "{}: external resource",
                a.path
            );
        }
    }
}
