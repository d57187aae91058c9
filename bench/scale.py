#!/usr/bin/env python3
"""keyward scale measurement (`make scale`, issue #3): a policy of 1k, 100k and 1M keys pushed
through the real chunked sync into Envoy (`--concurrency 2`, sync_service poller, loopback).

For each size a fresh Envoy starts with a one-key policy, then the control plane (the test
control plane of integration/snapshot_server.py, chunked layout) serves the big snapshot. The
driver reports:

- time to apply: from the moment the control plane serves the new manifest until the poller
  published it (all chunks in shared data) and until every filter VM (main thread + 2 workers)
  swapped it in, read from the timestamps of Envoy's log lines;
- Envoy RSS before and after (and the peak, VmHWM): memory per key;
- request latency during the load: a client sends requests continuously (fresh connection each,
  so both workers answer) with a key valid before and after; max and p99;
- Envoy CPU per request after the load (closed loop, bench/loadgen, 8 connections, 1000 keys
  spread over the key set): 1k vs 1M.

Standard library only; every child is killed on exit. Writes bench/results/scale.{json,md}.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "integration"))
sys.path.insert(0, str(REPO / "pylib"))
from keyward_testkit.envoy import EnvoyLaunch  # noqa: E402
from keyward_testkit.envoy_config import (  # noqa: E402
    HCM_TYPE, http_listener, native_filter, native_search_dir, router_filter, static_bootstrap, static_cluster,
    wasm_filter, wasm_plugin,
)
from keyward_testkit.net import LOOPBACK, first_line, free_port  # noqa: E402
from keyward_testkit.process import terminate  # noqa: E402
from snapshot_server import SnapshotServer, split_chunked, sync_block  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CONCURRENCY = 2
PROJECT = {"id": "proj_a", "org": "org_1", "status": "active"}
CHILDREN: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@atexit.register
def stop_all() -> None:
    for p in CHILDREN:
        terminate(p, grace=3.0)


def spawn(cmd: list[str], logfile: Path, stdout=None) -> subprocess.Popen:
    out = open(logfile, "ab")
    p = subprocess.Popen(cmd, stdout=stdout or out, stderr=out, stdin=subprocess.DEVNULL)
    CHILDREN.append(p)
    return p


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def key_material(i: int) -> tuple[str, str]:
    return f"k{i:07d}", f"bench{i:010d}Secret"


def records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        kid, secret = key_material(i)
        out.append({"id": kid, "secret_sha256": hashlib.sha256(secret.encode()).hexdigest(), "project": "proj_a", "status": "active"})
    return out


def snapshot(version: int, n: int) -> dict:
    return {"version": version, "issued_at": int(time.time()), "projects": [PROJECT], "keys": records(n)}


def bootstrap(listen: int, admin: int, upstream: int, cp: int, wasm: Path, host: str = "wasm") -> dict:
    """Wasm: the filter follows what a sync_service singleton (same vm_id: they share data)
    publishes. Native: the filter configuration polls itself (lease, once per process)."""
    if host == "native":
        keyward = native_filter({"sync": sync_block(poller="lease", interval_ms=1000, layout="chunked")})
    else:
        sync = sync_block(poller="sync_service", interval_ms=1000, layout="chunked")
        keyward = wasm_filter(wasm, {"sync": sync}, vm_id="keyward")
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "scale",
        "route_config": {
            "name": "scale",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}],
        },
        "http_filters": [keyward, router_filter()],
    }
    cfg = static_bootstrap(
        admin, [http_listener("main", listen, hcm)],
        [static_cluster("upstream", upstream), static_cluster("keyward_control_plane", cp)],
    )
    if host == "wasm":
        cfg["bootstrap_extensions"] = [
            {
                "name": "envoy.bootstrap.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                    "singleton": True,
                    "config": wasm_plugin(wasm, {"role": "sync_service", "sync": sync}, name="keyward_sync", vm_id="keyward"),
                },
            }
        ]
    return cfg


def get(port: int, path: str, auth: Optional[str] = None, timeout: float = 5.0) -> int:
    c = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        headers = {"Authorization": auth} if auth else {}
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]")


def line_time(line: str) -> Optional[float]:
    m = LOG_TIME.match(line)
    if not m:
        return None
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()


class Probe(threading.Thread):
    """Requests back to back (fresh connection each) with a key valid in every policy."""

    def __init__(self, port: int, auth: str):
        super().__init__(daemon=True)
        self.port, self.auth = port, auth
        self.halt = threading.Event()
        self.latencies: list[float] = []
        self.unexpected = 0

    def run(self) -> None:
        while not self.halt.is_set():
            t0 = time.monotonic()
            try:
                status = get(self.port, "/v1/scale", self.auth)
            except OSError:
                status = 0
            self.latencies.append(time.monotonic() - t0)
            if status != 200:
                self.unexpected += 1
            time.sleep(0.002)


def measure(args, n: int, base_id: int, workdir: Path) -> dict:
    upstream_log = workdir / "upstream.log"
    up = spawn([str(args.tools / "bench-upstream"), "--listen", f"{LOOPBACK}:0"], upstream_log, stdout=subprocess.PIPE)
    line = first_line(up.stdout, timeout=15)
    upstream_port = int(line.split()[1].rsplit(":", 1)[1])
    server = SnapshotServer().start()
    server.publish_chunked(*split_chunked(snapshot(1, 1), args.keys_per_chunk))
    listen, admin = free_port(), free_port()
    cfg = workdir / f"envoy-{n}.json"
    cfg.write_text(json.dumps(bootstrap(listen, admin, upstream_port, server.port, args.wasm, args.host)))
    envoy_log = workdir / f"envoy-{n}.log"
    envoy_log.write_text("")
    envoy = spawn(EnvoyLaunch(cfg, admin, base_id=base_id, concurrency=CONCURRENCY).command(), envoy_log)
    auth0 = "Bearer ak_{}.{}".format(*key_material(0))
    deadline = time.monotonic() + 30
    while True:
        try:
            if get(listen, "/v1/scale", auth0, timeout=1) == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or envoy.poll() is not None:
            raise RuntimeError(f"envoy did not serve the one-key policy; see {envoy_log}")
        time.sleep(0.1)
    time.sleep(1.5)
    rss_before = status_mb(envoy.pid, "VmRSS")

    log(f"{n} keys: building the snapshot")
    t0 = time.monotonic()
    manifest, chunks = split_chunked(snapshot(2, n), args.keys_per_chunk)
    chunk_bytes = sum(len(c) for c in chunks.values())
    log(f"{n} keys: {len(chunks)} chunks, {chunk_bytes / 1e6:.1f} MB (built in {time.monotonic() - t0:.1f}s); publishing")
    probe = Probe(listen, auth0)
    probe.start()
    time.sleep(0.5)
    cpu0 = cpu_seconds(envoy.pid)
    published_at = time.time()
    server.publish_chunked(manifest, chunks)
    # Wasm: a root context per worker and one on the main thread; native: one policy per process
    vms = 1 if args.host == "native" else CONCURRENCY + 1
    applied: list[float] = []
    poller_done: Optional[float] = None
    deadline = time.monotonic() + args.apply_timeout
    while time.monotonic() < deadline:
        text = envoy_log.read_text(errors="replace")
        applied = [t for t in (line_time(line) for line in text.splitlines() if f"policy version 2 with {n} keys" in line) if t]
        for line in text.splitlines():
            if "published policy version 2" in line:
                poller_done = line_time(line)
        if len(applied) >= vms:
            break
        time.sleep(0.1)
    apply_cpu = cpu_seconds(envoy.pid) - cpu0
    time.sleep(0.5)
    probe.halt.set()
    probe.join(5)
    lat = sorted(probe.latencies)
    time.sleep(1.0)
    rss_after = status_mb(envoy.pid, "VmRSS")
    peak = status_mb(envoy.pid, "VmHWM")
    ok = len(applied) >= vms
    result = {
        "keys": n,
        "chunks": len(chunks),
        "chunk_mb": chunk_bytes / 1e6,
        "applied": ok,
        "vms_applied": len(applied),
        "poller_published_s": (poller_done - published_at) if poller_done else None,
        "first_vm_s": (min(applied) - published_at) if applied else None,
        "all_vms_s": (max(applied) - published_at) if ok else None,
        "envoy_cpu_during_apply_s": apply_cpu,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "peak_rss_mb": peak,
        "bytes_per_key": (rss_after - rss_before) * 1024 * 1024 / n,
        "probe_requests": len(lat),
        "probe_unexpected": probe.unexpected,
        "probe_max_ms": lat[-1] * 1000 if lat else None,
        "probe_p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
        "probe_p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
    }
    if ok:
        # Per-request CPU after the load: 1000 keys spread over the key set.
        auth_file = workdir / f"auth-{n}.txt"
        step = max(1, n // 1000)
        auth_file.write_text("".join("Bearer ak_{}.{}\n".format(*key_material(i)) for i in range(0, n, step)[:1000]))
        runs = []
        for _ in range(args.cpu_runs):
            c0 = cpu_seconds(envoy.pid)
            out = subprocess.run(
                [str(args.tools / "loadgen"), "--addr", f"{LOOPBACK}:{listen}", "--path", "/v1/scale", "--auth-file", str(auth_file),
                 "--connections", "8", "--duration", str(args.cpu_seconds), "--rate", "0", "--expect", "200"],
                capture_output=True, text=True, timeout=args.cpu_seconds + 30,
            )  # fmt: skip
            c1 = cpu_seconds(envoy.pid)
            res = json.loads(out.stdout)
            runs.append({"requests": res["requests"], "unexpected": res["unexpected"], "cpu_us_per_req": (c1 - c0) * 1e6 / max(1, res["requests"]), "rps": res["rps"]})
        runs.sort(key=lambda r: r["cpu_us_per_req"])
        result["cpu_runs"] = runs
        result["cpu_us_per_req"] = runs[len(runs) // 2]["cpu_us_per_req"]
        result["rps"] = runs[len(runs) // 2]["rps"]
    else:
        result["log_tail"] = envoy_log.read_text(errors="replace").splitlines()[-20:]
    terminate(envoy, grace=3.0)
    terminate(up, grace=3.0)
    server.stop()
    return result


def markdown(results: list[dict], meta: dict) -> str:
    def f(x, spec=".1f"):
        return "–" if x is None else format(x, spec)

    if meta.get("host") == "native":
        build = (f"the native build (keyward.so, {meta['module_bytes']} bytes): the filter configuration polls "
                 f"(lease), compiles in slices of 50 ms on Envoy's main thread and swaps the policy once per process")
        applied = "applied (once per process)"
    else:
        build = (f"sync_service poller, follower slices of 8 ms every 20 ms while loading; keyward.wasm "
                 f"{meta['wasm_bytes']} bytes")
        applied = "applied on every VM"
    lines = [
        f"Machine: {meta['cpus']} CPUs, {meta['date']}, load average at start {meta.get('loadavg_start', '?')}; "
        f"Envoy `--concurrency {CONCURRENCY}`, chunks of {meta['keys_per_chunk']} keys; {build}.",
        "",
        f"| keys | chunks (MB) | poller published | {applied} | Envoy CPU for the apply | RSS before → after (peak) MB | bytes/key | probe max / p99 / p50 ms during the load | Envoy CPU µs/req after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['keys']:,} | {r['chunks']} ({f(r['chunk_mb'])}) | {f(r['poller_published_s'], '.2f')} s | {f(r['all_vms_s'], '.2f')} s "
            f"| {f(r['envoy_cpu_during_apply_s'], '.1f')} s | {f(r['rss_before_mb'], '.0f')} → {f(r['rss_after_mb'], '.0f')} ({f(r['peak_rss_mb'], '.0f')}) "
            f"| {f(r['bytes_per_key'], '.0f')} | {f(r['probe_max_ms'], '.0f')} / {f(r['probe_p99_ms'], '.0f')} / {f(r['probe_p50_ms'], '.1f')} ({r['probe_requests']} req, {r['probe_unexpected']} not 200) "
            f"| {f(r.get('cpu_us_per_req'), '.0f')} |"
        )
    small = next((r for r in results if r["keys"] == min(x["keys"] for x in results)), None)
    large = next((r for r in results if r["keys"] == max(x["keys"] for x in results)), None)
    if small and large and small.get("cpu_us_per_req") and large.get("cpu_us_per_req"):
        lines += ["", f"Envoy CPU per request, {large['keys']:,} vs {small['keys']:,} keys: {large['cpu_us_per_req'] / small['cpu_us_per_req']:.2f}×."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wasm", type=Path, default=REPO / "target" / "keyward.wasm")
    ap.add_argument("--host", choices=["wasm", "native"], default="wasm", help="which build of the filter")
    ap.add_argument("--native", type=Path, default=REPO / "target" / "keyward.so")
    ap.add_argument("--tools", type=Path, default=BENCH / "target" / "release")
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--keys-per-chunk", type=int, default=8192)
    ap.add_argument("--apply-timeout", type=float, default=120.0)
    ap.add_argument("--cpu-runs", type=int, default=3)
    ap.add_argument("--cpu-seconds", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    args = ap.parse_args()
    wasm_copy = Path(os.environ.get("TMPDIR", "/tmp")) / f"keyward-scale-{os.getpid()}.wasm"
    wasm_copy.write_bytes(args.wasm.read_bytes())
    args.wasm = wasm_copy
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"keyward-scale-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    module_bytes = 0
    if args.host == "native":
        # a copy, so that a rebuild during the run does not mix builds
        module = workdir / "keyward.so"
        module.write_bytes(args.native.read_bytes())
        module_bytes = module.stat().st_size
        os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(native_search_dir(workdir, module))
    loadavg_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results = []
    for index, n in enumerate(int(s) for s in args.sizes.split(",")):
        log(f"--- {n} keys")
        r = measure(args, n, 7400 + index, workdir)
        log(json.dumps({k: v for k, v in r.items() if k != "cpu_runs"}, default=str))
        results.append(r)
    meta = {
        "cpus": os.cpu_count(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "keys_per_chunk": args.keys_per_chunk,
        "wasm_bytes": wasm_copy.stat().st_size,
        "host": args.host,
        "module_bytes": module_bytes,
        "loadavg_start": loadavg_start,
    }
    md = markdown(results, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scale" if args.host == "wasm" else f"scale-{args.host}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    return 0 if all(r["applied"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
