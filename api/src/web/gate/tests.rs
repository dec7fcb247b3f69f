//! The gate's decisions, request by request.

use super::*;

const TOKEN: &str = "00112233445566778899aabbccddeeff";

fn gate() -> WebGate {
    WebGate::new("127.0.0.1:8080".parse().unwrap(), TOKEN.into())
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

/// The status the gate answers with; 0 when it lets the request through.
fn status(method: &str, path: &str, query: Option<&str>, pairs: &[(&'static str, &str)]) -> u16 {
    match gate().check(method, path, query, &headers(pairs)) {
        Gate::Pass => 0,
        Gate::Reply(r) => r.status().as_u16(),
    }
}

const HOST_OK: (&str, &str) = ("host", "127.0.0.1:8080");
fn cookie() -> (&'static str, String) {
    ("cookie", format!("a=b; {COOKIE}={TOKEN}"))
}

#[test]
fn the_token_in_the_query_becomes_a_cookie_and_a_redirect_to_the_clean_url() {
    let g = gate();
    let q = format!("token={TOKEN}");
    let Gate::Reply(r) = g.check("GET", "/console", Some(&q), &headers(&[HOST_OK])) else {
        panic!("no redirect");
    };
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/console");
    let set = r.headers()[SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with(&format!("{COOKIE}={TOKEN};")), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
}

#[test]
fn cookie_or_bearer_token_lets_page_routes_through() {
    let (c, v) = cookie();
    assert_eq!(status("GET", "/console", None, &[HOST_OK, (c, &v)]), 0);
    assert_eq!(
        status("GET", "/serial", Some("from=3"), &[HOST_OK, (c, &v)]),
        0
    );
    assert_eq!(status("PUT", "/serial", None, &[HOST_OK, (c, &v)]), 0);
    assert_eq!(status("PATCH", "/vm", None, &[HOST_OK, (c, &v)]), 0);
    assert_eq!(status("PUT", "/input/kbd0", None, &[HOST_OK, (c, &v)]), 0);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        status(
            "GET",
            "/display/screenshot",
            None,
            &[HOST_OK, ("authorization", &bearer)]
        ),
        0
    );
    assert_eq!(
        status(
            "GET",
            "/",
            None,
            &[("host", "localhost:8080"), ("authorization", &bearer)]
        ),
        0
    );
    assert_eq!(
        status(
            "PATCH",
            "/vm",
            None,
            &[HOST_OK, (c, &v), ("origin", "http://127.0.0.1:8080")]
        ),
        0
    );
}

#[test]
fn no_or_wrong_token_is_401() {
    let wrong = TOKEN.replace('0', "1");
    assert_eq!(status("GET", "/console", None, &[HOST_OK]), 401);
    assert_eq!(status("GET", "/console", Some("token="), &[HOST_OK]), 401);
    assert_eq!(
        status(
            "GET",
            "/console",
            Some(&format!("token={wrong}")),
            &[HOST_OK]
        ),
        401
    );
    // A prefix, a longer string and the token in another cookie are all wrong.
    for bad in [
        format!("{COOKIE}={}", &TOKEN[..31]),
        format!("{COOKIE}={TOKEN}0"),
        format!("other={TOKEN}"),
        format!("{COOKIE}="),
    ] {
        assert_eq!(
            status("GET", "/serial", None, &[HOST_OK, ("cookie", &bad)]),
            401,
            "{bad}"
        );
    }
    for bad in [
        format!("Bearer {wrong}"),
        format!("Basic {TOKEN}"),
        TOKEN.to_string(),
    ] {
        assert_eq!(
            status("GET", "/serial", None, &[HOST_OK, ("authorization", &bad)]),
            401,
            "{bad}"
        );
    }
    // The token in the query works only on the page itself.
    assert_eq!(
        status(
            "GET",
            "/serial",
            Some(&format!("token={TOKEN}")),
            &[HOST_OK]
        ),
        401
    );
}

#[test]
fn a_host_that_is_not_the_loopback_address_is_403_even_with_the_token() {
    let (c, v) = cookie();
    for host in [
        "evil.example:8080",
        "127.0.0.1:8081",
        "127.0.0.1",
        "localhost",
        "0.0.0.0:8080",
        "127.0.0.1:8080.evil.example",
        "",
    ] {
        assert_eq!(
            status("GET", "/console", None, &[("host", host), (c, &v)]),
            403,
            "{host}"
        );
    }
    assert_eq!(status("GET", "/console", None, &[(c, &v)]), 403, "no Host");
    let q = format!("token={TOKEN}");
    assert_eq!(
        status(
            "GET",
            "/console",
            Some(&q),
            &[("host", "evil.example:8080")]
        ),
        403
    );
}

#[test]
fn a_foreign_origin_is_403() {
    let (c, v) = cookie();
    for origin in [
        "http://evil.example",
        "null",
        "http://127.0.0.1:8081",
        "https://127.0.0.1:8080",
    ] {
        assert_eq!(
            status(
                "PATCH",
                "/vm",
                None,
                &[HOST_OK, (c, &v), ("origin", origin)]
            ),
            403,
            "{origin}"
        );
    }
}

#[test]
fn configuration_routes_are_not_served_on_tcp() {
    let (c, v) = cookie();
    for (method, path) in [
        ("PUT", "/boot-source"),
        ("PUT", "/machine-config"),
        ("PUT", "/drives/rootfs"),
        ("PUT", "/snapshot/create"),
        ("PUT", "/logger"),
        ("PUT", "/metrics"),
        ("PUT", "/actions"),
        ("GET", "/openapi.json"),
        ("GET", "/metrics"),
        ("DELETE", "/vm"),
        ("GET", "/nope"),
    ] {
        assert_eq!(
            status(method, path, None, &[HOST_OK, (c, &v)]),
            404,
            "{method} {path}"
        );
    }
}

#[test]
fn tokens_are_random_hex() {
    let a = random_token().unwrap();
    let b = random_token().unwrap();
    assert_eq!(a.len(), 32);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
}

#[test]
fn only_loopback_addresses_are_bound() {
    for addr in ["0.0.0.0:0", "192.0.2.1:0", "[::]:0"] {
        let addr: SocketAddr = addr.parse().unwrap();
        assert!(matches!(
            WebListener::bind(addr),
            Err(WebError::NotLoopback(_))
        ));
    }
    let l = WebListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    assert_ne!(l.local_addr().port(), 0);
    let url = l.url();
    assert!(
        url.starts_with(&format!("http://{}/console?token=", l.local_addr())),
        "{url}"
    );
}
