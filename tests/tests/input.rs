//! virtio-input end to end: a keyboard and a tablet, events injected through the API
//! (`PUT /input/{id}`), read by the test guest with `virtio-drivers`' `VirtIOInput`.

use std::time::Duration;

use serde_json::{json, Value};
use tests::api_vm::ApiVm;
use tests::{device_metrics, kvm_available, run, test_guest, Output};

const READY: Duration = Duration::from_secs(60);
const FINISH: Duration = Duration::from_secs(120);

/// Boots the `input` scenario with a keyboard `kbd` and a tablet `tab`, waiting for `count`
/// events, and waits until the guest is ready for them.
fn boot(count: usize) -> ApiVm {
    let vm = ApiVm::spawn(&[
        "--kernel",
        test_guest().to_str().unwrap(),
        "--cmdline",
        &format!("petrel.test=input input.count={count}"),
        "--input",
        "kind=keyboard,id=kbd",
        "--input",
        "kind=tablet,id=tab",
    ]);
    vm.wait_serial(READY, |l| (l == "INPUT ready").then_some(()));
    vm
}

fn put(vm: &ApiVm, id: &str, events: Value) {
    vm.ok("PUT", &format!("/input/{id}"), json!({ "events": events }));
}

/// The guest's `INPUT dev=<dev> type=.. code=.. value=..` lines for device `dev`, as
/// `(type, code, value)`.
fn events(serial: &str, dev: usize) -> Vec<(u16, u16, u32)> {
    let prefix = format!("INPUT dev={dev} type=");
    serial
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let fields: Vec<&str> = rest.split(' ').collect();
            let num = |i: usize, key: &str| {
                let f = fields[i];
                let v = if i == 0 {
                    f
                } else {
                    f.strip_prefix(key).unwrap()
                };
                v.parse::<u64>().unwrap_or_else(|_| panic!("{rest}"))
            };
            (
                num(0, "") as u16,
                num(1, "code=") as u16,
                num(2, "value=") as u32,
            )
        })
        .collect()
}

const SYN: (u16, u16, u32) = (0, 0, 0);

fn finish_pass(mut vm: ApiVm) -> (String, Output) {
    let out = vm.finish(FINISH);
    let serial = vm.serial();
    assert!(
        serial.lines().any(|l| l == "PASS input"),
        "no PASS input\n{serial}\n{out}"
    );
    assert_eq!(out.status.code(), Some(0), "{out}");
    (serial, out)
}

#[test]
fn guest_reads_config_and_injected_key_and_pointer_events() {
    if !kvm_available() {
        return;
    }
    // Keyboard: 6 groups of 2; tablet: move (3), click (2 groups of 2), wheel (2), press (2).
    let vm = boot(12 + 11);
    let serial = vm.serial();
    let config: Vec<&str> = serial
        .lines()
        .filter(|l| l.starts_with("INPUT dev=") && !l.contains(" type="))
        .collect();
    assert_eq!(
        config,
        [
            "INPUT dev=0 name=petrel virtio keyboard serial=kbd ids=6:0627:0001:1 props=0",
            "INPUT dev=0 ev=1 size=32 codes=248 first=1 last=248",
            "INPUT dev=0 ev=17 size=1 codes=3 first=0 last=2",
            "INPUT dev=0 ev=20 size=1 codes=0 first=- last=-",
            "INPUT dev=1 name=petrel virtio tablet serial=tab ids=6:0627:0003:1 props=0",
            "INPUT dev=1 ev=1 size=35 codes=3 first=272 last=274",
            "INPUT dev=1 ev=2 size=2 codes=1 first=8 last=8",
            "INPUT dev=1 ev=3 size=1 codes=2 first=0 last=1",
            "INPUT dev=1 abs=0 min=0 max=32767 fuzz=0 flat=0 res=0",
            "INPUT dev=1 abs=1 min=0 max=32767 fuzz=0 flat=0 res=0",
        ],
        "{serial}"
    );

    // The device counters are logged at exit, at info level.
    vm.ok("PUT", "/logger", json!({"level": "Info"}));
    // Shift+A, then Enter by code.
    put(
        &vm,
        "kbd",
        json!([
            {"kind": "key", "key": "leftshift", "action": "press"},
            {"kind": "key", "key": "a", "action": "tap"},
            {"kind": "key", "key": "leftshift", "action": "release"},
            {"kind": "key", "code": 28, "action": "tap"},
        ]),
    );
    put(
        &vm,
        "tab",
        json!([
            {"kind": "move", "x": 16384, "y": 32767},
            {"kind": "button", "button": "left", "action": "click"},
        ]),
    );
    put(
        &vm,
        "tab",
        json!([
            {"kind": "wheel", "delta": -1},
            {"kind": "button", "button": "right", "action": "press"},
        ]),
    );
    let (serial, out) = finish_pass(vm);
    for (id, n) in [("kbd", 12), ("tab", 11)] {
        let m = device_metrics(&out, id);
        assert_eq!(m["events_queued"], n, "{id}: {m}");
        assert_eq!(m["events_delivered"], n, "{id}: {m}");
        assert_eq!(m["dropped_events"], 0, "{id}: {m}");
        assert_eq!(m["malformed"], 0, "{id}: {m}");
    }
    assert_eq!(
        events(&serial, 0),
        [
            (1, 42, 1),
            SYN,
            (1, 30, 1),
            SYN,
            (1, 30, 0),
            SYN,
            (1, 42, 0),
            SYN,
            (1, 28, 1),
            SYN,
            (1, 28, 0),
            SYN,
        ],
        "{serial}"
    );
    assert_eq!(
        events(&serial, 1),
        [
            (3, 0, 16384),
            (3, 1, 32767),
            SYN,
            (1, 272, 1),
            SYN,
            (1, 272, 0),
            SYN,
            (2, 8, u32::MAX),
            SYN,
            (1, 273, 1),
            SYN,
        ],
        "{serial}"
    );
}

