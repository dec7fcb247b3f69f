#!/usr/bin/env bash
# Benchmark petrel's process lifecycle and the memory footprint of an idle guest.
#
# Usage: benches/lifecycle.sh
#
# 1. Builds the release binary (cargo build --release -p vmm).
# 2. Lifecycle: runs `petrel run --serial none --memory 128M` (the bundled demo guest,
#    which prints a banner and powers off with exit 0) RUNS times and reports the
#    median and p90 wall time and the median CPU time (user + sys) of one run.
#    Wall times come from hyperfine (installed with apt-get when missing, if possible);
#    hyperfine exports only the mean user/sys time, so the per-run CPU times (and, when
#    hyperfine is unavailable, the wall times too) come from a small python3 runner that
#    reaps each child with wait4(2) (microsecond rusage; /usr/bin/time rounds to 10 ms,
#    too coarse for runs of a few tens of ms).
# 3. Idle memory: starts an idle 128 MiB guest in the background, waits IDLE_WAIT
#    seconds, and reads /proc/PID/status (VmRSS, RssAnon, RssFile, RssShmem) and
#    /proc/PID/smaps. Guest RAM is taken to be the anonymous mapping(s) at least
#    GUEST_MAP_MIN_MIB in size (also memfd, /dev/zero and hugetlb mappings); the sum of
#    their Rss is the guest-touched memory, and the rest of VmRSS is the VMM's own
#    overhead. The guest is then stopped with SIGTERM (SIGKILL after 5 s).
#
# Environment:
#   RUNS=50              lifecycle runs (after WARMUP warm-up runs)
#   WARMUP=3             warm-up runs before measuring
#   SKIP_BUILD=1         do not run cargo; use the existing binary
#   PETREL_BIN=PATH      the binary (default: ${CARGO_TARGET_DIR:-<repo>/target}/release/petrel)
#   NO_HYPERFINE=1       do not use hyperfine; time with the python3 runner only
#   LIFECYCLE_ARGS='...' extra arguments appended to the lifecycle command
#   IDLE_KERNEL=PATH     guest for the idle measurement, passed as --kernel PATH
#                        (default: none, i.e. the bundled guest with petrel.test=idle)
#   IDLE_CMD='...'       the whole idle command line, overriding the default
#                          "$PETREL_BIN run --memory 128M --serial none [--kernel $IDLE_KERNEL]
#                           --cmdline petrel.test=idle"
#                        It is run as `bash -c "exec $IDLE_CMD"`, so it must exec into
#                        the VMM process (the PID measured is that process). The guest
#                        must stay up (e.g. halt forever) until it gets SIGTERM.
#   IDLE_WAIT=1          seconds to wait before reading the idle guest's memory
#   GUEST_MAP_MIN_MIB=100  smallest mapping counted as guest RAM
#   SKIP_IDLE=1          skip the idle-memory measurement
#   RESULTS_JSON=PATH    also write the results as JSON to PATH
#
# Exit status: 0 on success; non-zero, with a message on stderr, if the build fails,
# the binary fails or exits non-zero, or the idle guest dies before it is measured.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"

RUNS="${RUNS:-50}"
WARMUP="${WARMUP:-3}"
IDLE_WAIT="${IDLE_WAIT:-1}"
GUEST_MAP_MIN_MIB="${GUEST_MAP_MIN_MIB:-100}"
PETREL_BIN="${PETREL_BIN:-${CARGO_TARGET_DIR:-$repo_root/target}/release/petrel}"

log() { printf 'lifecycle: %s\n' "$*" >&2; }
die() { printf 'lifecycle: error: %s\n' "$*" >&2; exit 1; }

