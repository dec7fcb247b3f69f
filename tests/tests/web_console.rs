//! The web console in a real browser (headless Chromium through chromedriver) against the
//! real binary: the tokenized URL logs in and leaves the token out of the address bar, the
//! page shows the guest's serial output, sends serial input, and its Pause/Resume buttons
//! pause and resume the VM; with a GPU and input devices it shows the guest's drawing pixel
//! for pixel, and a key typed and a click made in it reach the guest. Without a token, with a
//! wrong one or with a foreign Host the TCP port refuses, and it serves no configuration
//! route.
//!
//! Run under the KVM lock: `flock /tmp/kvm.lock cargo test -p tests --test web_console --
//! --test-threads=1`.

use std::time::Duration;

use serde_json::json;
use tests::browser::Browser;
use tests::kvm_available;
use tests::web_vm::WebVm;

const WAIT: Duration = Duration::from_secs(60);

/// GET / over the API socket: the VM's state.
fn state(vm: &WebVm) -> String {
    let (status, body) = vm.api.request("GET", "/", None).expect("GET /");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Ends the count scenario cleanly: Ctrl+Alt+Del makes it print PASS and power off.
fn finish(vm: WebVm) {
    let (status, body) = vm
        .api
        .request(
            "PUT",
            "/actions",
            Some(json!({ "action_type": "SendCtrlAltDel" })),
        )
        .expect("PUT /actions");
    assert_eq!(status, 204, "{body}");
    vm.finish(WAIT).assert_pass("count");
}

#[test]
fn the_tcp_port_wants_the_token_and_the_loopback_host_and_serves_only_the_page_routes() {
    if !kvm_available() {
        return;
    }
    let vm = WebVm::spawn("count", &[]);
    let bearer = format!("Bearer {}", vm.token);
    let wrong = format!("Bearer {}", "0".repeat(32));

    // No token, a wrong one, the right one in the wrong place: 401.
    assert_eq!(vm.raw("GET", "/console", &[], None).status, 401);
    assert_eq!(
        vm.raw("GET", "/serial", &[("Authorization", &wrong)], None)
            .status,
        401
    );
    assert_eq!(vm.raw("GET", "/console?token=00", &[], None).status, 401);
    let q = format!("/serial?token={}", vm.token);
    assert_eq!(vm.raw("GET", &q, &[], None).status, 401);
    // The right token for another host name (DNS rebinding) or from another origin: 403.
    for host in ["evil.example", "evil.example:80", "127.0.0.1"] {
        let r = vm.raw(
            "GET",
            "/console",
            &[("Host", host), ("Authorization", &bearer)],
            None,
        );
        assert_eq!(r.status, 403, "{host}: {}", r.text());
    }
    let r = vm.raw(
        "PATCH",
        "/vm",
        &[
            ("Authorization", &bearer),
            ("Origin", "http://evil.example"),
        ],
        Some(r#"{"state":"Paused"}"#),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(state(&vm), "Running", "a refused request changed nothing");

    // The tokenized URL sets an HttpOnly, SameSite=Strict cookie and redirects.
    let login = format!("/console?token={}", vm.token);
    let r = vm.raw("GET", &login, &[], None);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/console"));
    let cookie = r.header("set-cookie").expect("a cookie").to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let page = vm.raw("GET", "/console", &[("Cookie", &pair)], None);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));

    // Configuration, snapshot and host-file routes are not on the TCP port at all.
    for (method, path, body) in [
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path":"/etc/passwd"}"#,
        ),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m"}"#,
        ),
        ("PUT", "/metrics", r#"{"metrics_path":"/tmp/m"}"#),
        ("PUT", "/actions", r#"{"action_type":"Kill"}"#),
        ("GET", "/openapi.json", ""),
    ] {
        let r = vm.authed(method, path, Some(body));
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
    }
    assert_eq!(state(&vm), "Running");

    // The page's own routes work with the bearer token, and the serial log is what the
    // guest printed on COM1 (petrel's stdout), byte for byte.
    let deadline = std::time::Instant::now() + WAIT;
    let log = loop {
        let log = vm.authed("GET", "/serial?from=0", None);
        assert_eq!(log.status, 200);
        let log = log.json();
        if log["data"].as_str().unwrap().contains("COUNT 3\n") {
            break log;
        }
        assert!(std::time::Instant::now() < deadline, "no COUNT 3 in {log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let data = log["data"].as_str().unwrap();
    assert_eq!(log["from"], 0);
    assert_eq!(log["next"].as_u64(), Some(data.len() as u64));
    assert!(data.starts_with("COUNT 0\nCOUNT 1\n"), "{data}");
    let logged: Vec<&str> = data
        .lines()
        .filter(|l| data.contains(&format!("{l}\n")))
        .collect();
    let printed = vm.stdout_lines();
    let n = logged.len().min(printed.len());
    assert!(n > 2, "{logged:?} {printed:?}");
    assert_eq!(logged[..n], printed[..n]);
    // Asking from `next` returns only what is new.
    let next = log["next"].as_u64().unwrap();
    let more = vm
        .authed("GET", &format!("/serial?from={next}"), None)
        .json();
    assert_eq!(more["from"].as_u64(), Some(next));
    let joined = format!("{data}{}", more["data"].as_str().unwrap());
    let again = vm.authed("GET", "/serial", None).json();
    assert!(
        again["data"].as_str().unwrap().starts_with(&joined),
        "{joined:?} then {again}"
    );
    let bad = vm.authed("GET", "/serial?from=-1", None);
    assert_eq!(bad.status, 400, "{}", bad.text());
    finish(vm);
}

#[test]
fn the_page_shows_the_serial_console_sends_input_and_pauses_the_vm() {
    if !kvm_available() {
        return;
    }
    let Some(browser) = Browser::launch() else {
        return;
    };
    let vm = WebVm::spawn("count", &[]);
    browser.goto(&vm.url);
    // The token went into a cookie the page's scripts cannot read, and out of the URL.
    assert_eq!(browser.url(), format!("{}/console", vm.base()));
    assert_eq!(
        browser.execute("return document.cookie;", json!([])),
        json!("")
    );

    // The serial log in the page is what the guest printed on COM1 (petrel's stdout too).
    let shown = browser.wait_for(WAIT, "COUNT 5 in the page", |b| {
        let text = b.text(&b.find("#serial"));
        text.contains("COUNT 5").then_some(text)
    });
    assert!(shown.starts_with("COUNT 0\nCOUNT 1\n"), "{shown}");
    let stdout = vm.stdout_lines();
    assert!(stdout.iter().any(|l| l == "COUNT 5"), "{stdout:?}");

    // No display device: the page says so.
    browser.wait_for(WAIT, "'no display'", |b| {
        (b.text(&b.find("#no-display")) == "no display").then_some(())
    });

    // Serial input typed in the page reaches COM1's receive FIFO (the count guest does not
    // read it, so the bytes stay there: a 64-byte write no longer fits).
    let input = browser.find("#serial-input");
    browser.type_text(&input, "hi");
    browser.click(&browser.find("#serial-send"));
    browser.wait_for(WAIT, "the input box to clear", |b| {
        let v = b.execute(
            "return document.getElementById('serial-input').value;",
            json!([]),
        );
        (v == json!("")).then_some(())
    });
    let full = vm.authed(
        "PUT",
        "/serial",
        Some(&json!({ "data": "x".repeat(64) }).to_string()),
    );
    assert_eq!(full.status, 400, "{}", full.text());
    assert!(
        full.text().contains("room for 61 of the 64 bytes"),
        "{}",
        full.text()
    );

    // Pause in the page pauses the VM: the state says so and the output stops growing.
    browser.click(&browser.find("#pause"));
    browser.wait_for(WAIT, "the VM to pause", |_| {
        (state(&vm) == "Paused").then_some(())
    });
    browser.wait_for(WAIT, "the page to show Paused", |b| {
        (b.text(&b.find("#state")) == "Paused").then_some(())
    });
    let next = |vm: &WebVm| vm.authed("GET", "/serial?from=0", None).json()["next"].as_u64();
    let frozen = next(&vm);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(next(&vm), frozen, "the guest printed while paused");

    browser.click(&browser.find("#resume"));
    browser.wait_for(WAIT, "the VM to resume", |_| {
        (state(&vm) == "Running").then_some(())
    });
    browser.wait_for(WAIT, "output after resuming", |_| {
        (next(&vm) > frozen).then_some(())
    });
    // Key codes map to Linux key names as the input device expects them.
    let mapped = browser.execute(
        "return arguments[0].map((c) => window.petrelConsole.linuxKey(c));",
        json!([[
            "KeyA",
            "Digit7",
            "Enter",
            "ShiftLeft",
            "F12",
            "ArrowUp",
            "Numpad5",
            "Quote",
            "Fn"
        ]]),
    );
    assert_eq!(
        mapped,
        json!([
            "a",
            "7",
            "enter",
            "leftshift",
            "f12",
            "up",
            "kp5",
            "apostrophe",
            null
        ])
    );
    // The harness's real pointer and key events land where they are aimed (what the
    // input tests build on): a click 10,20 px into an element, keys in the focused one. (A
    // probe element of our own: the canvas is hidden while there is no display.)
    browser.execute(
        "window.seen = [];
         const p = document.createElement('div');
         p.id = 'probe';
         p.tabIndex = 0;
         p.style.cssText = 'position:fixed;left:5px;top:5px;width:200px;height:100px;';
         p.addEventListener('mousedown', (e) => window.seen.push(['down', e.offsetX, e.offsetY]));
         p.addEventListener('keydown', (e) => window.seen.push(['key', e.code]));
         document.body.appendChild(p);",
        json!([]),
    );
    browser.click_at(&browser.find("#probe"), 10, 20);
    browser.press_keys(&["a", "\u{e006}"]);
    let seen = browser.execute("return window.seen;", json!([]));
    assert_eq!(
        seen,
        json!([["down", 10, 20], ["key", "KeyA"], ["key", "Enter"]])
    );
    let errors = browser.execute("return window.petrelConsole.lastError;", json!([]));
    assert_eq!(errors, json!(""), "the page reported an error");
    finish(vm);
}

/// Frame 1 of the guest's `gpu` pattern as RGBA: pixel (x, y) is `[3x, 5y, x + y, 255]`
/// (bytes, wrapping).
fn gpu_pattern(width: u32, height: u32) -> Vec<u64> {
    let mut rgba = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let px = [x.wrapping_mul(3), y.wrapping_mul(5), x.wrapping_add(y), 255];
            rgba.extend(px.iter().map(|v| u64::from(*v as u8)));
        }
    }
    rgba
}

/// The tablet's `(type, code, value)` events the guest printed (dev=1: the second input).
fn tablet_events(stdout: &str) -> Vec<(u16, u16, i64)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("INPUT dev=1 type="))
        .filter_map(|rest| {
            let mut fields = rest.split(' ');
            let kind = fields.next()?.parse().ok()?;
            let code = fields.next()?.strip_prefix("code=")?.parse().ok()?;
            let value = fields.next()?.strip_prefix("value=")?.parse().ok()?;
            Some((kind, code, value))
        })
        .collect()
}

