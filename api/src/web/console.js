// petrel's web console: the screen (polled from /display/screenshot), keyboard and pointer
// forwarded to the input devices (PUT /input/{id}), the serial log (GET/PUT /serial) and
// Pause/Resume (PATCH /vm). Vanilla JS, no external resources; same-origin requests only,
// authenticated by the HttpOnly cookie the server set.
"use strict";

(function () {
  const SCREEN_POLL_MS = 200;
  const NO_DISPLAY_POLL_MS = 2000;
  const SERIAL_POLL_MS = 300;
  const STATE_POLL_MS = 1000;
  const SERIAL_MAX_CHARS = 256 * 1024;
  const SERIAL_INPUT_MAX = 64;
  const AXIS_MAX = 32767;

  // What tests and people can look at: window.petrelConsole.
  const view = {
    state: "unknown",
    frames: 0,
    generation: null,
    display: false,
    keyboard: null,
    tablet: null,
    serialNext: 0,
    inputErrors: 0,
    lastError: "",
  };
  window.petrelConsole = view;

  const $ = (id) => document.getElementById(id);
  const canvas = $("screen");
  const ctx = canvas.getContext("2d");

  function report(message) {
    view.lastError = message;
    $("status").textContent = message;
  }

  async function api(method, path, body) {
    const init = { method, headers: {}, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (!r.ok) {
      let why = r.status + " " + r.statusText;
      try {
        why += ": " + (await r.json()).fault_message;
      } catch (_) {}
      throw new Error(method + " " + path + ": " + why);
    }
    return r;
  }

  // --- Lifecycle ---------------------------------------------------------------------
  async function refreshState() {
    try {
      const info = await (await api("GET", "/")).json();
      view.state = info.state;
      $("state").textContent = info.state;
      $("state").dataset.state = info.state;
      $("instance").textContent = info.id;
    } catch (e) {
      view.state = "unreachable";
      $("state").textContent = "unreachable";
      $("state").dataset.state = "Stopped";
    }
  }

  async function setState(state) {
    try {
      await api("PATCH", "/vm", { state });
      report("");
    } catch (e) {
      report(e.message);
    }
    await refreshState();
  }

  // --- Screen ------------------------------------------------------------------------
  function showDisplay(shown) {
    view.display = shown;
    canvas.classList.toggle("hidden", !shown);
    $("no-display").classList.toggle("shown", !shown);
  }

  // Skips unchanged frames twice over: If-None-Match with the last generation (a server
  // that supports it answers 304 without a body), and the x-petrel-generation header of a
  // full answer compared before decoding.
  async function pollScreen() {
    let delay = SCREEN_POLL_MS;
    try {
      const headers = {};
      if (view.generation !== null) headers["If-None-Match"] = '"' + view.generation + '"';
      const r = await fetch("/display/screenshot", {
        headers,
        credentials: "same-origin",
        cache: "no-store",
      });
      if (r.status === 304) {
        // Unchanged.
      } else if (r.status >= 400 && r.status < 500) {
        showDisplay(false);
        view.generation = null;
        delay = NO_DISPLAY_POLL_MS;
      } else if (!r.ok) {
        delay = NO_DISPLAY_POLL_MS;
      } else {
        const generation = r.headers.get("x-petrel-generation");
        if (generation === null || generation !== view.generation) {
          const bitmap = await createImageBitmap(await r.blob());
          if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
            canvas.width = bitmap.width;
            canvas.height = bitmap.height;
          }
          ctx.drawImage(bitmap, 0, 0);
          bitmap.close();
          view.generation = generation;
          view.frames += 1;
        }
        showDisplay(true);
      }
    } catch (e) {
      delay = NO_DISPLAY_POLL_MS;
    }
    setTimeout(pollScreen, delay);
  }

  // --- Input ---------------------------------------------------------------------------
  // KeyboardEvent.code -> Linux key name (KEY_ without the prefix, lowercased).
  const KEYS = {
    Escape: "esc", Minus: "minus", Equal: "equal", Backspace: "backspace", Tab: "tab",
    BracketLeft: "leftbrace", BracketRight: "rightbrace", Enter: "enter",
    ControlLeft: "leftctrl", ControlRight: "rightctrl", Semicolon: "semicolon",
    Quote: "apostrophe", Backquote: "grave", ShiftLeft: "leftshift", ShiftRight: "rightshift",
    Backslash: "backslash", Comma: "comma", Period: "dot", Slash: "slash",
    AltLeft: "leftalt", AltRight: "rightalt", MetaLeft: "leftmeta", MetaRight: "rightmeta",
    Space: "space", CapsLock: "capslock", NumLock: "numlock", ScrollLock: "scrolllock",
    PrintScreen: "sysrq", Pause: "pause", ContextMenu: "compose", IntlBackslash: "102nd",
    ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right",
    Insert: "insert", Delete: "delete", Home: "home", End: "end",
    PageUp: "pageup", PageDown: "pagedown",
    NumpadAdd: "kpplus", NumpadSubtract: "kpminus", NumpadMultiply: "kpasterisk",
    NumpadDivide: "kpslash", NumpadDecimal: "kpdot", NumpadEnter: "kpenter",
    NumpadEqual: "kpequal",
  };
  function linuxKey(code) {
    if (code in KEYS) return KEYS[code];
    let m = /^Key([A-Z])$/.exec(code);
    if (m) return m[1].toLowerCase();
    m = /^Digit([0-9])$/.exec(code);
    if (m) return m[1];
    m = /^F([1-9]|1[0-9]|2[0-4])$/.exec(code);
    if (m) return "f" + m[1];
    m = /^Numpad([0-9])$/.exec(code);
    if (m) return "kp" + m[1];
    return null;
  }
  window.petrelConsole.linuxKey = linuxKey;

  const BUTTONS = { 0: "left", 1: "middle", 2: "right" };

  // One queue per device; one request in flight per device, pointer moves coalesced.
  const queues = {};
  function enqueue(id, event) {
    if (!id) return;
    const q = (queues[id] = queues[id] || { events: [], busy: false });
    const last = q.events[q.events.length - 1];
    if (event.kind === "move" && last && last.kind === "move") {
      q.events[q.events.length - 1] = event;
    } else {
      q.events.push(event);
    }
    flush(id);
  }
  async function flush(id) {
    const q = queues[id];
    if (q.busy || q.events.length === 0) return;
    q.busy = true;
    const events = q.events.splice(0, q.events.length);
    try {
      await api("PUT", "/input/" + encodeURIComponent(id), { events });
    } catch (e) {
      view.inputErrors += 1;
      report(e.message);
    }
    q.busy = false;
    flush(id);
  }

  const pressed = new Set();
  canvas.addEventListener("keydown", (e) => {
    const key = linuxKey(e.code);
    if (key === null || !view.keyboard) return;
    e.preventDefault();
    if (e.repeat) return;
    pressed.add(key);
    enqueue(view.keyboard, { kind: "key", key, action: "press" });
  });
  canvas.addEventListener("keyup", (e) => {
    const key = linuxKey(e.code);
    if (key === null || !view.keyboard) return;
    e.preventDefault();
    pressed.delete(key);
    enqueue(view.keyboard, { kind: "key", key, action: "release" });
  });
  // Nothing stays held down when the canvas loses the focus.
  canvas.addEventListener("blur", () => {
    for (const key of pressed) enqueue(view.keyboard, { kind: "key", key, action: "release" });
    pressed.clear();
  });

  function position(e) {
    const r = canvas.getBoundingClientRect();
    const scale = (v, len) =>
      Math.max(0, Math.min(AXIS_MAX, Math.round((v / Math.max(len, 1)) * AXIS_MAX)));
    return { x: scale(e.clientX - r.left, r.width), y: scale(e.clientY - r.top, r.height) };
  }
  canvas.addEventListener("mousemove", (e) => {
    const p = position(e);
    enqueue(view.tablet, { kind: "move", x: p.x, y: p.y });
  });
  canvas.addEventListener("mousedown", (e) => {
    canvas.focus();
    const button = BUTTONS[e.button];
    if (!button) return;
    e.preventDefault();
    const p = position(e);
    enqueue(view.tablet, { kind: "move", x: p.x, y: p.y });
    enqueue(view.tablet, { kind: "button", button, action: "press" });
  });
  canvas.addEventListener("mouseup", (e) => {
    const button = BUTTONS[e.button];
    if (!button) return;
    e.preventDefault();
    enqueue(view.tablet, { kind: "button", button, action: "release" });
  });
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener(
    "wheel",
    (e) => {
      if (!view.tablet || e.deltaY === 0) return;
      e.preventDefault();
      // Linux's REL_WHEEL: positive scrolls up, the browser's deltaY is positive down.
      enqueue(view.tablet, { kind: "wheel", delta: e.deltaY < 0 ? 1 : -1 });
    },
    { passive: false }
  );

  async function findInputs() {
    try {
      const config = await (await api("GET", "/vm/config")).json();
      const inputs = Array.isArray(config.inputs) ? config.inputs : [];
      const first = (kind) => (inputs.find((i) => i.kind === kind) || {}).id || null;
      view.keyboard = first("keyboard");
      view.tablet = first("tablet");
    } catch (e) {
      report(e.message);
    }
    $("devices").textContent =
      "keyboard: " + (view.keyboard || "none") + ", tablet: " + (view.tablet || "none");
  }

  // --- Serial --------------------------------------------------------------------------
  const serial = $("serial");
  function appendSerial(text) {
    const atBottom = serial.scrollTop + serial.clientHeight >= serial.scrollHeight - 4;
    serial.textContent += text;
    if (serial.textContent.length > SERIAL_MAX_CHARS) {
      serial.textContent = serial.textContent.slice(-SERIAL_MAX_CHARS);
    }
    if (atBottom) serial.scrollTop = serial.scrollHeight;
  }

  async function pollSerial() {
    try {
      const log = await (await api("GET", "/serial?from=" + view.serialNext)).json();
      if (log.from > view.serialNext) {
        appendSerial("\n[" + (log.from - view.serialNext) + " bytes dropped]\n");
      }
      if (log.data) appendSerial(log.data);
      view.serialNext = log.next;
    } catch (e) {
      // The VM may be gone; keep trying quietly.
    }
    setTimeout(pollSerial, SERIAL_POLL_MS);
  }

  // Splits text into pieces of at most SERIAL_INPUT_MAX UTF-8 bytes, never inside a
  // character.
  function serialChunks(text) {
    const enc = new TextEncoder();
    const chunks = [];
    let chunk = "";
    for (const ch of text) {
      if (enc.encode(chunk + ch).length > SERIAL_INPUT_MAX) {
        chunks.push(chunk);
        chunk = "";
      }
      chunk += ch;
    }
    if (chunk) chunks.push(chunk);
    return chunks;
  }

  $("serial-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("serial-input");
    const text = input.value + "\n";
    try {
      for (const data of serialChunks(text)) await api("PUT", "/serial", { data });
      input.value = "";
      report("");
    } catch (err) {
      report(err.message);
    }
  });

  $("pause").addEventListener("click", () => setState("Paused"));
  $("resume").addEventListener("click", () => setState("Resumed"));

  showDisplay(false);
  findInputs();
  refreshState();
  setInterval(refreshState, STATE_POLL_MS);
  pollSerial();
  pollScreen();
})();