[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer, got '$WARMUP'"
[[ "$GUEST_MAP_MIN_MIB" =~ ^[0-9]+$ ]] || die "GUEST_MAP_MIN_MIB must be an integer, got '$GUEST_MAP_MIN_MIB'"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/petrel-lifecycle.XXXXXX")"
idle_pid=""
cleanup() {
    if [[ -n "$idle_pid" ]] && kill -0 "$idle_pid" 2>/dev/null; then
        kill -KILL "$idle_pid" 2>/dev/null || true
        wait "$idle_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

apt_install() {
    # apt_install PACKAGE: best effort; returns non-zero if it could not be installed.
    command -v apt-get >/dev/null 2>&1 || return 1
    [[ $(id -u) -eq 0 ]] || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1 && return 0
    apt-get update -qq >/dev/null 2>&1 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1
}

if ! command -v python3 >/dev/null 2>&1; then
    log "installing python3"
    apt_install python3 || die "python3 is required and could not be installed"
fi

# ---------------------------------------------------------------------------------
# 1. Build
# ---------------------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building: cargo build --release -p vmm"
    (cd "$repo_root" && cargo build --release -p vmm) \
        || die "cargo build --release -p vmm failed"
fi
[[ -x "$PETREL_BIN" ]] || die "petrel binary not found or not executable: $PETREL_BIN"

lifecycle_cmd=("$PETREL_BIN" run --serial none --memory 128M)
if [[ -n "${LIFECYCLE_ARGS:-}" ]]; then
    read -r -a extra <<<"$LIFECYCLE_ARGS"
    lifecycle_cmd+=("${extra[@]}")
fi

# One checked run first, so that a failing binary gives a clear message.
log "sanity run: ${lifecycle_cmd[*]}"
status=0
"${lifecycle_cmd[@]}" >"$tmp/sanity.out" 2>"$tmp/sanity.err" </dev/null || status=$?
if [[ $status -ne 0 ]]; then
    {
        echo "lifecycle: error: '${lifecycle_cmd[*]}' exited with status $status"
        echo "--- stderr (last 20 lines) ---"
        tail -n 20 "$tmp/sanity.err"
    } >&2
    exit 1
fi

# ---------------------------------------------------------------------------------
# 2. Lifecycle timing
# ---------------------------------------------------------------------------------
# The per-run runner: prints "wall_s user_s sys_s" for each run; fails (exit 1) with
# the failing run's stderr if a run exits non-zero or is killed by a signal.
cat >"$tmp/runner.py" <<'PY'
import os, subprocess, sys, time
runs, warmup, errlog = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
argv = sys.argv[4:]
for i in range(warmup + runs):
    with open(errlog, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = 0  # reaped by wait4; keep Popen from waiting again
    if os.WIFSIGNALED(status):
        sys.exit(f"run {i + 1}: killed by signal {os.WTERMSIG(status)}")
    code = os.WEXITSTATUS(status)
    if code != 0:
        sys.exit(f"run {i + 1}: exit status {code}")
    if i >= warmup:
        print(f"{wall:.9f} {ru.ru_utime:.9f} {ru.ru_stime:.9f}", flush=True)
PY

run_runner() {
    # run_runner RUNS WARMUP OUTFILE
    if ! python3 "$tmp/runner.py" "$1" "$2" "$tmp/runner.err" "${lifecycle_cmd[@]}" >"$3" 2>"$tmp/runner.msg"; then
        {
            echo "lifecycle: error: ${lifecycle_cmd[*]} failed during timing: $(cat "$tmp/runner.msg")"
            echo "--- stderr of the failing run (last 20 lines) ---"
            tail -n 20 "$tmp/runner.err"
        } >&2
        exit 1
    fi
}

use_hyperfine=0
if [[ "${NO_HYPERFINE:-0}" != 1 ]]; then
    if command -v hyperfine >/dev/null 2>&1; then
        use_hyperfine=1
    else
        log "hyperfine missing: trying apt-get install hyperfine"
        if apt_install hyperfine && command -v hyperfine >/dev/null 2>&1; then
            use_hyperfine=1
        else
            log "hyperfine unavailable: timing with the python3 runner only"
        fi
    fi
fi

timing_tool="python3 wait4 runner"
if [[ $use_hyperfine -eq 1 ]]; then
    timing_tool="hyperfine $(hyperfine --version | awk '{print $2}') (wall), wait4 runner (cpu)"
    # -N: no intermediate shell, so no shell-spawn correction is needed.
    hf_cmd="$(printf '%q ' "${lifecycle_cmd[@]}")"
    log "hyperfine: $RUNS runs (+$WARMUP warm-up) of: ${lifecycle_cmd[*]}"
    if ! hyperfine -N --style basic --warmup "$WARMUP" --runs "$RUNS" \
        --export-json "$tmp/hyperfine.json" "${hf_cmd% }" >"$tmp/hyperfine.out" 2>&1; then
        cat "$tmp/hyperfine.out" >&2
        die "hyperfine: '${lifecycle_cmd[*]}' failed"
    fi
    sed 's/^/  /' "$tmp/hyperfine.out" >&2
    # hyperfine (1.15) exports only the mean user/system time; newer versions may add
    # per-run arrays. Use them when present, else measure CPU per run ourselves.
    if python3 - "$tmp/hyperfine.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
sys.exit(0 if isinstance(r.get("user"), list) and isinstance(r.get("system"), list) else 1)
PY
    then
        timing_tool="hyperfine $(hyperfine --version | awk '{print $2}')"
    else
        log "measuring per-run CPU time: $RUNS runs with the wait4 runner"
        run_runner "$RUNS" 0 "$tmp/runner.tsv"
    fi
else
    log "timing $RUNS runs (+$WARMUP warm-up) with the wait4 runner: ${lifecycle_cmd[*]}"
    run_runner "$RUNS" "$WARMUP" "$tmp/runner.tsv"
fi

# Summarise: prints "wall_median_ms wall_p90_ms cpu_median_ms cpu_mean_ms n".
stats="$(python3 - "$tmp/hyperfine.json" "$tmp/runner.tsv" <<'PY'
import json, math, os, statistics, sys
hf, tsv = sys.argv[1], sys.argv[2]
wall, cpu = None, None
if os.path.exists(hf):
    r = json.load(open(hf))["results"][0]
    wall = r["times"]
    if isinstance(r.get("user"), list) and isinstance(r.get("system"), list):
        cpu = [u + s for u, s in zip(r["user"], r["system"])]
if os.path.exists(tsv):
    rows = [tuple(map(float, l.split())) for l in open(tsv) if l.strip()]
    if wall is None:
        wall = [w for w, _, _ in rows]
    if cpu is None:
        cpu = [u + s for _, u, s in rows]
if not wall or not cpu:
    sys.exit("no timing data")
def p90(xs):
    xs = sorted(xs)
    return xs[max(0, math.ceil(0.9 * len(xs)) - 1)]  # nearest rank
ms = lambda s: f"{s * 1000:.2f}"
print(ms(statistics.median(wall)), ms(p90(wall)), ms(statistics.median(cpu)), ms(statistics.mean(cpu)), len(wall))
PY
)" || die "could not summarise the timings"
read -r wall_median_ms wall_p90_ms cpu_median_ms cpu_mean_ms n_runs <<<"$stats"

# ---------------------------------------------------------------------------------
# 3. Idle guest memory
# ---------------------------------------------------------------------------------
rss_total_kib="" rss_anon_kib="" rss_file_kib="" rss_shmem_kib=""
guest_touched_kib="" vmm_overhead_kib="" guest_maps=""

status_kib() {
    # status_kib PID FIELD: the value in kB of FIELD in /proc/PID/status.
    awk -v f="$2:" '$1 == f { print $2; found = 1 } END { if (!found) print "" }' "/proc/$1/status"
}

if [[ "${SKIP_IDLE:-0}" != 1 ]]; then
    if [[ -z "${IDLE_CMD:-}" ]]; then
        idle_argv=("$PETREL_BIN" run --memory 128M --serial none)
        [[ -n "${IDLE_KERNEL:-}" ]] && idle_argv+=(--kernel "$IDLE_KERNEL")
        idle_argv+=(--cmdline petrel.test=idle)
        IDLE_CMD="$(printf '%q ' "${idle_argv[@]}")"
        IDLE_CMD="${IDLE_CMD% }"
    fi
    log "idle guest: $IDLE_CMD"
    bash -c "exec $IDLE_CMD" </dev/null >"$tmp/idle.out" 2>"$tmp/idle.err" &
    idle_pid=$!
    sleep "$IDLE_WAIT"
    if ! kill -0 "$idle_pid" 2>/dev/null; then
        status=0
        wait "$idle_pid" || status=$?
        idle_pid=""
        {
            echo "lifecycle: error: the idle guest exited (status $status) before it was measured."
            echo "  It must keep running until SIGTERM; the 'petrel.test=idle' scenario may not exist"
            echo "  yet. Set IDLE_CMD (or IDLE_KERNEL) to a guest that halts forever, or SKIP_IDLE=1."
            echo "--- stderr (last 20 lines) ---"
            tail -n 20 "$tmp/idle.err"
        } >&2
        exit 1
    fi

    # Read /proc while the process is known to be alive; copy smaps first so that the
    # numbers come from one moment.
    cp "/proc/$idle_pid/smaps" "$tmp/smaps" 2>/dev/null || die "cannot read /proc/$idle_pid/smaps"
    rss_total_kib="$(status_kib "$idle_pid" VmRSS)"
    rss_anon_kib="$(status_kib "$idle_pid" RssAnon)"
    rss_file_kib="$(status_kib "$idle_pid" RssFile)"
    rss_shmem_kib="$(status_kib "$idle_pid" RssShmem)"
    [[ -n "$rss_total_kib" ]] || die "no VmRSS in /proc/$idle_pid/status"

    # Guest RAM: anonymous-like mappings at least GUEST_MAP_MIN_MIB in size. Prints
    # "sum_rss_kib count size_kib:rss_kib,...".
    read -r guest_touched_kib n_guest_maps guest_maps < <(awk -v min_kib=$((GUEST_MAP_MIN_MIB * 1024)) '
        function flush() {
            if (have && size >= min_kib && anon) {
                sum += rss; n++
                list = list (list == "" ? "" : ",") size ":" rss
            }
            have = 0
        }
        /^[0-9a-f]+-[0-9a-f]+ / {
            flush()
            have = 1; size = 0; rss = 0
            path = ""
            for (i = 6; i <= NF; i++) path = path (path == "" ? "" : " ") $i
            anon = ($5 == 0 && (path == "" || path ~ /^\[anon:/)) ||
                   path ~ /^\/memfd:/ || path ~ /^\/dev\/zero/ || path ~ /^\/anon_hugepage/
            next
        }
        $1 == "Size:" { size = $2 }
        $1 == "Rss:"  { rss = $2 }
        END { flush(); print sum + 0, n + 0, (list == "" ? "-" : list) }
    ' "$tmp/smaps")

    log "stopping the idle guest (SIGTERM)"
    kill -TERM "$idle_pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$idle_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$idle_pid" 2>/dev/null; then
        log "warning: the idle guest ignored SIGTERM for 5 s; sending SIGKILL"
        kill -KILL "$idle_pid" 2>/dev/null || true
    fi
    wait "$idle_pid" 2>/dev/null || true
    idle_pid=""

    if [[ "$n_guest_maps" -eq 0 ]]; then
        die "no anonymous mapping >= ${GUEST_MAP_MIN_MIB} MiB in the idle guest's smaps: where is guest RAM? (see GUEST_MAP_MIN_MIB)"
    fi
    vmm_overhead_kib=$((rss_total_kib - guest_touched_kib))
fi

# ---------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------
row() { printf '%-28s %s\n' "$1" "$2"; }
echo
echo "petrel lifecycle benchmark ($(uname -r), $(nproc) cpus)"
row "binary" "$PETREL_BIN"
row "lifecycle command" "${lifecycle_cmd[*]}"
row "timing" "$timing_tool"
row "runs" "$n_runs"
row "wall_median_ms" "$wall_median_ms"
row "wall_p90_ms" "$wall_p90_ms"
row "cpu_median_ms (user+sys)" "$cpu_median_ms"
row "cpu_mean_ms (user+sys)" "$cpu_mean_ms"
if [[ "${SKIP_IDLE:-0}" != 1 ]]; then
    row "idle command" "$IDLE_CMD"
    row "rss_total_kib" "$rss_total_kib"
    row "rss_anon_kib" "${rss_anon_kib:-n/a}"
    row "rss_file_kib" "${rss_file_kib:-n/a}"
    row "rss_shmem_kib" "${rss_shmem_kib:-n/a}"
    row "guest_maps (size:rss kib)" "$guest_maps"
    row "guest_touched_kib" "$guest_touched_kib"
    row "vmm_overhead_kib" "$vmm_overhead_kib"
fi

if [[ -n "${RESULTS_JSON:-}" ]]; then
    python3 - "$RESULTS_JSON" <<PY || die "could not write $RESULTS_JSON"
import json, sys
def num(s):
    try:
        return float(s) if "." in s else int(s)
    except ValueError:
        return None
r = {
    "runs": num("$n_runs"),
    "wall_median_ms": num("$wall_median_ms"),
    "wall_p90_ms": num("$wall_p90_ms"),
    "cpu_median_ms": num("$cpu_median_ms"),
    "cpu_mean_ms": num("$cpu_mean_ms"),
    "rss_total_kib": num("$rss_total_kib"),
    "rss_anon_kib": num("$rss_anon_kib"),
    "rss_file_kib": num("$rss_file_kib"),
    "rss_shmem_kib": num("$rss_shmem_kib"),
    "guest_touched_kib": num("$guest_touched_kib"),
    "vmm_overhead_kib": num("$vmm_overhead_kib"),
}
json.dump(r, open(sys.argv[1], "w"), indent=2)
PY
    log "results written to $RESULTS_JSON"
fi
