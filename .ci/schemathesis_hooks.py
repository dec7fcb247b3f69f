"""Schemathesis hooks for .ci/schemathesis.sh: keep random requests from ending the VM under
test or touching files outside the run's own directory. Everything else stays random.

- `PUT /actions` never sends `Kill`, `Shutdown`, `SendCtrlAltDel` or `PowerButton` (they end
  the VM, or ask a guest that may to end it; the Rust end-to-end tests cover them): any string
  or key with such a name, in any body, becomes `FlushMetrics`.
- Every string that petrel could use as a host path (log and metrics files, drive images,
  kernel and initrd, sockets, snapshot files, console `file:`/`socket:` outputs) is moved into
  `$PETREL_FUZZ_DIR`, keeping its text (less `/`) as the file name, so odd names (NUL, very
  long, non-ASCII) still reach petrel. An empty string stays empty. The CI runs as root:
  random strings must never name files elsewhere.
- Every migration `url` (`PUT /migration/send`, `PUT /migration/receive`, or a `url` field in
  any other body) becomes `unix:` and a socket path in `$PETREL_FUZZ_DIR`, keeping the text
  as the file name: a random URL must never connect to or listen on a TCP port or a socket
  elsewhere. Each run has its own directory, so a `send` never finds a petrel `receive`ing.
- Arrays get the same treatment for every string they hold, since serde also reads a struct
  from an array of its fields in order.

Two layers do this: a `before_call` hook rewrites each case before it is sent (so reports show
what was really sent), and a wrapper around the HTTP adapter rewrites the serialized body of
every request, whatever phase or check produced it, as the last line of defence.
"""

import json
import os
import urllib.parse

import requests.adapters
import schemathesis

FUZZ_DIR = os.environ["PETREL_FUZZ_DIR"]
if not os.path.isabs(FUZZ_DIR) or not os.path.isdir(FUZZ_DIR):
    raise RuntimeError(f"PETREL_FUZZ_DIR must be an existing absolute directory: {FUZZ_DIR!r}")
PREFIX = os.path.join(FUZZ_DIR, "p-")

# Actions that end the VM.
ENDING_ACTIONS = {"Kill", "Shutdown", "SendCtrlAltDel", "PowerButton"}
# The action sent instead: harmless, and it writes the (confined) metrics file.
SAFE_ACTION = "FlushMetrics"
# Body fields that hold a host path, in any request.
PATH_FIELDS = {
    "log_path",
    "metrics_path",
    "path_on_host",
    "kernel_image_path",
    "initrd_path",
    "uds_path",
    "snapshot_path",
    "mem_file_path",
    "backend_path",
    # A vhost-user back end's socket (PUT /vhost-user-blk|net|fs/{id}), connected at start.
    "socket",
}
# Body fields that hold a console or serial output (`file:PATH`, `socket:PATH`, `pty`, ...).
OUTPUT_FIELDS = {"output", "serial"}
# Body fields that hold a migration URL (`unix:PATH`, `tcp:HOST:PORT`).
URL_FIELDS = {"url"}


def confine(value):
    """The path `value` names, moved into FUZZ_DIR; idempotent."""
    if not isinstance(value, str) or value == "":
        return value
    if value.startswith(PREFIX) and "/" not in value[len(PREFIX) :]:
        return value
    return PREFIX + value.replace("/", "_")[:200]


def confine_output(value):
    """`file:PATH`/`socket:PATH` (any `KIND:REST`) with REST confined; bare words unchanged."""
    if not isinstance(value, str) or ":" not in value:
        return value
    kind, rest = value.split(":", 1)
    return f"{kind}:{confine(rest)}"


def confine_url(value):
    """`unix:` and the socket path `value` names, moved into FUZZ_DIR; idempotent. The whole
    text (scheme included) becomes the file name; an empty string stays empty (petrel refuses
    it)."""
    if not isinstance(value, str) or value == "":
        return value
    if value.startswith("unix:") and confine(value[len("unix:") :]) == value[len("unix:") :]:
        return value
    return "unix:" + confine(value)


def sanitize(body):
    """`body` (a decoded JSON value) with every path confined and no VM-ending action."""
    if isinstance(body, str):
        # serde reads an enum from its name as a string, or as the only key of an object
        # (`{"Kill": null}`), anywhere: no such name reaches petrel.
        return SAFE_ACTION if body in ENDING_ACTIONS else body
    if isinstance(body, dict):
        out = {}
        for key, value in body.items():
            key = sanitize(key)
            if key in PATH_FIELDS and isinstance(value, str):
                out[key] = confine(value)
            elif key in OUTPUT_FIELDS and isinstance(value, str):
                out[key] = confine_output(value)
            elif key in URL_FIELDS and isinstance(value, str):
                out[key] = confine_url(value)
            else:
                out[key] = sanitize(value)
        return out
    if isinstance(body, list):
        # serde reads a struct from an array of its fields in order: any string may be a path.
        # A confined path is no migration URL either: its "scheme" starts with `/`.
        return [confine(sanitize(v)) if isinstance(v, str) else sanitize(v) for v in body]
    return body


def sanitize_raw(raw):
    """A serialized body (str or bytes), sanitized if it is JSON; `None` when unchanged."""
    try:
        decoded = json.loads(raw)
    except (ValueError, UnicodeDecodeError, TypeError):
        # Not JSON: petrel rejects it before it could use any field.
        return None
    clean = sanitize(decoded)
    if clean == decoded:
        return None
    return json.dumps(clean).encode()


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    body = case.body
    if isinstance(body, (dict, list)):
        clean = sanitize(body)
        if clean != body:
            case.body = clean
    elif isinstance(body, (str, bytes)):
        clean = sanitize_raw(body)
        if clean is not None:
            case.body = clean if isinstance(body, bytes) else clean.decode()


_send = requests.adapters.HTTPAdapter.send


def _guarded_send(self, request, *args, **kwargs):
    """Rewrites the body that goes on the wire, whatever produced the request."""
    body = request.body
    if body is not None:
        if not isinstance(body, (str, bytes)):
            raise RuntimeError(
                f"schemathesis_hooks: cannot inspect a {type(body).__name__} body of "
                f"{request.method} {urllib.parse.urlsplit(request.url).path}; not sending it"
            )
        clean = sanitize_raw(body)
        if clean is not None:
            request.body = clean
            request.headers["Content-Length"] = str(len(clean))
    return _send(self, request, *args, **kwargs)


requests.adapters.HTTPAdapter.send = _guarded_send
