#!/usr/bin/env python3
"""Instructions, cache misses and branch mispredictions per request, counted by valgrind.

The interleaved `make bench` A/B measures Envoy CPU time, which swings by several percent between
Envoy processes on a shared machine. This counts instead: Envoy runs under callgrind with its
cache and branch simulation (V8's JIT code included: `--smc-check=all-non-file`), and per build
and traffic it reports what one request costs, split between the Envoy binary, the JIT code (the
Wasm filter, compiled by V8) and libc. The counts repeat to well under 1% between runs, so a
difference of a few thousand instructions or a few hundred misses is a real one.

`cycles` is kcachegrind's estimate, Ir + 10 × (L1 misses + branch mispredictions) + 100 × LL
misses: a model, not a measurement, but it weighs what instruction counts alone miss.

Usage (after `make bench`, whose work directory holds the Envoy configurations):

    bench/callgrind_envoy.py --workdir /tmp/xw --wasm this=target/keyward.wasm --wasm base=/tmp/base.wasm

`make bench` with `--ab-wasm` runs the same count for its A/B builds at the end of its run.

Needs valgrind (Debian's `valgrind` package) and `bench-upstream` (`make bench-tools`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "pylib"))
from keyward_testkit.envoy import find_envoy  # noqa: E402
from keyward_testkit.net import free_port  # noqa: E402

WARM_UP = 80
PER_WINDOW = 300
WINDOWS = 2
KEY = "Bearer ak_k0000001.bench0000000001Secret"
CHAT = (b'{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},'
        b'"max_tokens":64,"messages":[{"role":"user","content":"Say hello to the benchmark."}]}')
TRAFFIC = {"accept": "envoy-keyward-1k.json", "metered": "envoy-keyward-metered.json"}


def send(conn: http.client.HTTPConnection, traffic: str) -> None:
    if traffic == "accept":
        conn.request("GET", "/v1/bench", None, {"authorization": KEY})
    else:
        conn.request("POST", "/v1/chat/completions", CHAT, {"authorization": KEY, "content-type": "application/json"})
    answer = conn.getresponse()
    body = answer.read()
    if answer.status != 200 or (traffic == "metered" and b'"usage"' not in body):
        raise SystemExit(f"{traffic}: unexpected answer {answer.status} {body[:200]!r}")


def control(pid: int, *args: str) -> None:
    done = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True)
    if done.returncode != 0 or "Error" in done.stdout:
        raise SystemExit(f"callgrind_control {' '.join(args)}: {done.stdout}{done.stderr}")


def profile(envoy: str, upstream: str, config: Path, wasm: Path, work: Path, traffic: str) -> list[Path]:
    """Runs Envoy under callgrind; returns one dump per measured window."""
    doc = json.loads(config.read_text())
    port, admin, up_port = free_port(), free_port(), free_port()
    listener = doc["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = port
    cluster = doc["static_resources"]["clusters"][0]
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
        "port_value"] = up_port
    doc["admin"]["address"]["socket_address"]["port_value"] = admin
    wasm_filter = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    wasm_filter["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(wasm)
    (work / "envoy.json").write_text(json.dumps(doc))
    up = subprocess.Popen([upstream, "--listen", f"127.0.0.1:{up_port}"], stdout=subprocess.DEVNULL)
    vg = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--branch-sim=yes", "--smc-check=all-non-file",
         "--instr-atstart=no", f"--callgrind-out-file={work}/callgrind.out", envoy, "-c", str(work / "envoy.json"),
         "--concurrency", "1", "--base-id", str(port % 1000 + 4000), "-l", "error"],
        stdout=subprocess.DEVNULL, stderr=open(work / "valgrind.log", "w"), cwd=work)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                probe = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
                probe.request("GET", "/ready")
                if probe.getresponse().status == 200:
                    break
            except OSError:
                pass
            if vg.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"Envoy under valgrind did not start: see {work}/valgrind.log")
            time.sleep(1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(WARM_UP):
            send(conn, traffic)
        for window in range(WINDOWS):
            control(vg.pid, "-z")
            control(vg.pid, "-i", "on")
            for _ in range(PER_WINDOW):
                send(conn, traffic)
            control(vg.pid, "-i", "off")
            control(vg.pid, "-d", f"window{window}")
    finally:
        vg.terminate()
        up.terminate()
        vg.wait(30)
        up.wait(30)
    dumps = sorted(work.glob("callgrind.out.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    return [d for d in dumps if int(d.name.rsplit(".", 1)[1]) > 0][:WINDOWS]


def costs_by_object(dump: Path) -> dict[str, dict[str, int]]:
    """Self cost per object file (`???` is code without a file: V8's JIT code)."""
    events: list[str] = []
    names: dict[str, str] = {}
    totals: dict[str, list[int]] = defaultdict(lambda: [0] * 16)
    current, skip = "?", False
    for line in dump.open():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith(("ob=", "cob=")):
            m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.strip())
            if m and m.group(2):
                names[m.group(1)] = m.group(2)
            if m and line.startswith("ob="):
                current = names.get(m.group(1), "?")
        elif line.startswith("calls="):
            skip = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if skip:  # the inclusive cost of a call, not this object's own
                skip = False
                continue
            for i, value in enumerate(line.split()[1:]):
                totals[current][i] += int(value)
    return {Path(ob).name: dict(zip(events, values)) for ob, values in totals.items()}