#[test]
fn the_page_shows_the_guests_drawing_and_its_clicks_and_keys_reach_the_guest() {
    if !kvm_available() {
        return;
    }
    let Some(browser) = Browser::launch() else {
        return;
    };
    let (width, height) = (64, 48);
    let gpu = format!("width={width},height={height}");
    let vm = WebVm::spawn(
        "screen",
        &[
            "--gpu",
            &gpu,
            "--input",
            "kind=keyboard,id=kbd",
            "--input",
            "kind=tablet,id=tab",
        ],
    );
    browser.goto(&vm.url);

    // The canvas shows exactly the pixels the guest drew (frame 1 of the gpu pattern).
    let expected = serde_json::to_value(gpu_pattern(width, height)).unwrap();
    let shown = browser.wait_for_canvas(WAIT, "the guest's picture in the canvas", &expected);
    assert_eq!(shown, (json!(width), json!(height)));
    // The page asks for the frame it has with If-None-Match: 304, no body, no PNG encoded.
    let full = vm.authed("GET", "/display/screenshot", None);
    assert_eq!(full.status, 200, "{}", full.text());
    let etag = full.header("etag").expect("an ETag").to_string();
    assert_eq!(
        etag,
        format!("\"{}\"", full.header("x-petrel-generation").unwrap())
    );
    let bearer = format!("Bearer {}", vm.token);
    let same = vm.raw(
        "GET",
        "/display/screenshot",
        &[("Authorization", &bearer), ("If-None-Match", &etag)],
        None,
    );
    assert_eq!(same.status, 304);
    assert!(same.body.is_empty());
    let other = vm.raw(
        "GET",
        "/display/screenshot",
        &[("Authorization", &bearer), ("If-None-Match", "\"0\"")],
        None,
    );
    assert_eq!(other.status, 200);
    browser.wait_for(WAIT, "the guest's input devices", |_| {
        vm.stdout_lines()
            .iter()
            .any(|l| l == "INPUT ready")
            .then_some(())
    });

    // A key typed on the focused canvas reaches the keyboard (dev=0) as KEY_A (30).
    browser.execute("document.getElementById('screen').focus();", json!([]));
    browser.press_keys(&["a"]);
    browser.wait_for(WAIT, "KEY_A's release in the guest", |_| {
        vm.stdout_lines()
            .iter()
            .any(|l| l == "INPUT dev=0 type=1 code=30 value=0")
            .then_some(())
    });

    // A click a quarter across and half down the canvas reaches the tablet as a move there
    // and BTN_LEFT (272) pressed and released; the guest passes on the release.
    let rect = browser.execute(
        "const r = document.getElementById('screen').getBoundingClientRect();
         return [r.width, r.height];",
        json!([]),
    );
    let (rw, rh) = (rect[0].as_f64().unwrap(), rect[1].as_f64().unwrap());
    let (dx, dy) = ((rw / 4.0).floor(), (rh / 2.0).floor());
    browser.click_at(&browser.find("#screen"), dx as i64, dy as i64);
    let out = vm.finish(WAIT);
    out.assert_pass("screen");
    let keys = out.lines_with("INPUT dev=0 type=1 ");
    assert_eq!(
        keys,
        vec![
            "INPUT dev=0 type=1 code=30 value=1",
            "INPUT dev=0 type=1 code=30 value=0"
        ]
    );
    let events = tablet_events(&out.stdout);
    let press = events
        .iter()
        .position(|e| *e == (1, 272, 1))
        .unwrap_or_else(|| panic!("no BTN_LEFT press in {events:?}"));
    assert_eq!(events.last(), Some(&(1, 272, 0)), "{events:?}");
    // Where the pointer was at the press: the last ABS_X (0) and ABS_Y (1) before it, within
    // a CSS pixel of the click (WebDriver rounds the element's centre).
    let axis = |code: u16| {
        events[..press]
            .iter()
            .rev()
            .find(|e| e.0 == 3 && e.1 == code)
            .map(|e| e.2 as f64)
            .unwrap_or_else(|| panic!("no ABS {code} before the press in {events:?}"))
    };
    let near = |got: f64, offset: f64, len: f64| {
        let per_px = 32767.0 / len;
        (got - offset * per_px).abs() <= per_px + 1.0
    };
    assert!(near(axis(0), dx, rw), "x {} for {dx} of {rw}", axis(0));
    assert!(near(axis(1), dy, rh), "y {} for {dy} of {rh}", axis(1));
}