#[test]
fn bad_input_requests_get_400_and_send_nothing() {
    if !kvm_available() {
        return;
    }
    // Before start: no device to send to yet.
    let waiting = ApiVm::spawn(&[]);
    let msg = waiting.fails(
        "PUT",
        "/input/kbd",
        Some(json!({"events": [{"kind": "wheel", "delta": 1}]})),
        400,
    );
    assert!(msg.contains("while the VM is Not started"), "{msg}");
    drop(waiting);

    let vm = boot(2);
    let key = |k: &str| json!({"kind": "key", "key": k, "action": "press"});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "kbd",
            json!({"events": [{"kind": "move", "x": 1, "y": 1}]}),
            "a move event is for a tablet; this device is a keyboard",
        ),
        (
            "tab",
            json!({"events": [key("a")]}),
            "a key event is for a keyboard; this device is a tablet",
        ),
        (
            "mouse",
            json!({"events": [key("a")]}),
            "no input device with id \"mouse\"",
        ),
        (
            "kbd",
            json!({"events": [key("a"), key("nosuchkey")]}),
            "events[1]`: unknown key name \"nosuchkey\"",
        ),
        (
            "kbd",
            json!({"events": [key("A")]}),
            "unknown key name \"A\"",
        ),
        (
            "kbd",
            json!({"events": [{"kind": "key", "code": 249, "action": "tap"}]}),
            "code 249 is outside 1..=248",
        ),
        (
            "tab",
            json!({"events": [{"kind": "move", "x": 32768, "y": 0}]}),
            "x=32768 is outside 0..=32767",
        ),
        ("tab", json!({"events": []}), "the list is empty"),
        (
            "tab",
            json!({"events": vec![json!({"kind": "wheel", "delta": 1}); 1025]}),
            "more than 1024",
        ),
        (
            "tab",
            json!({"events": [{"kind": "wheel"}]}),
            "missing field `delta`",
        ),
        (
            "tab",
            json!({"events": [{"kind": "pinch"}]}),
            "unknown variant `pinch`",
        ),
        // serde would read an event from the array form `[kind, fields...]`: refused.
        (
            "tab",
            json!({"events": [["wheel", 1]]}),
            "field `events[0]`: invalid type: array",
        ),
        (
            "tab",
            json!([{"kind": "wheel", "delta": 1}]),
            "invalid request body",
        ),
    ];
    for (id, body, want) in cases {
        let msg = vm.fails("PUT", &format!("/input/{id}"), Some(body.clone()), 400);
        assert!(msg.contains(want), "{id} {body}: {msg}");
    }
    let (status, _) = vm.request_bytes("PUT", "/input/kbd", b"{\"events\": [");
    assert_eq!(status, 400);
    // Accepted while paused; delivered once the guest runs again.
    vm.set_state("Paused");
    put(&vm, "kbd", json!([key("esc")]));
    vm.set_state("Resumed");
    let (serial, _) = finish_pass(vm);
    // Only the one good press arrived: every refused request sent nothing.
    assert_eq!(events(&serial, 0), [(1, 1, 1), SYN], "{serial}");
    assert_eq!(events(&serial, 1), [], "{serial}");
}

/// Bad `--input` flags: one line on stderr naming the problem, exit status 2, before KVM.
#[test]
fn bad_input_flags_are_refused() {
    for (args, needle) in [
        (
            &["--input", "kind=mouse"][..],
            "invalid input kind \"mouse\": expected keyboard or tablet",
        ),
        (&["--input", "id=k"], "kind= is required"),
        (
            &["--input", "kind=keyboard,repeat=on"],
            "unknown option repeat",
        ),
        (&["--input", "kind=keyboard,id=a b"], "invalid id"),
        (
            &[
                "--input",
                "kind=keyboard,id=k",
                "--input",
                "kind=tablet,id=k",
            ],
            "device id \"k\" is used twice",
        ),
        (
            &[
                "--console",
                "id=k,output=none",
                "--input",
                "kind=tablet,id=k",
            ],
            "device id \"k\" is used twice",
        ),
    ] {
        let out = run(args, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{out}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}\n{out}");
        assert!(lines[0].contains(needle), "{args:?}: {}", lines[0]);
    }
}