def summary(per_object: dict[str, dict[str, int]], requests: int) -> dict[str, dict[str, float]]:
    def figures(c: dict[str, int]) -> dict[str, float]:
        l1 = c.get("I1mr", 0) + c.get("D1mr", 0) + c.get("D1mw", 0)
        ll = c.get("ILmr", 0) + c.get("DLmr", 0) + c.get("DLmw", 0)
        bm = c.get("Bcm", 0) + c.get("Bim", 0)
        return {"Ir": c.get("Ir", 0) / requests, "I1mr": c.get("I1mr", 0) / requests, "Bm": bm / requests,
                "cycles": (c.get("Ir", 0) + 10 * (l1 + bm) + 100 * ll) / requests}
    whole: dict[str, int] = defaultdict(int)
    for c in per_object.values():
        for k, v in c.items():
            whole[k] += v
    return {"all": figures(whole), "jit": figures(per_object.get("???", {}))}


def count_builds(envoy: str, upstream: str, workdir: Path, builds: list[tuple[str, Path]], traffics: list[str],
                 passes: int = 2, say=print) -> dict:
    """Counts every build on every traffic, `passes` times in alternating build order (A B, B A, ...),
    each pass a fresh Envoy with `WINDOWS` windows. Per traffic and build: the median over every
    window, and the smallest and largest window."""
    result: dict = {"passes": passes, "windows_per_pass": WINDOWS, "requests_per_window": PER_WINDOW, "traffic": {}}
    for traffic in traffics:
        config = workdir / TRAFFIC[traffic]
        if not config.exists():
            raise SystemExit(f"{config} is missing: run make bench with --workdir {workdir} first")
        windows: dict[str, list[dict]] = {label: [] for label, _ in builds}
        for n in range(passes):
            for label, wasm in (builds if n % 2 == 0 else list(reversed(builds))):
                with tempfile.TemporaryDirectory(prefix="keyward-callgrind-") as tmp:
                    for window, dump in enumerate(profile(envoy, upstream, config, wasm, Path(tmp), traffic)):
                        s = summary(costs_by_object(dump), PER_WINDOW)
                        windows[label].append(s)
                        say(f"{traffic:8} {label:10} pass {n} window {window}: cycles {s['all']['cycles'] / 1e3:.1f}k "
                            f"Ir {s['all']['Ir'] / 1e3:.1f}k (JIT {s['jit']['Ir'] / 1e3:.1f}k) "
                            f"I1 misses {s['all']['I1mr']:.0f} (JIT {s['jit']['I1mr']:.0f}) "
                            f"mispredicts {s['all']['Bm']:.0f} (JIT {s['jit']['Bm']:.0f})")
        result["traffic"][traffic] = {
            label: {
                "cycles": statistics.median(w["all"]["cycles"] for w in ws),
                "cycles_min": min(w["all"]["cycles"] for w in ws),
                "cycles_max": max(w["all"]["cycles"] for w in ws),
                "Ir": statistics.median(w["all"]["Ir"] for w in ws),
                "jit_Ir": statistics.median(w["jit"]["Ir"] for w in ws),
                "I1mr": statistics.median(w["all"]["I1mr"] for w in ws),
                "jit_I1mr": statistics.median(w["jit"]["I1mr"] for w in ws),
                "Bm": statistics.median(w["all"]["Bm"] for w in ws),
            }
            for label, ws in windows.items()
        }
    return result


def markdown(counted: dict, reference: str | None = None) -> list[str]:
    """The counted table; with `reference`, each build's cycles and Ir as a ratio to that build's."""
    lines = [
        "| traffic | build | cycles (model) | window range | Ir | JIT Ir | I1 misses | JIT I1 misses | mispredicts "
        "| cycles × ref | Ir × ref |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for traffic, builds in counted["traffic"].items():
        ref = builds.get(reference) if reference else None
        for label, b in builds.items():
            ratio = (f"{b['cycles'] / ref['cycles']:.3f} | {b['Ir'] / ref['Ir']:.3f}" if ref else "– | –")
            lines.append(
                f"| {traffic} | {label} | {b['cycles'] / 1e3:.1f}k | {b['cycles_min'] / 1e3:.1f}–"
                f"{b['cycles_max'] / 1e3:.1f}k | {b['Ir'] / 1e3:.1f}k | {b['jit_Ir'] / 1e3:.1f}k | {b['I1mr']:.0f} "
                f"| {b['jit_I1mr']:.0f} | {b['Bm']:.0f} | {ratio} |"
            )
    return lines


def require_valgrind() -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, type=Path, help="a `make bench` work directory (its Envoy configs)")
    ap.add_argument("--wasm", action="append", required=True, metavar="LABEL=PATH")
    ap.add_argument("--traffic", action="append", choices=sorted(TRAFFIC), help="default: both")
    ap.add_argument("--upstream", default=str(REPO / "bench/target/release/bench-upstream"))
    ap.add_argument("--passes", type=int, default=2, help="fresh Envoy processes per build, in alternating order")
    ap.add_argument("--reference", help="the label the other builds are compared with (default: the last one)")
    args = ap.parse_args()
    require_valgrind()
    builds = [(label, Path(path).resolve()) for label, path in (w.split("=", 1) for w in args.wasm)]
    counted = count_builds(find_envoy(), args.upstream, args.workdir, builds, args.traffic or sorted(TRAFFIC),
                           args.passes, say=lambda line: print(line, flush=True))
    print()
    print("\n".join(markdown(counted, args.reference or builds[-1][0])))


if __name__ == "__main__":
    main()
