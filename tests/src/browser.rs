//! A real browser for end-to-end tests: Debian's headless Chromium driven by chromedriver
//! over W3C WebDriver (JSON over HTTP, spoken with [`crate::http`]).
//!
//! ```no_run
//! # use std::time::Duration;
//! let Some(browser) = tests::browser::Browser::launch() else { return };
//! browser.goto("http://127.0.0.1:8080/console?token=...");
//! let serial = browser.wait_for(Duration::from_secs(30), "serial output", |b| {
//!     let text = b.text(&b.find("#serial"));
//!     text.contains("COUNT 3").then_some(text)
//! });
//! // Pixels of the page's canvas, or any other page state, through a script:
//! let pixel = browser.execute(
//!     "const c = document.getElementById('screen');
//!      return Array.from(c.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data);",
//!     serde_json::json!([10, 20]),
//! );
//! // A click at canvas coordinates, through real pointer events:
//! browser.click_at(&browser.find("#screen"), 10, 20);
//! ```
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver`, [`Browser::launch`] prints why
//! and returns `None` (a test then skips), except in CI (`CI` set), where it fails: CI
//! installs them.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http;

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The W3C name of a found element's id in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long chromedriver may take to listen.
const DRIVER_START: Duration = Duration::from_secs(30);

/// Flags for a headless Chromium that stays off the network (ENVIRONMENT.md).
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

/// A found element.
#[derive(Debug, Clone)]
pub struct Element(String);

/// A Chromium session; closing it (on drop) ends the browser and chromedriver.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

/// Whether Chromium and chromedriver are installed. Outside CI a missing one prints a skip
/// reason; in CI it fails the test.
pub fn available() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} missing and CI is set: install Debian's chromium and chromium-driver",
        missing.join(" and ")
    );
    eprintln!(
        "skipped: {} not installed (apt-get install chromium chromium-driver)",
        missing.join(" and ")
    );
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; `None` (after saying why) when
    /// they are not installed.
    pub fn launch() -> Option<Browser> {
        if !available() {
            return None;
        }
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("a Chromium profile directory");
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + DRIVER_START;
        while http::request(addr, "GET", "/status", &[], None)
            .map(|r| r.json()["value"]["ready"] != json!(true))
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!(
            "--user-data-dir={}",
            browser._profile.path().display()
        ));
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let value = browser.call("POST", "/session", Some(caps));
        browser.session = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {value}"))
            .to_string();
        Some(browser)
    }

    /// One WebDriver command; returns its `value`, panicking with the driver's error.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let headers = [("Content-Type", "application/json; charset=utf-8")];
        let reply = http::request(
            self.addr,
            method,
            path,
            &headers,
            body.as_deref().map(str::as_bytes),
        )
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let json = reply.json();
        assert!(
            reply.status == 200,
            "WebDriver {method} {path}: HTTP {}: {json}",
            reply.status
        );
        json["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The page's URL now.
    pub fn url(&self) -> String {
        self.session_call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching the CSS `selector`; fails the test if there is none.
    pub fn find(&self, selector: &str) -> Element {
        let v = self.session_call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": selector })),
        );
        Element(
            v[ELEMENT_KEY]
                .as_str()
                .unwrap_or_else(|| panic!("no element id for {selector}: {v}"))
                .to_string(),
        )
    }

    /// The element's rendered text.
    pub fn text(&self, el: &Element) -> String {
        self.session_call("GET", &format!("/element/{}/text", el.0), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Clicks the element (its centre), as a user would.
    pub fn click(&self, el: &Element) {
        self.session_call("POST", &format!("/element/{}/click", el.0), Some(json!({})));
    }

    /// Types `text` into the element (`\u{e006}` is the Return key, code `Enter`;
    /// `\u{e007}` is the keypad's Enter).
    pub fn type_text(&self, el: &Element, text: &str) {
        self.session_call(
            "POST",
            &format!("/element/{}/value", el.0),
            Some(json!({ "text": text })),
        );
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page, returns its
    /// result.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// W3C actions (`{"actions": [...]}`), then releases everything still pressed.
    pub fn perform(&self, actions: Value) {
        self.session_call("POST", "/actions", Some(actions));
        self.session_call("DELETE", "/actions", None);
    }

    /// Moves the mouse to `(x, y)` relative to the element's top-left corner and clicks.
    pub fn click_at(&self, el: &Element, x: i64, y: i64) {
        // WebDriver offsets are from the element's centre.
        let rect = self.session_call("GET", &format!("/element/{}/rect", el.0), None);
        let half = |k: &str| (rect[k].as_f64().unwrap_or(0.0) / 2.0).floor() as i64;
        let origin = json!({ ELEMENT_KEY: el.0 });
        self.perform(json!({ "actions": [{
            "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" },
            "actions": [
                { "type": "pointerMove", "origin": origin, "x": x - half("width"), "y": y - half("height") },
                { "type": "pointerDown", "button": 0 },
                { "type": "pointerUp", "button": 0 },
            ],
        }]}));
    }

    /// Presses and releases keys (W3C key values, e.g. `"a"`, `"\u{e006}"` for Return, code
    /// `Enter`) in the focused element.
    pub fn press_keys(&self, keys: &[&str]) {
        let mut actions = Vec::new();
        for k in keys {
            actions.push(json!({ "type": "keyDown", "value": k }));
            actions.push(json!({ "type": "keyUp", "value": k }));
        }
        self.perform(
            json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] }),
        );
    }

    /// Calls `f` every 100 ms until it returns `Some`, or fails the test after `timeout`
    /// naming `what`.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the web console's canvas (`#screen`, shown) holds exactly `rgba` (RGBA8
    /// values, row by row), naming `what` on timeout; returns the canvas's (width, height).
    pub fn wait_for_canvas(&self, timeout: Duration, what: &str, rgba: &Value) -> (Value, Value) {
        let shown = self.wait_for(timeout, what, |b| {
            let pixels = b.execute(
                "const c = document.getElementById('screen');
                 if (c.classList.contains('hidden')) return null;
                 const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
                 return [c.width, c.height, Array.from(d.data)];",
                json!([]),
            );
            (&pixels[2] == rgba).then_some(pixels)
        });
        (shown[0].clone(), shown[1].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = http::request(self.addr, "DELETE", &path, &[], None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
