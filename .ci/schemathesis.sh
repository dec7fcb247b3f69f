#!/usr/bin/env bash
# Runs schemathesis (from PyPI, pinned) against live petrel processes: the API must answer
# every generated request without a server error (5xx) and every response must match
# api/openapi.json (status code, content type, headers, body schema).
#
# Two runs, one petrel each:
# - booted: the bundled test guest runs (scenario `idle`, 1 vCPU); afterwards petrel must
#   still run with the guest Running or Paused;
# - unstarted: petrel waits to be configured, so the configuration requests get past the
#   lifecycle check; afterwards petrel must still run, Not started.
#
# Random bodies are kept from ending the VM and from naming files outside this run's temp dir
# by .ci/schemathesis_hooks.py. Each petrel runs in a network namespace of its own, so a
# configured TAP device could never appear on the host. Called by .ci/run after the cargo
# tests; runs alone too: `bash .ci/schemathesis.sh`.
# Knobs: SCHEMATHESIS_MAX_EXAMPLES (default 50), SCHEMATHESIS_SEED (default random).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

SCHEMATHESIS_VERSION=4.32.5
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-50}
started=$SECONDS

echo "== schemathesis: setup"
if ! command -v socat >/dev/null || ! command -v curl >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat curl >/dev/null
fi
# A private virtualenv under target/ keeps the pinned schemathesis and its dependencies away
# from the system's Python packages; it is reused while the version matches.
target_dir=${CARGO_TARGET_DIR:-$root/target}
venv=$target_dir/schemathesis-venv
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF " $SCHEMATHESIS_VERSION"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$venv/bin/schemathesis" --version

cargo build --quiet -p vmm --bin petrel
petrel=$target_dir/debug/petrel

work=$(mktemp -d /tmp/petrel-schemathesis.XXXXXX)
petrel_pid=
socat_pid=
stop_processes() {
    if [ -n "$socat_pid" ]; then
        kill "$socat_pid" 2>/dev/null || true
        wait "$socat_pid" 2>/dev/null || true
    fi
    if [ -n "$petrel_pid" ]; then
        kill "$petrel_pid" 2>/dev/null || true
        wait "$petrel_pid" 2>/dev/null || true
    fi
    socat_pid=
    petrel_pid=
}
trap 'stop_processes; rm -rf "$work"' EXIT

failed=0
# A network namespace of petrel's own where this user may make one (root, as in CI).
netns=(unshare --net)
if ! unshare --net true 2>/dev/null; then
    echo "cannot make a network namespace: petrel runs in this one"
    netns=()
fi

# run_against NAME EXPECTED_STATES PETREL_ARGS...: starts petrel with an API socket in
# $work/NAME, runs schemathesis against it, then checks that petrel still runs in one of
# EXPECTED_STATES (separated by `|`).
run_against() {
    local name=$1 expected=$2
    shift 2
    local dir=$work/$name
    local fuzz=$dir/fuzz
    mkdir -p "$fuzz"
    echo "== schemathesis: $name petrel"

    "${netns[@]}" "$petrel" run --api-sock "$dir/api.sock" --vcpus 1 --memory 128M \
        --serial "file:$dir/serial.log" "$@" \
        </dev/null >"$dir/petrel.out" 2>&1 &
    petrel_pid=$!

    local api=(curl -sS --max-time 10 --unix-socket "$dir/api.sock")
    state() { "${api[@]}" http://petrel/ | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'; }
    local now=
    for _ in $(seq 200); do
        kill -0 "$petrel_pid" 2>/dev/null || break
        if [ -S "$dir/api.sock" ]; then
            now=$(state 2>/dev/null || true)
            # The booted run waits until the guest has printed that it idles.
            if [ -n "$now" ] && { [ "$now" != Running ] || grep -q IDLE "$dir/serial.log" 2>/dev/null; }; then
                break
            fi
        fi
        sleep 0.1
    done
    echo "before the run: the VM is ${now:-unknown}"
    if [ -z "$now" ] || ! [[ "|$expected|" == *"|$now|"* ]]; then
        echo "petrel did not come up as expected ($expected):" >&2
        cat "$dir/petrel.out" "$dir/serial.log" >&2 2>/dev/null || true
        stop_processes
        failed=1
        return
    fi

    # schemathesis speaks TCP: bridge a loopback port to the API socket.
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$dir/api.sock" &
    socat_pid=$!
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.1
    done

    local seed_args=()
    [ -n "${SCHEMATHESIS_SEED:-}" ] && seed_args=(--seed "$SCHEMATHESIS_SEED")
    local run_started=$SECONDS status=0
    # From the run's own directory, without an example database: nothing lands in the tree.
    (cd "$dir" && PETREL_FUZZ_DIR=$fuzz SCHEMATHESIS_HOOKS=$root/.ci/schemathesis_hooks.py \
        PYTHONDONTWRITEBYTECODE=1 \
        "$venv/bin/schemathesis" --no-color run "http://127.0.0.1:$port/openapi.json" \
        --url "http://127.0.0.1:$port" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
        --max-examples "$max_examples" \
        --workers 1 \
        --request-timeout 15 \
        --generation-database none \
        "${seed_args[@]}") || status=$?
    echo "schemathesis ($name) took $((SECONDS - run_started)) s and exited with $status"
    [ "$status" = 0 ] || failed=1

    # petrel and its guest must have come through.
    if ! kill -0 "$petrel_pid" 2>/dev/null; then
        echo "petrel ($name) is no longer running" >&2
        now=
    else
        now=$(state || true)
        echo "after the run: petrel runs, the VM is ${now:-unknown}"
    fi
    if [ -z "$now" ] || ! [[ "|$expected|" == *"|$now|"* ]]; then
        echo "FAIL: petrel ($name) should still run with the VM $expected" >&2
        echo "--- petrel's output (last lines)" >&2
        tail -n 50 "$dir/petrel.out" >&2 || true
        failed=1
    fi
    echo "files petrel made from generated paths (all in its fuzz dir): $(find "$fuzz" -mindepth 1 | wc -l)"
    stop_processes
}

# The bundled test guest boots when the configuration names no kernel.
echo '{}' >"$work/vm.json"
# With a GPU, two input devices and a vsock device, so their routes reach real devices.
run_against booted 'Running|Paused' --config "$work/vm.json" --cmdline petrel.test=idle \
    --gpu width=64,height=48 --input kind=keyboard,id=input0 --input kind=tablet,id=input1 \
    --vsock "cid=3,uds=$work/vsock.sock"
run_against unstarted 'Not started'

echo "== schemathesis: $((SECONDS - started)) s in all"
if [ "$failed" != 0 ]; then
    echo "schemathesis: FAILED" >&2
    exit 1
fi
echo "schemathesis: both runs passed"
