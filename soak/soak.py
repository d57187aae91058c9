#!/usr/bin/env python3
"""`make soak`: a bounded fault and soak run of keyward on loopback (issue #5).

Starts the real control plane (`keyward serve`, seeded store in a temp dir), a fault-injecting
proxy in front of it, a local upstream that answers JSON and streams server-sent events, and
Envoy 1.40 with `--concurrency 2` and the filter in lease-mode sync. Then, for SOAK_SECONDS
(default 180), drives mixed traffic at a fixed rate while a chaos schedule changes the policy
every second, serves a tampered and a stale snapshot, fails and cuts the control plane, and kills
and restarts `keyward serve`. At the end it checks the pass criteria, prints the figures and
writes them to target/soak/report.json. Exit status: 0 pass, 1 a criterion failed, 2 setup error.

Python standard library only; run it with the project venv (`make soak` does), which provides
Envoy. See soak/README.md for the criteria and why each threshold is what it is.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "pylib"))
from faultproxy import FaultProxy, envelope_stamp  # noqa: E402
from keyward_testkit.control_plane import ControlPlane as KeywardControlPlane  # noqa: E402
from keyward_testkit.envoy import EnvoyExited, EnvoyLaunch, EnvoyNotReady  # noqa: E402
from keyward_testkit.envoy_config import native_search_dir  # noqa: E402
from keyward_testkit.net import LOOPBACK, free_port, http_ok  # noqa: E402
from keyward_testkit.signing import sign_envelope  # noqa: E402

BASE62 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
SIGNING_KEY_ID = "soak-1"
ADMIN_TOKEN_NAME = "soak"

# Outcome of a request for a key in a given state: (status, x-keyward-error).
OUTCOME = {
    "active": (200, None),
    "paused": (403, "key_paused"),
    "revoked": (401, "key_revoked"),
    "over_cap": (403, "spend_cap_exceeded"),
    "unknown": (401, "invalid_api_key"),
}

# Lines in Envoy's log that mean a Wasm VM, the native module (or Envoy) failed.
CRASH_PATTERNS = [
    r"panicked at",
    r"keyward: panic (?:at|in)",  # the native build's panic barrier (it failed closed, but a panic is a bug)
    r"Function: \S+ failed",
    r"Uncaught \w*Error",
    r"[Ww]asm VM (?:failed|crashed)",
    r"\bVM \S* ?(?:failed|crashed)",
    r"[Ff]ailed to (?:create|load|initialize|start) (?:the )?[Ww]asm",
    r"\[critical\]",
    r"Caught (?:Segmentation fault|Aborted|Bus error|Illegal instruction|Floating point)",
    r"Backtrace \(use",
]
# Where Envoy puts keyward's metrics: `wasmcustom.` for the Wasm build, `dynamicmodulescustom.`
# for the native build (--host native).
STATS_PREFIX = {"wasm": "wasmcustom", "native": "dynamicmodulescustom"}
# Wasm stats that must not move during the run (Envoy 1.40 names; `wasm.<plugin name>.*`).
WASM_FAILURE_STATS = ("vm_reload", "vm_reload_failure", "vm_reload_backoff")
WASM_STABLE_STATS = ("wasm.envoy.wasm.runtime.v8.created", "wasm.envoy.wasm.runtime.v8.active", "wasm.wasm_vm_count")


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rand62(n: int, rng=None) -> str:
    if rng is None:
        return "".join(secrets.choice(BASE62) for _ in range(n))
    return "".join(rng.choice(BASE62) for _ in range(n))


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def http_get(port: int, path: str, headers: Optional[dict] = None, timeout: float = 3.0) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------

SETPRIV = shutil.which("setpriv")


class Proc:
    """A child in its own process group (Ctrl-C reaches only the soak, which stops it in order).
    With util-linux's setpriv it also gets SIGTERM if the soak itself dies (spawn from the main
    thread only: the parent-death signal follows the spawning thread)."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, env=None, cwd=None):
        assert threading.current_thread() is threading.main_thread()
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self._log.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        self._log.flush()
        prefix = [SETPRIV, "--pdeathsig", "TERM", "--"] if SETPRIV else []
        self.p = subprocess.Popen(
            prefix + cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, cwd=cwd,
        )
        self.pid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def send_signal(self, sig: int) -> None:
        try:
            os.killpg(self.p.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> Optional[int]:
        if self.alive():
            self.send_signal(sig)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop in {timeout:.0f} s: SIGKILL")
                self.send_signal(signal.SIGKILL)
                self.p.wait(timeout=5)
        if not self._log.closed:
            self._log.close()
        return self.p.returncode


# ------------------------------------------------------------------------------------------------
# Keys and their timelines
# ------------------------------------------------------------------------------------------------


@dataclass
class Transition:
    state: str
    t_sent: float  # the admin request went out: the new state may be visible from here on
    t_done: float  # the admin API returned: the revocation time of the pass criteria
    deadline: float = 0.0  # from here on only `state` is acceptable (set by the analysis)
    action: str = ""


@dataclass
class Key:
    id: str
    plaintext: str
    secret: str  # ak: the part after the separator; vpx: the whole key
    fmt: str  # "ak" | "vpx"
    origin: str  # "seeded" | "minted"
    initial: str  # state when the run starts ("unknown" for keys minted during the run)
    transitions: list[Transition] = field(default_factory=list)
    minted_at: float = 0.0

    @property
    def stored_hash(self) -> str:
        return sha256_hex(self.secret)

    def headers(self, source: str = "auto") -> list[tuple[str, str]]:
        if source == "x-api-key" or (source == "auto" and self.fmt == "vpx"):
            return [("x-api-key", self.plaintext)]
        return [("authorization", f"Bearer {self.plaintext}")]

    def state_now(self) -> str:
        return self.transitions[-1].state if self.transitions else self.initial


def new_ak(key_id: Optional[str] = None) -> tuple[str, str, str]:
    """(id, plaintext, secret) of an `ak` key in the filter's default format."""
    key_id = key_id or ("soak" + rand62(8))
    secret = rand62(32)
    return key_id, f"ak_{key_id}.{secret}", secret


def new_vpx() -> tuple[str, str]:
    plaintext = "vpx_live_" + rand62(32)
    return "vpxsoak" + rand62(6), plaintext


class KeyBook:
    """Every key of the run, the pools the traffic classes draw from, and every credential sent
    (for the leak scan)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.keys: dict[str, Key] = {}
        self.valid: list[Key] = []
        self.revoked: list[Key] = []
        self.over_cap: list[Key] = []
        self.toggles: list[Key] = []
        self.recent: deque[Key] = deque(maxlen=8)
        self.sent_credentials: set[str] = set()
        self.uncertain: set[str] = set()

    def add(self, key: Key, pool: Optional[list]) -> Key:
        with self.lock:
            self.keys[key.id] = key
            if pool is not None:
                pool.append(key)
        return key

    def pick(self, rng: random.Random, pool: list, fmt: Optional[str] = None) -> Optional[Key]:
        with self.lock:
            choices = [k for k in pool if fmt is None or k.fmt == fmt]
            return rng.choice(choices) if choices else None

    def pick_recent(self, rng: random.Random) -> Optional[Key]:
        with self.lock:
            choices = [k for k in self.recent if k in self.valid]
            return rng.choice(choices) if choices else None

    def sent(self, credential: str) -> None:
        with self.lock:
            self.sent_credentials.add(credential)

    def real_keys(self) -> list[Key]:
        with self.lock:
            return list(self.keys.values())


# ------------------------------------------------------------------------------------------------
# Traffic classes
# ------------------------------------------------------------------------------------------------


@dataclass
class Planned:
    cls: str
    method: str
    path: str
    headers: list[tuple[str, str]]
    key: Optional[Key] = None  # the answer is judged against this key's timeline...
    expect: Optional[tuple[int, Optional[str]]] = None  # ...or is always this
    info_key_id: str = ""  # recorded for information when `expect` is fixed


@dataclass
class Answer:
    status: int
    code: Optional[str]
    upstream_key_id: Optional[str]
    credential_upstream: bool
    body: bytes
    headers_text: str
    stream_events: int = 0
    stream_done: bool = False
    stream_ttfb: Optional[float] = None


class TrafficClass:
    """One kind of request. `plan` picks the key and builds the request; `problems` looks at the
    answer beyond the status and code (which the analysis judges against the key's timeline).
    Classes on the "stream" pool run on their own workers and read the body incrementally.

    A later "metered streaming" class: subclass StreamingClass with its own path (a route that
    meters tokens), and override `problems` to check the usage events and the caller's spend
    (e.g. a follow-up request that must hit 403 spend_cap_exceeded once the cap is used up)."""

    name = "?"
    weight = 1
    pool = "short"

    def plan(self, rng: random.Random, book: KeyBook) -> Optional[Planned]:
        raise NotImplementedError

    def problems(self, planned: Planned, answer: Answer) -> list[str]:
        out = []
        if answer.credential_upstream:
            out.append("credential_reached_upstream")
        if 200 <= answer.status < 300 and planned.key is not None and answer.upstream_key_id != planned.key.id:
            out.append(f"identity_mismatch:{answer.upstream_key_id}")
        return out


class ValidClass(TrafficClass):
    def __init__(self, name, weight, fmt=None, source="auto"):
        self.name, self.weight, self.fmt, self.source = name, weight, fmt, source

    def plan(self, rng, book):
        key = book.pick(rng, book.valid, self.fmt)
        if key is None:
            return None
        book.sent(key.plaintext)
        return Planned(self.name, "POST", "/v1/chat/completions", key.headers(self.source), key=key)


class QueryParamClass(TrafficClass):
    """A key in a query parameter, on the route that opts in (`query_parameter: api_key`). It
    must never reach the upstream, allowed or not, nor any log. Mostly valid keys; also keys the
    filter refuses (over their cap, paused, revoked), whose plaintext is just as secret."""

    name, weight = "query_param", 4

    def plan(self, rng, book):
        pool = rng.choices([book.valid, book.over_cap, book.toggles, book.revoked], [7, 1, 1, 1])[0]
        key = book.pick(rng, pool, "ak")
        if key is None:
            return None
        book.sent(key.plaintext)
        return Planned(self.name, "GET", f"/v1/query/models?api_key={key.plaintext}&limit=5", [], key=key)


class PoolClass(TrafficClass):
    def __init__(self, name, weight, pool_name):
        self.name, self.weight, self.pool_name = name, weight, pool_name

    def plan(self, rng, book):
        key = book.pick(rng, getattr(book, self.pool_name))
        if key is None:
            return None
        book.sent(key.plaintext)
        return Planned(self.name, "POST", "/v1/chat/completions", key.headers(), key=key)


class RecentClass(TrafficClass):
    """Keys minted during the run, most recent first: creation propagation and rollbacks."""

    name, weight = "recent", 10

    def plan(self, rng, book):
        key = book.pick_recent(rng) or book.pick(rng, book.valid)
        if key is None:
            return None
        book.sent(key.plaintext)
        return Planned(self.name, "POST", "/v1/chat/completions", key.headers(), key=key)


class UnknownIdClass(TrafficClass):
    name, weight = "invalid_unknown_id", 6

    def plan(self, rng, book):
        if rng.random() < 0.7:
            _id, plaintext, _secret = new_ak("nope" + rand62(8, rng))
            headers = [("authorization", f"Bearer {plaintext}")]
        else:
            _id, plaintext = new_vpx()
            headers = [("x-api-key", plaintext)]
        book.sent(plaintext)
        return Planned(self.name, "POST", "/v1/chat/completions", headers, expect=(401, "invalid_api_key"))


class WrongSecretClass(TrafficClass):
    name, weight = "invalid_wrong_secret", 6

    def plan(self, rng, book):
        key = book.pick(rng, book.valid, "ak") or book.pick(rng, book.revoked, "ak")
        if key is None:
            return None
        plaintext = f"ak_{key.id}.{rand62(32)}"
        book.sent(plaintext)
        return Planned(self.name, "POST", "/v1/chat/completions", [("authorization", f"Bearer {plaintext}")],
                       expect=(401, "invalid_api_key"), info_key_id=key.id)


class MalformedClass(TrafficClass):
    name, weight = "invalid_malformed", 6

    def plan(self, rng, book):
        kind = rng.randrange(5)
        if kind == 0:  # someone else's key format
            value = "sk-proj-" + rand62(40, rng)
            headers = [("authorization", f"Bearer {value}")]
        elif kind == 1:  # no separator
            value = "ak_" + rand62(44, rng)
            headers = [("authorization", f"Bearer {value}")]
        elif kind == 2:  # secret too short
            value = f"ak_soak{rand62(8, rng)}.{rand62(8, rng)}"
            headers = [("authorization", f"Bearer {value}")]
        elif kind == 3:  # not an environment of the vpx format
            value = "vpx_prod_" + rand62(32, rng)
            headers = [("x-api-key", value)]
        else:  # not the Bearer scheme
            value = rand62(32, rng)
            encoded = base64.b64encode(f"user:{value}".encode()).decode()
            book.sent(encoded)
            headers = [("authorization", f"Basic {encoded}")]
        book.sent(value)
        return Planned(self.name, "POST", "/v1/chat/completions", headers, expect=(401, "malformed_api_key"))


class MissingClass(TrafficClass):
    name, weight = "invalid_missing", 2

    def plan(self, rng, book):
        return Planned(self.name, "GET", "/v1/models", [], expect=(401, "missing_api_key"))


class StreamingClass(TrafficClass):
    """Server-sent events through the filter: 20 events over about 1.5 s, read to the end."""

    name, pool = "stream", "stream"
    path = "/v1/stream/chat"
    expected_events = 20

    def plan(self, rng, book):
        key = book.pick(rng, book.valid)
        if key is None:
            return None
        book.sent(key.plaintext)
        return Planned(self.name, "POST", self.path, key.headers(), key=key)

    def problems(self, planned, answer):
        out = super().problems(planned, answer)
        if answer.status == 200 and (answer.stream_events != self.expected_events or not answer.stream_done):
            out.append(f"stream_incomplete:{answer.stream_events}/{self.expected_events}:done={answer.stream_done}")
        return out


SHORT_CLASSES: list[TrafficClass] = [
    ValidClass("valid_ak", 30, fmt="ak"),
    ValidClass("valid_vpx", 8, fmt="vpx"),
    QueryParamClass(),
    RecentClass(),
    PoolClass("revoked", 12, "revoked"),
    PoolClass("over_cap", 8, "over_cap"),
    PoolClass("paused_toggle", 8, "toggles"),
    UnknownIdClass(),
    WrongSecretClass(),
    MalformedClass(),
    MissingClass(),
]
STREAM_CLASSES: list[TrafficClass] = [StreamingClass()]
PROBE = ValidClass("probe", 0)


# ------------------------------------------------------------------------------------------------
# Load: fixed-rate workers, streaming workers, the prober
# ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    t_send: float
    t_done: float
    cls: str
    key_id: str
    status: int  # 0: transport error
    code: Optional[str]
    fixed: Optional[tuple[int, Optional[str]]]
    problems: tuple[str, ...] = ()


class Client:
    """One keep-alive connection, recycled every `recycle` requests (so that traffic spreads over
    both Envoy workers over time)."""

    def __init__(self, port: int, timeout: float, recycle: int):
        self.port, self.timeout, self.recycle = port, timeout, recycle
        self.conn: Optional[http.client.HTTPConnection] = None
        self.used = 0

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def send(self, planned: Planned, stream: bool) -> Answer:
        if self.conn is None or self.used >= self.recycle:
            self.close()
            self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout)
            self.used = 0
        self.used += 1
        body = b'{"model":"soak-model","messages":[{"role":"user","content":"hi"}]}' if planned.method == "POST" else None
        headers = {"host": "api.soak.local", "content-type": "application/json"}
        for k, v in planned.headers:
            headers[k] = v
        try:
            self.conn.request(planned.method, planned.path, body=body, headers=headers)
            resp = self.conn.getresponse()
            hdrs = [(k.lower(), v) for k, v in resp.getheaders()]
            get = dict(hdrs).get
            answer = Answer(
                status=resp.status, code=get("x-keyward-error"), upstream_key_id=get("x-upstream-key-id"),
                credential_upstream=get("x-upstream-credential-seen") == "yes", body=b"",
                headers_text="\n".join(f"{k}: {v}" for k, v in hdrs),
            )
            if stream and resp.status == 200:
                start = time.time()
                while True:
                    line = resp.readline()
                    if not line:
                        break
                    if answer.stream_ttfb is None:
                        answer.stream_ttfb = time.time() - start
                    if line.startswith(b"data: [DONE]"):
                        answer.stream_done = True
                    elif line.startswith(b"data: {"):
                        answer.stream_events += 1
            else:
                answer.body = resp.read()
            if resp.will_close:
                self.close()
            return answer
        except Exception:
            self.close()
            raise


class Recorder:
    def __init__(self):
        self.rows: list[Row] = []
        self.error_texts: list[bytes] = []  # bodies and headers of every non-2xx answer
        self.lock = threading.Lock()

    def record(self, planned: Planned, t_send: float, answer: Optional[Answer], error: Optional[str], cls_obj: TrafficClass):
        t_done = time.time()
        key_id = planned.key.id if planned.key else planned.info_key_id
        if answer is None:
            row = Row(t_send, t_done, planned.cls, key_id, 0, None, planned.expect, (f"transport:{error}",))
        else:
            problems = tuple(cls_obj.problems(planned, answer))
            row = Row(t_send, t_done, planned.cls, key_id, answer.status, answer.code, planned.expect, problems)
        with self.lock:
            self.rows.append(row)
            if answer is not None and not (200 <= answer.status < 300):
                self.error_texts.append(answer.headers_text.encode() + b"\n\n" + answer.body)


def run_one(client: Client, planned: Planned, cls_obj: TrafficClass, recorder: Recorder, stream: bool) -> None:
    t_send = time.time()
    try:
        answer = client.send(planned, stream)
        recorder.record(planned, t_send, answer, None, cls_obj)
    except Exception as exc:  # noqa: BLE001 - recorded as a transport error
        recorder.record(planned, t_send, None, type(exc).__name__, cls_obj)


class ShortWorker(threading.Thread):
    """Fixed rate: one request every `period` seconds, never catching up in bursts."""

    def __init__(self, idx, port, rate, book, recorder, stop: threading.Event, seed: int):
        super().__init__(name=f"short-{idx}", daemon=True)
        self.period = 1.0 / rate
        self.client = Client(port, timeout=5.0, recycle=150)
        self.book, self.recorder, self.stop_event = book, recorder, stop
        self.rng = random.Random(seed)
        self.classes = [c for c in SHORT_CLASSES if c.weight > 0]
        self.weights = [c.weight for c in self.classes]
        self.late = 0

    def run(self):
        next_t = time.time() + self.rng.random() * self.period
        while not self.stop_event.is_set():
            delay = next_t - time.time()
            if delay > 0:
                self.stop_event.wait(delay)
                if self.stop_event.is_set():
                    break
            elif delay < -0.5:
                self.late += 1
                next_t = time.time()
            next_t += self.period
            cls_obj = self.rng.choices(self.classes, self.weights)[0]
            planned = cls_obj.plan(self.rng, self.book)
            if planned is not None:
                run_one(self.client, planned, cls_obj, self.recorder, stream=False)
        self.client.close()


class StreamWorker(threading.Thread):
    def __init__(self, idx, port, book, recorder, stop: threading.Event, seed: int):
        super().__init__(name=f"stream-{idx}", daemon=True)
        self.client = Client(port, timeout=10.0, recycle=20)
        self.book, self.recorder, self.stop_event = book, recorder, stop
        self.rng = random.Random(seed)

    def run(self):
        self.stop_event.wait(self.rng.random())
        while not self.stop_event.is_set():
            cls_obj = self.rng.choice(STREAM_CLASSES)
            planned = cls_obj.plan(self.rng, self.book)
            if planned is None:
                self.stop_event.wait(0.2)
                continue
            run_one(self.client, planned, cls_obj, self.recorder, stream=True)
            self.stop_event.wait(0.1)
        self.client.close()


class Prober(threading.Thread):
    """After every policy change, sends the changed key every 50 ms over several connections
    until the change must have reached every worker (and a bit longer): the latency figures."""

    PERIOD = 0.05

    def __init__(self, port, book, recorder, stop: threading.Event, hold_s: float, fault_active: Callable[[], bool]):
        super().__init__(name="prober", daemon=True)
        self.fault_active = fault_active
        self.clients = [Client(port, timeout=5.0, recycle=40) for _ in range(6)]
        self.book, self.recorder, self.stop_event, self.hold_s = book, recorder, stop, hold_s
        self.jobs: list[tuple[Key, float]] = []
        self.lock = threading.Lock()
        self.turn = 0

    def watch(self, key: Key) -> None:
        with self.lock:
            self.jobs.append((key, time.time() + self.hold_s))

    def run(self):
        while not self.stop_event.is_set():
            start = time.time()
            with self.lock:
                if self.fault_active():  # a change cannot propagate now: keep watching it
                    self.jobs = [(k, max(until, start + self.hold_s)) for k, until in self.jobs]
                self.jobs = [(k, until) for k, until in self.jobs if until > start]
                jobs = list(self.jobs)
            for key, _until in jobs:
                client = self.clients[self.turn % len(self.clients)]
                self.turn += 1
                self.book.sent(key.plaintext)
                planned = Planned("probe", "POST", "/v1/chat/completions", key.headers(), key=key)
                run_one(client, planned, PROBE, self.recorder, stream=False)
            self.stop_event.wait(max(0.0, self.PERIOD - (time.time() - start)))
        for c in self.clients:
            c.close()


def parse_stats(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            try:
                out[name.strip()] = int(value.strip())
            except ValueError:
                pass
    return out


def read_rss_kib(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Sampler(threading.Thread):
    """keyward stats every second (policy version gauge, sync counters), Envoy RSS every 2 s."""

    def __init__(self, admin_port: int, envoy_pid: int, stop: threading.Event, prefix: str = "wasmcustom"):
        super().__init__(name="sampler", daemon=True)
        self.admin_port, self.envoy_pid, self.stop_event = admin_port, envoy_pid, stop
        self.prefix = prefix
        self.versions: list[tuple[float, int]] = []
        self.rss: list[tuple[float, int]] = []
        self.stats: list[tuple[float, dict]] = []
        self.errors = 0
        self.lock = threading.Lock()

    def latest(self) -> dict:
        with self.lock:
            return dict(self.stats[-1][1]) if self.stats else {}

    def sample_stats(self) -> Optional[dict]:
        try:
            status, _, body = http_get(self.admin_port, f"/stats?filter={self.prefix}%5C.keyward%5C.(policy%7Csync)", timeout=2)
            if status != 200:
                raise OSError(status)
        except OSError:
            self.errors += 1
            return None
        stats = parse_stats(body.decode())
        now = time.time()
        with self.lock:
            self.stats.append((now, stats))
            v = stats.get(f"{self.prefix}.keyward.policy.version")
            if v is not None:
                self.versions.append((now, v))
        return stats

    def run(self):
        n = 0
        while not self.stop_event.is_set():
            start = time.time()
            self.sample_stats()
            if n % 2 == 0:
                rss = read_rss_kib(self.envoy_pid)
                if rss is not None:
                    with self.lock:
                        self.rss.append((time.time(), rss))
            n += 1
            self.stop_event.wait(max(0.0, 1.0 - (time.time() - start)))


# ------------------------------------------------------------------------------------------------
# The control plane, the Envoy configuration
# ------------------------------------------------------------------------------------------------


class ControlPlane(KeywardControlPlane):
    """`keyward serve` under the soak's supervision (`Proc`: killed and restarted by the chaos)."""

    def __init__(self, keyward: Path, work: Path, out: Path, port: int):
        # keyward's own stderr (warnings) goes to the control-plane log, which the leak scan reads
        super().__init__(keyward, work, actor="soak", signing_key_id=SIGNING_KEY_ID, cli_log=out / "keyward.log")
        self.out, self.port = out, port
        self.supervised: Optional[Proc] = None
        self.token = ""
        self.signing_secret = ""
        self.starts = 0

    def init_secrets(self) -> None:
        self.create_secrets(admin_token_name=ADMIN_TOKEN_NAME)
        # The private key (PEM): it must never appear anywhere, the config dump included.
        self.signing_secret = self.signing_key_file.read_text()
        for line in self.admin_tokens_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                self.token = line.split(":", 1)[1] if ":" in line else line
        assert len(self.token) >= 32, "admin token not found"

    def start(self) -> None:
        self.starts += 1
        self.supervised = Proc("keyward serve", self.serve_command(self.port), self.out / "keyward.log", env=self.env)
        deadline = time.time() + 20
        while time.time() < deadline:
            if not self.supervised.alive():
                raise RuntimeError(f"keyward serve exited with {self.supervised.p.returncode}; see {self.out / 'keyward.log'}")
            try:
                if http_get(self.port, "/healthz", timeout=0.5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("keyward serve not healthy after 20 s")

    def kill(self) -> None:
        assert self.supervised is not None
        self.supervised.stop(timeout=5, sig=signal.SIGKILL)

    def admin(self, method: str, path: str, body: Optional[dict] = None, timeout: float = 5.0) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else b""
            conn.request(method, path, body=data, headers={
                "authorization": f"Bearer {self.token}", "content-type": "application/json"})
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, (json.loads(payload) if payload else {})
        finally:
            conn.close()

    def snapshot_bytes(self) -> bytes:
        status, _, body = http_get(self.port, "/v1/snapshot", timeout=5)
        if status != 200:
            raise RuntimeError(f"GET /v1/snapshot answered {status}")
        return body


def seed_keys(book: KeyBook) -> dict:
    """The seeded keys (plaintexts stay in memory) and the hashed snapshot that imports them."""
    records = []

    def ak(pool, state, label, **extra):
        key_id, plaintext, secret = new_ak()
        key = book.add(Key(key_id, plaintext, secret, "ak", "seeded", state), pool)
        rec = {"id": key_id, "secret_sha256": key.stored_hash, "project": extra.pop("project", "proj_soak"),
               "status": "revoked" if state == "revoked" else "active", "environment": "live", "label": label}
        rec.update(extra)
        records.append(rec)

    def vpx(pool, state, label):
        key_id, plaintext = new_vpx()
        key = book.add(Key(key_id, plaintext, plaintext, "vpx", "seeded", state), pool)
        records.append({"id": key_id, "key_sha256": key.stored_hash, "project": "proj_soak",
                        "status": "revoked" if state == "revoked" else "active", "environment": "live", "label": label})

    for i in range(10):
        ak(book.valid, "active", f"soak-valid-{i}")
    for i in range(3):
        vpx(book.valid, "active", f"soak-valid-vpx-{i}")
    for i in range(2):
        ak(book.toggles, "active", f"soak-toggle-{i}")
    for i in range(2):
        ak(book.revoked, "revoked", f"soak-revoked-{i}")
    vpx(book.revoked, "revoked", "soak-revoked-vpx")
    ak(book.over_cap, "over_cap", "soak-over-key-cap", spend_cap_microusd=1_000_000, spent_microusd=2_500_000)
    ak(book.over_cap, "over_cap", "soak-over-project-cap", project="proj_capped")
    return {
        "version": 1,
        "issued_at": int(time.time()),
        "projects": [
            {"id": "proj_soak", "org": "org_soak", "status": "active"},
            {"id": "proj_capped", "org": "org_soak", "status": "active",
             "spend_cap_microusd": 5_000_000, "spent_microusd": 5_000_000},
        ],
        "keys": records,
    }


ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    '%RESPONSE_FLAGS% %RESP(X-KEYWARD-ERROR)% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '"%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" '
    'key_id=%REQ(X-KEYWARD-KEY-ID)%\n'
)


def render_envoy(cp: ControlPlane, wasm: Optional[Path], listen: int, admin: int, upstream: int, proxy: int,
                 interval_ms: int, access_log: Path, plant_leak: bool) -> dict:
    """`keyward render envoy`, then switched to a lease-mode sync among the filter VMs (no
    bootstrap singleton), with an access log and a route that reads the key from the query.
    wasm None: the native build (`--host native`, whose rendered sync is lease-mode already)."""
    plugin = cp.work / "plugin.json"
    plugin.write_text(json.dumps({"routes": [
        {"name": "query", "match": {"route_name": "query"}, "query_parameter": "api_key"},
    ]}))
    build = ["--host", "native"] if wasm is None else ["--wasm", str(wasm)]
    rendered = cp.cli(
        "render", "envoy", *build, "--control-plane", f"{LOOPBACK}:{proxy}",
        *cp.trust_args(),
        "--listen", f"{LOOPBACK}:{listen}", "--admin", f"{LOOPBACK}:{admin}",
        "--upstream", f"{LOOPBACK}:{upstream}", "--interval-ms", str(interval_ms),
        "--route", "stream=/v1/stream/", "--route", "query=/v1/query/", "--plugin-config", str(plugin),
    ).stdout
    cfg = json.loads(rendered)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    keyward_filter = next(f for f in hcm["http_filters"] if f["name"] == "keyward")
    if wasm is None:
        conf_field = keyward_filter["typed_config"]["filter_config"]
    else:
        if not cfg.get("bootstrap_extensions"):
            raise RuntimeError("render envoy: expected a sync_service bootstrap extension to replace")
        conf_field = keyward_filter["typed_config"]["config"]["configuration"]
    del cfg["bootstrap_extensions"]
    conf = json.loads(conf_field["value"])
    conf["sync"]["poller"] = "lease"
    conf_field["value"] = json.dumps(conf, separators=(",", ":"))
    fmt = ACCESS_LOG_FORMAT
    if plant_leak:  # --plant-leak: prove that the leak scan finds a credential in the access log
        fmt = fmt.replace("\n", ' auth="%REQ(AUTHORIZATION)%"\n')
    hcm["access_log"] = [{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(access_log),
            "log_format": {"text_format_source": {"inline_string": fmt}},
        },
    }]
    return cfg


# ------------------------------------------------------------------------------------------------
# Analysis (pure functions: the self-test feeds them synthetic data)
# ------------------------------------------------------------------------------------------------


def extend_through_faults(t: float, window: float, faults: list[tuple[float, float]]) -> float:
    """The time from which a change made at `t` had a fair chance to propagate: a fault window
    (tampered or stale push, 5xx, control plane down) that overlaps [t, t + window] pushes it to
    the fault's end."""
    eff = t
    changed = True
    while changed:
        changed = False
        for start, end in faults:
            if start <= eff + window and end > eff:
                eff = end
                changed = True
    return eff


def set_deadlines(keys: list[Key], window: float, faults: list[tuple[float, float]]) -> None:
    for key in keys:
        for tr in key.transitions:
            tr.deadline = extend_through_faults(tr.t_done, window, faults) + window


def allowed_states(key: Key, t_send: float, t_done: float) -> set[str]:
    allowed = {key.initial}
    for tr in key.transitions:
        if t_done < tr.t_sent:
            break
        if t_send >= tr.deadline:
            allowed = {tr.state}
        else:
            allowed = allowed | {tr.state}
    return allowed


def judge(rows: list[Row], keys: dict[str, Key], uncertain: set[str]) -> tuple[list[dict], list[dict]]:
    """Mismatches (answers no state of the key in its propagation window explains) and late
    allows (2xx for a key whose revocation deadline had passed)."""
    mismatches, late_allowed = [], []
    for r in rows:
        if r.status == 0:
            continue
        got = (r.status, r.code if r.status != 200 else None)
        if r.fixed is not None:
            if got != r.fixed:
                mismatches.append({"t": r.t_send, "cls": r.cls, "key_id": r.key_id, "got": got, "want": [r.fixed]})
            continue
        key = keys.get(r.key_id)
        if key is None or r.key_id in uncertain:
            continue
        states = allowed_states(key, r.t_send, r.t_done)
        wanted = [OUTCOME[s] for s in sorted(states)]
        if got not in wanted:
            mismatches.append({"t": r.t_send, "cls": r.cls, "key_id": r.key_id, "got": got, "want": wanted,
                               "states": sorted(states)})
        if 200 <= r.status < 300 and states == {"revoked"}:
            late_allowed.append({"t": r.t_send, "cls": r.cls, "key_id": r.key_id})
    return mismatches, late_allowed


def revocation_latencies(rows: list[Row], keys: dict[str, Key]) -> list[dict]:
    """For each revocation made during the run: time from the admin API's answer to the first
    401 key_revoked after which that key never got a 2xx again."""
    by_key: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.key_id and r.fixed is None and r.status:
            by_key[r.key_id].append(r)
    out = []
    for key in keys.values():
        for tr in key.transitions:
            if tr.state != "revoked":
                continue
            after = sorted((r for r in by_key.get(key.id, []) if r.t_done >= tr.t_sent), key=lambda r: r.t_send)
            last_ok = max((r.t_send for r in after if 200 <= r.status < 300), default=None)
            first = next((r for r in after if r.status == 401 and r.code == "key_revoked"
                          and (last_ok is None or r.t_send > last_ok)), None)
            out.append({
                "key_id": key.id, "revoked_at": tr.t_done,
                "latency_s": None if first is None else round(first.t_send - tr.t_done, 3),
                "deadline_s": round(tr.deadline - tr.t_done, 3),
                "requests_after": len(after),
            })
    return out


def rss_slope_kib_per_min(samples: list[tuple[float, int]], warmup_fraction: float) -> Optional[float]:
    if len(samples) < 4:
        return None
    t0, t_end = samples[0][0], samples[-1][0]
    cut = t0 + (t_end - t0) * warmup_fraction
    pts = [(t - t0, v) for t, v in samples if t >= cut]
    if len(pts) < 3:
        return None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx * 60.0


def backwards_steps(series: list[tuple[float, int]]) -> list[tuple[float, int, int]]:
    out, high = [], None
    for t, v in series:
        if high is not None and v < high:
            out.append((t, high, v))
        high = v if high is None else max(high, v)
    return out


POLICY_LINE = re.compile(
    r"^\[[^\]]+\]\[(\d+)\]\[\w+\]\[(?:wasm|dynamic_modules)\].*keyward: (?:policy updated|configured(?: \(native\))?); "
    r"policy version (\d+)"
)


def per_vm_versions(envoy_log: str) -> dict[str, list[int]]:
    """The policy versions each Envoy thread's VM switched to, in order, from Envoy's log."""
    out: dict[str, list[int]] = defaultdict(list)
    for line in envoy_log.splitlines():
        m = POLICY_LINE.match(line)
        if m:
            out[m.group(1)].append(int(m.group(2)))
    return dict(out)


def crash_lines(envoy_log: str) -> list[str]:
    rx = re.compile("|".join(CRASH_PATTERNS))
    return [line for line in envoy_log.splitlines() if rx.search(line)][:20]


ALNUM_RUN = re.compile(rb"[A-Za-z0-9]{16,}")


def secret_parts(credentials: set[str]) -> set[bytes]:
    """What a leak scan looks for in a credential: every run of 16+ letters and digits in it
    (the secret of an ak key, the body of a vpx key, a foreign key's body, an admin token...).
    A credential that leaks anywhere leaks these."""
    parts = set()
    for c in credentials:
        parts.update(m.group() for m in ALNUM_RUN.finditer(c.encode()))
    return parts


def find_parts(haystack: bytes, parts: set[bytes]) -> set[bytes]:
    found: set[bytes] = set()
    lengths = sorted({len(p) for p in parts})
    for m in ALNUM_RUN.finditer(haystack):
        run = m.group()
        n = len(run)
        for length in lengths:
            if length > n:
                break
            for i in range(n - length + 1):
                piece = run[i:i + length]
                if piece in parts:
                    found.add(piece)
    return found


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    start: float
    end: Optional[float] = None
    note: str = ""


class Soak:
    def __init__(self, args):
        self.args = args
        self.native = args.host == "native"
        self.prefix = STATS_PREFIX[args.host]
        self.out: Path = args.out
        self.window = args.interval_ms / 1000.0 + 1.0 if args.window_s is None else args.window_s
        self.book = KeyBook()
        self.recorder = Recorder()
        self.stop_load = threading.Event()
        self.stop_sampler = threading.Event()
        self.procs: list[Proc] = []
        self.faults: list[Fault] = []
        self.events: list[dict] = []
        self.admin_errors: list[str] = []
        self.stale: Optional[tuple[bytes, tuple[int, int], float]] = None
        self.shots = {}
        self.counter_deltas: dict[str, dict] = {}
        self.cp: Optional[ControlPlane] = None
        self.proxy: Optional[FaultProxy] = None
        self.envoy: Optional[Proc] = None
        self.sampler: Optional[Sampler] = None
        self.prober: Optional[Prober] = None
        self.workers: list[threading.Thread] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="keyward-soak-"))
        self.toggle_index = 0
        self.change_index = 0
        self.minted = 0
        self.t0 = 0.0

    # -- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        a = self.args
        if self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True)
        build = (a.native_module, "make native") if self.native else (a.wasm, "make wasm")
        for path, what in ((a.keyward, "cargo build -p keyward"), build):
            if not Path(path).is_file():
                raise RuntimeError(f"{path} missing: {what} (make soak does)")
        ports = {name: free_port() for name in ("cp", "proxy", "upstream", "listen", "admin")}
        self.ports = ports
        log(f"work dir {self.tmp} (store, admin token, signing key), logs in {self.out}")

        cp = self.cp = ControlPlane(a.keyward, self.tmp, self.out, ports["cp"])
        cp.init_secrets()
        seed = seed_keys(self.book)
        (self.tmp / "seed-snapshot.json").write_text(json.dumps(seed))
        cp.cli("snapshot", "import", str(self.tmp / "seed-snapshot.json"))
        cp.start()
        self.procs.append(cp.supervised)

        self.procs.append(Proc("upstream", [sys.executable, str(HERE / "upstream.py"), "--port", str(ports["upstream"])],
                               self.out / "upstream.log"))
        self.proxy = FaultProxy(ports["proxy"], ports["cp"], self.out / "proxy.log").start()

        cfg = render_envoy(cp, None if self.native else Path(a.wasm).resolve(), ports["listen"], ports["admin"],
                           ports["upstream"], ports["proxy"], a.interval_ms, self.out / "access.log", a.plant_leak)
        config_path = self.tmp / "envoy.json"  # holds the data-plane token: stays in the temp dir
        config_path.write_text(json.dumps(cfg, indent=1))
        os.chmod(config_path, 0o600)
        launch = EnvoyLaunch(config_path, ports["admin"], concurrency=2)
        env = None
        if self.native:
            env = dict(os.environ)
            env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(native_search_dir(self.tmp, Path(a.native_module)))
        self.envoy = Proc("envoy", launch.command(), self.out / "envoy.log", env=env)
        self.procs.append(self.envoy)
        try:
            launch.wait_ready(self.envoy.p, 60, also=lambda: http_ok(ports["upstream"], "/healthz"), poll_s=0.1)
        except EnvoyExited as e:
            raise RuntimeError(f"envoy exited with {e.returncode}; see {self.out / 'envoy.log'}") from None
        except EnvoyNotReady:
            raise RuntimeError("envoy or the upstream not ready after 60 s") from None
        # Fail-closed until the first snapshot: wait until every seeded key is allowed on fresh
        # connections (so both workers), before any measured traffic.
        deadline = time.time() + 30
        while True:
            answers = set()
            for key in list(self.book.valid):
                for _ in range(2):
                    st, hd, _ = self._once(key)
                    answers.add((st, hd.get("x-keyward-error")))
            if answers == {(200, None)}:
                break
            if time.time() > deadline:
                raise RuntimeError(f"seeded keys not allowed after 30 s: {sorted(answers, key=str)}")
            time.sleep(0.2)
        log(f"ready: envoy :{ports['listen']} (admin :{ports['admin']}), keyward serve :{ports['cp']} "
            f"behind the fault proxy :{ports['proxy']}, upstream :{ports['upstream']}")

    def _once(self, key: Key) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(LOOPBACK, self.ports["listen"], timeout=5)
        try:
            hdrs = dict(key.headers())
            conn.request("GET", "/v1/models", headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    # -- chaos -----------------------------------------------------------------------------------

    def event(self, kind: str, **kw) -> None:
        e = {"t": round(time.time() - self.t0, 2), "kind": kind, **kw}
        self.events.append(e)
        if kind not in ("create", "revoke", "pause", "resume"):
            log(f"t+{e['t']:.0f}s {kind} {kw if kw else ''}")

    def _change(self, key: Key, action: str, state: str) -> None:
        t_sent = time.time()
        try:
            status, body = self.cp.admin("POST", f"/v1/keys/{key.id}/{action}")
        except OSError as exc:
            self.admin_errors.append(f"{action} {key.id}: {exc}")
            self.book.uncertain.add(key.id)
            return
        t_done = time.time()
        if status != 200 or body.get("status") != state:
            self.admin_errors.append(f"{action} {key.id}: {status} {body.get('error', body.get('status'))}")
            self.book.uncertain.add(key.id)
            return
        key.transitions.append(Transition(state, t_sent, t_done, action=action))
        self.event(action, key_id=key.id)
        self.prober.watch(key)

    def mint(self) -> None:
        self.minted += 1
        fmt = "vpx" if self.minted % 4 == 0 else "ak"
        body = {"project": "proj_soak", "label": f"soak-minted-{self.minted}"}
        if fmt == "vpx":
            body["format"] = "vpx"
        t_sent = time.time()
        try:
            status, created = self.cp.admin("POST", "/v1/keys", body)
        except OSError as exc:
            self.admin_errors.append(f"create: {exc}")
            return
        t_done = time.time()
        if status != 201 or "key" not in created:
            self.admin_errors.append(f"create: {status} {created.get('error')}")
            return
        plaintext = created["key"]
        secret = plaintext.split(".", 1)[1] if fmt == "ak" else plaintext
        key = Key(created["id"], plaintext, secret, fmt, "minted", "unknown", minted_at=t_done)
        key.transitions.append(Transition("active", t_sent, t_done, action="create"))
        with self.book.lock:
            self.book.keys[key.id] = key
            self.book.valid.append(key)
            self.book.recent.append(key)
        self.book.sent(plaintext)
        self.event("create", key_id=key.id)
        self.prober.watch(key)

    def revoke_oldest(self) -> None:
        with self.book.lock:
            if len(self.book.valid) <= 8:
                key = None
            else:
                key = self.book.valid.pop(0)
                self.book.revoked.append(key)
        if key is None:
            self.mint()
            return
        self._change(key, "revoke", "revoked")

    def toggle(self) -> None:
        key = self.book.toggles[self.toggle_index % len(self.book.toggles)]
        if key.state_now() == "paused":
            self._change(key, "resume", "active")
            self.toggle_index += 1
        else:
            self._change(key, "pause", "paused")

    def policy_change(self) -> None:
        step = self.change_index % 3 if self.args.changes == "mixed" else 2
        self.change_index += 1
        if step == 0:
            self.mint()
        elif step == 1:
            self.revoke_oldest()
        else:
            self.toggle()

    def stats_now(self) -> dict:
        try:
            status, _, body = http_get(self.ports["admin"], f"/stats?filter={self.prefix}%5C.keyward%5C.sync", timeout=2)
            return parse_stats(body.decode()) if status == 200 else {}
        except OSError:
            return {}

    def fault_tamper(self) -> None:
        """The current envelope with a revoked key switched back to active and issued_at moved on
        by one second: if the filter took it, that key would be allowed again."""
        body = self.cp.snapshot_bytes()
        with self.book.lock:
            victims = [k for k in self.book.revoked if k.state_now() == "revoked"]
        victim = victims[-1]
        rx = re.compile(rb'("id":"' + re.escape(victim.id.encode()) + rb'"[^{}]*?"status":)"revoked"')
        tampered, n = rx.subn(rb'\1"active" ', body, count=1)
        if n != 1:
            raise RuntimeError("tamper: victim key not found in the snapshot")
        version, issued = envelope_stamp(body)
        tampered = tampered.replace(b'"issued_at":%d' % issued, b'"issued_at":%d' % (issued + 1), 1)
        self._one_shot("tampered", tampered, f"key {victim.id} revoked -> active, issued_at +1, version {version}")

    def fault_record_stale(self) -> None:
        body = self.cp.snapshot_bytes()
        self.stale = (body, envelope_stamp(body), time.time())
        self.event("stale_recorded", stamp=list(self.stale[1]))

    def fault_stale(self) -> None:
        body, stamp, _ = self.stale
        if self.args.plant_rollback:
            # --plant-rollback: the old policy, validly re-signed under a version above every
            # real one. The filter must take it (it is signed and newer): the run must then fail
            # on the keys it rolls back.
            snap = json.loads(body)["snapshot"]
            snap["version"] = stamp[0] + 100_000
            snap["issued_at"] = int(time.time())
            body = sign_envelope(json.dumps(snap, separators=(",", ":")).encode(), SIGNING_KEY_ID,
                                 self.cp.signing_secret.encode())
            self._one_shot("stale", body, f"PLANTED ROLLBACK: version {stamp[0]} re-signed as {snap['version']}")
            return
        self._one_shot("stale", body, f"version {stamp[0]} recorded earlier")

    def plant_crash(self) -> None:
        # --plant-crash: SIGSEGV to Envoy, whose crash handler logs it: the VM check must fail
        self.event("planted_crash")
        self.envoy.send_signal(signal.SIGSEGV)

    def _one_shot(self, label: str, body: bytes, note: str) -> None:
        before = self.stats_now()
        shot = self.proxy.serve_once(body, label)
        fault = Fault(label, shot.armed_at, note=note)
        self.faults.append(fault)
        self.shots[label] = (shot, fault, before)
        self.event(f"serve_{label}", note=note)

    def finish_shots(self) -> None:
        for label, (shot, fault, before) in self.shots.items():
            if shot.served_at is not None and fault.end is None:
                fault.end = shot.served_at

    def fault_window_start(self, kind: str) -> None:
        if kind == "error":
            self.proxy.set_mode("error")
        elif kind == "down":
            self.proxy.set_mode("down")
        elif kind == "kill":
            self.cp.kill()
        self.faults.append(Fault(kind, time.time()))
        self.event(f"{kind}_start")

    def fault_window_end(self, kind: str) -> None:
        if kind in ("error", "down"):
            self.proxy.set_mode("pass")
        elif kind == "kill":
            self.cp.start()
            self.procs.append(self.cp.supervised)
        fault = next(f for f in reversed(self.faults) if f.kind == kind)
        fault.end = time.time()
        self.event(f"{kind}_end", lasted=round(fault.end - fault.start, 2))

    def chaos_schedule(self, duration: float) -> list[tuple[float, Callable[[], None], str]]:
        d = duration
        extra = [(0.9 * d, self.plant_crash, "planted crash")] if self.args.plant_crash else []
        return sorted(extra + [
            (0.08 * d, self.fault_record_stale, "record stale"),
            (0.20 * d, self.fault_tamper, "tamper"),
            (0.33 * d, self.fault_stale, "stale"),
            (0.44 * d, lambda: self.fault_window_start("error"), "5xx start"),
            (0.44 * d + 3, lambda: self.fault_window_end("error"), "5xx end"),
            (0.55 * d, lambda: self.fault_window_start("kill"), "kill"),
            (0.55 * d + 4, lambda: self.fault_window_end("kill"), "restart"),
            (0.72 * d, lambda: self.fault_window_start("down"), "down start"),
            (0.72 * d + 4, lambda: self.fault_window_end("down"), "down end"),
        ], key=lambda x: x[0])

    def cp_down(self) -> bool:
        return any(f.kind == "kill" and f.end is None for f in self.faults)

    # -- run -------------------------------------------------------------------------------------

    def run(self) -> dict:
        a = self.args
        self.setup()
        self.sampler = Sampler(self.ports["admin"], self.envoy.pid, self.stop_sampler, self.prefix)
        self.prober = Prober(self.ports["listen"], self.book, self.recorder, self.stop_load, hold_s=self.window + 1.5,
                             fault_active=lambda: any(f.end is None for f in self.faults))
        rate_each = a.rate / a.workers
        self.workers = [ShortWorker(i, self.ports["listen"], rate_each, self.book, self.recorder, self.stop_load, a.seed * 100 + i)
                        for i in range(a.workers)]
        self.workers += [StreamWorker(i, self.ports["listen"], self.book, self.recorder, self.stop_load, a.seed * 100 + 50 + i)
                         for i in range(a.stream_workers)]
        wasm_before = self.wasm_stats()
        self.t0 = time.time()
        self.sampler.start()
        self.prober.start()
        for w in self.workers:
            w.start()
        log(f"load: {a.rate:g} req/s over {a.workers} workers + {a.stream_workers} streaming workers + probes, "
            f"{a.seconds:g} s; policy change every second; revocation window {self.window:g} s")
        schedule = self.chaos_schedule(a.seconds)
        tick = 0
        while True:
            now = time.time()
            elapsed = now - self.t0
            if elapsed >= a.seconds:
                break
            while schedule and schedule[0][0] <= elapsed:
                _, action, _name = schedule.pop(0)
                action()
            self.finish_shots()
            if not self.cp_down():
                self.policy_change()
            if not self.envoy.alive():
                self.event("envoy_died", code=self.envoy.p.returncode)
                break
            tick += 1
            time.sleep(max(0.0, self.t0 + tick - time.time()))
        self.stop_load.set()
        for w in self.workers:
            w.join(timeout=15)
        self.prober.join(timeout=10)
        t_end = time.time()
        time.sleep(1.5)  # one more version sample after the last change
        self.finish_shots()
        self.stop_sampler.set()
        self.sampler.join(timeout=5)
        return self.finish(t_end, wasm_before)

    def wasm_stats(self) -> dict[str, int]:
        try:
            status, _, body = http_get(self.ports["admin"], "/stats?filter=%5Ewasm%5C.", timeout=3)
            return parse_stats(body.decode()) if status == 200 else {}
        except OSError:
            return {}

    # -- checks ----------------------------------------------------------------------------------

    def finish(self, t_end: float, wasm_before: dict) -> dict:
        a = self.args
        rows = sorted(self.recorder.rows, key=lambda r: r.t_send)
        criteria: dict[str, dict] = {}

        # Envoy still serves, final stats, then stop everything so that the logs are complete.
        # (a request without a key: the filter must still decide it, with a policy loaded)
        still_serving = None
        if self.envoy.alive():
            try:
                st, hd, _ = http_get(self.ports["listen"], "/v1/models", {"host": "api.soak.local"}, timeout=5)
                still_serving = (st, hd.get("x-keyward-error"))
            except OSError as exc:
                still_serving = str(exc)
        wasm_after = self.wasm_stats()
        admin_dumps = {}
        for path in ("/stats", "/config_dump", "/clusters", "/server_info"):
            try:
                admin_dumps[path] = http_get(self.ports["admin"], path, timeout=5)[2]
            except OSError:
                admin_dumps[path] = b""
        (self.out / "stats.txt").write_bytes(admin_dumps["/stats"])
        final_stats = parse_stats(admin_dumps["/stats"].decode(errors="replace"))
        envoy_alive_at_end = self.envoy.alive()
        envoy_rc = self.envoy.stop(timeout=15)
        for p in self.procs:
            if p is not self.envoy:
                p.stop()
        self.proxy.stop()

        # 1. no 5xx (503 policy_unavailable is only acceptable where a fail-closed case is expected:
        #    none here, a good snapshot is loaded before the load starts and is always held)
        five = [r for r in rows if r.status >= 500]
        transport = [r for r in rows if r.status == 0]
        criteria["no_5xx"] = {
            "pass": not five,
            "5xx": len(five),
            "503_policy_unavailable": sum(1 for r in five if r.status == 503 and r.code == "policy_unavailable"),
            "examples": [{"t": round(r.t_send - self.t0, 2), "cls": r.cls, "status": r.status, "code": r.code} for r in five[:5]],
        }
        criteria["no_transport_errors"] = {
            "pass": not transport, "count": len(transport),
            "examples": [{"t": round(r.t_send - self.t0, 2), "cls": r.cls, "error": r.problems} for r in transport[:5]],
        }

        # 2. decisions and revocations against each key's timeline
        fault_windows = [(f.start, f.end if f.end is not None else t_end) for f in self.faults]
        keys = {k.id: k for k in self.book.real_keys()}
        set_deadlines(list(keys.values()), self.window, fault_windows)
        mismatches, late = judge(rows, keys, self.book.uncertain)
        lat = revocation_latencies(rows, keys)
        measured = [x["latency_s"] for x in lat if x["latency_s"] is not None]
        clean = [x["latency_s"] for x in lat if x["latency_s"] is not None and x["deadline_s"] <= self.window + 0.001]
        unmeasured = [x for x in lat if x["latency_s"] is None]
        criteria["revocation"] = {
            "pass": not late and not unmeasured and (bool(lat) or a.changes != "mixed"),
            "window_s": self.window,
            "revocations": len(lat),
            "allowed_after_deadline": len(late),
            "latency_max_s": max(measured) if measured else None,
            "latency_p50_s": round(statistics.median(measured), 3) if measured else None,
            "outside_faults": {"revocations": len(clean), "latency_max_s": max(clean) if clean else None,
                               "latency_p50_s": round(statistics.median(clean), 3) if clean else None},
            "during_faults_deadline_extended": len(lat) - len(clean),
            "unmeasured": unmeasured[:5],
            "late_examples": [{**x, "t": round(x["t"] - self.t0, 2)} for x in late[:5]],
        }
        problems = Counter(p.split(":")[0] for r in rows for p in r.problems if not p.startswith("transport"))
        criteria["decisions"] = {
            "pass": not mismatches and not problems and not self.admin_errors,
            "mismatches": len(mismatches),
            "client_side_problems": dict(problems),
            "admin_errors": self.admin_errors[:5],
            "examples": [{**m, "t": round(m["t"] - self.t0, 2)} for m in mismatches[:8]],
        }

        # 3. no request decided by a torn or rejected snapshot
        sync_final = {k.split("keyward.sync.")[1]: v for k, v in final_stats.items() if "keyward.sync." in k}
        shots = {}
        for label, (shot, fault, before) in self.shots.items():
            reason = "bad_signature" if label == "tampered" else "stale_version"
            name = f"{self.prefix}.keyward.sync.rejected.{reason}"
            # the first sample after the bad body was served (plus a poll's slack)
            after = None
            if shot.served_at is not None:
                for t, stats in self.sampler.stats:
                    if t >= shot.served_at + 1.0:
                        after = stats.get(name)
                        break
            shots[label] = {"served": shot.served_at is not None, "counter": reason,
                            "before": before.get(name), "after": after,
                            "counted": shot.served_at is not None and after is not None and after > (before.get(name) or 0)}
        versions = self.sampler.versions
        back = backwards_steps(versions)
        envoy_log = (self.out / "envoy.log").read_text(errors="replace")
        per_vm = per_vm_versions(envoy_log)
        vm_back = {tid: backwards_steps([(i, v) for i, v in enumerate(seq)]) for tid, seq in per_vm.items()}
        vm_back = {k: v for k, v in vm_back.items() if v}
        stale_t = self.stale[2] if self.stale else None
        post_stale = {k.id for k in keys.values() if k.origin == "minted" and stale_t and k.transitions[0].t_sent > stale_t}
        rollbacks = []
        seen_ok: set[str] = set()
        for r in rows:
            # refused as unknown after it was accepted, and after its creation had to be
            # everywhere (a worker that has not followed yet answers invalid_api_key: not a
            # rollback)
            if r.key_id in post_stale and r.fixed is None:
                if 200 <= r.status < 300:
                    seen_ok.add(r.key_id)
                elif (r.status == 401 and r.code == "invalid_api_key" and r.key_id in seen_ok
                      and r.t_send >= keys[r.key_id].transitions[0].deadline):
                    rollbacks.append({"t": round(r.t_send - self.t0, 2), "key_id": r.key_id})
        criteria["snapshot_integrity"] = {
            "pass": all(s["counted"] for s in shots.values()) and len(shots) == 2 and not back and not vm_back
            and not rollbacks and len(set(v for _, v in versions)) > 1,
            "bad_pushes": shots,
            "sync_counters": sync_final,
            "version_gauge_backwards": [(round(t - self.t0, 2), hi, lo) for t, hi, lo in back[:5]],
            "per_vm_backwards": vm_back,
            "keys_minted_after_stale_version": len(post_stale),
            "refused_as_unknown_after_accepted": rollbacks[:5],
        }

        # 4. no VM crash (the native build has no VM: Envoy itself must live, its log stay clean)
        crashes = crash_lines(envoy_log)
        failure_stats = {k: v for k, v in wasm_after.items() if k.rsplit(".", 1)[-1] in WASM_FAILURE_STATS and v}
        moved = {k: (wasm_before.get(k), wasm_after.get(k)) for k in WASM_STABLE_STATS if wasm_before.get(k) != wasm_after.get(k)}
        criteria["no_vm_crash"] = {
            "pass": envoy_alive_at_end and still_serving == (401, "missing_api_key") and not crashes and not failure_stats and not moved
            and (self.native or bool(wasm_after)) and envoy_rc == 0,
            "build": self.args.host,
            "envoy_alive_at_end": envoy_alive_at_end,
            "final_request": still_serving,
            "envoy_exit_code_on_sigterm": envoy_rc,
            "crash_log_lines": crashes[:5],
            "wasm_failure_stats": failure_stats,
            "wasm_vm_stats_changed": moved,
            "wasm_stats_end": {k: v for k, v in wasm_after.items() if k in WASM_STABLE_STATS or "vm_reload" in k},
        }

        # 5. RSS
        slope = rss_slope_kib_per_min(self.sampler.rss, a.warmup)
        rss = self.sampler.rss
        criteria["rss_flat"] = {
            "pass": slope is not None and slope <= a.rss_max_kib_per_min,
            "slope_kib_per_min": None if slope is None else round(slope, 1),
            "threshold_kib_per_min": a.rss_max_kib_per_min,
            "samples": len(rss),
            "first_kib": rss[0][1] if rss else None,
            "after_warmup_kib": next((v for t, v in rss if t >= rss[0][0] + (rss[-1][0] - rss[0][0]) * a.warmup), None) if rss else None,
            "last_kib": rss[-1][1] if rss else None,
            "max_kib": max(v for _, v in rss) if rss else None,
        }
        (self.out / "rss.csv").write_text("t_s,rss_kib\n" + "".join(f"{t - self.t0:.1f},{v}\n" for t, v in rss))

        # 6. secrets never leak
        criteria["secrets"] = self.leak_scan(admin_dumps, rows)

        # figures
        by_code = Counter(f"{r.status} {r.code}" if r.code else str(r.status) for r in rows)
        by_class = Counter(r.cls for r in rows)
        duration = t_end - self.t0
        report = {
            "pass": all(c["pass"] for c in criteria.values()),
            "duration_s": round(duration, 1),
            "requests": len(rows),
            "requests_per_s": round(len(rows) / duration, 1),
            "by_code": dict(sorted(by_code.items(), key=lambda kv: -kv[1])),
            "by_class": dict(sorted(by_class.items(), key=lambda kv: -kv[1])),
            "late_ticks": sum(getattr(w, "late", 0) for w in self.workers),
            "policy_changes": sum(1 for e in self.events if e["kind"] in ("create", "revoke", "pause", "resume")),
            "keys_minted": self.minted,
            "snapshot_versions_seen": sorted(set(v for _, v in versions)),
            "versions_applied_per_vm": {tid: len(set(seq)) for tid, seq in per_vm.items()},
            "sync_rejections": {k: v for k, v in sync_final.items() if k.startswith("rejected.") and v},
            "proxy": {"polls": self.proxy.polls, "by_outcome": self.proxy.by_outcome},
            "faults": [{"kind": f.kind, "start_s": round(f.start - self.t0, 2),
                        "end_s": None if f.end is None else round(f.end - self.t0, 2), "note": f.note} for f in self.faults],
            "revocations": lat,
            "criteria": criteria,
            "settings": {"seconds": a.seconds, "rate": a.rate, "workers": a.workers, "stream_workers": a.stream_workers,
                         "interval_ms": a.interval_ms, "window_s": self.window, "changes": a.changes, "warmup": a.warmup,
                         "concurrency": 2, "poller": "lease", "classes_off": args_off(a)},
        }
        with open(self.out / "requests.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps({"t": round(r.t_send - self.t0, 3), "ms": round((r.t_done - r.t_send) * 1000, 1),
                                    "cls": r.cls, "key_id": r.key_id, "status": r.status, "code": r.code,
                                    "problems": list(r.problems)}) + "\n")
        (self.out / "events.json").write_text(json.dumps(self.events, indent=1))
        (self.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
        # our own outputs must not hold a secret either
        own = self.scan_sources({p.name: p.read_bytes() for p in self.out.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl", ".csv", ".txt")})
        if own:
            criteria["secrets"]["pass"] = False
            criteria["secrets"]["found_in_soak_outputs"] = own
            report["pass"] = False
            (self.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
        return report

    def needles(self) -> tuple[dict[bytes, str], set[bytes]]:
        """Every secret part to look for, named by what it belongs to (never the secret itself),
        and those the config dump may hold (the data-plane token: the configuration carries it;
        the signing key never)."""
        named: dict[bytes, str] = {}
        for key in self.book.real_keys():
            for part in secret_parts({key.plaintext}):
                named[part] = f"key {key.id} ({key.fmt}, {key.origin})"
        for part in secret_parts(self.book.sent_credentials):
            named.setdefault(part, "a credential sent by the traffic (invalid or malformed)")
        for part in secret_parts({self.cp.token}):
            named[part] = "the admin token"
        for part in secret_parts({self.cp.signing_secret}) - {b"BEGIN", b"PRIVATE"}:
            named[part] = "the snapshot signing key (private)"
        in_config = secret_parts({self.cp.dataplane_token()})
        for part in in_config:
            named[part] = "the data-plane token"
        return named, in_config

    def scan_sources(self, sources: dict[str, bytes], skip_signing_in: tuple[str, ...] = ()) -> list[dict]:
        """One entry per source with a hit: how many secrets, whose, and the first line that
        holds one, with every secret in it redacted."""
        named, signing = self.needles()
        parts = set(named)
        found = []
        for name, data in sources.items():
            hits = find_parts(data, parts)
            if name in skip_signing_in:
                hits -= signing
            if not hits:
                continue
            first = min(hits, key=lambda h: data.find(h))
            at = data.find(first)
            line = data[data.rfind(b"\n", 0, at) + 1: (data.find(b"\n", at) + 1 or len(data) + 1) - 1]
            for h in hits:
                line = line.replace(h, b"<SECRET>")
            owners = Counter(named[h].split(" (")[0] if named[h].startswith("key ") else named[h] for h in hits)
            found.append({"source": name, "secrets": len(hits), "whose": sorted(owners)[:8],
                          "example_redacted": line[:400].decode(errors="replace")})
        return found

    def leak_scan(self, admin_dumps: dict[str, bytes], rows: list[Row]) -> dict:
        store_bytes = b""
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.cp.db) + suffix)
            if p.exists():
                store_bytes += p.read_bytes()
        sources = {
            "envoy.log": (self.out / "envoy.log").read_bytes(),
            "access.log": (self.out / "access.log").read_bytes() if (self.out / "access.log").exists() else b"",
            "admin /stats": admin_dumps["/stats"],
            "admin /config_dump": admin_dumps["/config_dump"],
            "admin /clusters": admin_dumps["/clusters"],
            "admin /server_info": admin_dumps["/server_info"],
            "error bodies and headers": b"\n".join(self.recorder.error_texts),
            "keyward.log (serve stdout/stderr, CLI stderr)": (self.out / "keyward.log").read_bytes(),
            "proxy.log": (self.out / "proxy.log").read_bytes(),
            "upstream.log": (self.out / "upstream.log").read_bytes(),
            "store (keyward.db, -wal, -shm)": store_bytes,
        }
        found = self.scan_sources(sources, skip_signing_in=("admin /config_dump",))
        keys = self.book.real_keys()
        missing_hashes = [k.id for k in keys if k.stored_hash.encode() not in store_bytes]
        named, _ = self.needles()
        access_lines = sources["access.log"].count(b"\n")
        # a source that could not be read proves nothing: the scan is then incomplete
        empty = [name for name, data in sources.items() if not data]
        return {
            "pass": not found and not missing_hashes and not empty and access_lines > 0,
            "found": found[:20],
            "unread_sources": empty,
            "secrets_scanned": len(named),
            "credentials_sent": len(self.book.sent_credentials),
            "real_keys": len(keys),
            "store_hashes_present": len(keys) - len(missing_hashes),
            "store_hashes_missing": missing_hashes[:5],
            "sources": {k: len(v) for k, v in sources.items()},
            "access_log_lines": access_lines,
            "error_answers_scanned": len(self.recorder.error_texts),
        }

    # -- cleanup ---------------------------------------------------------------------------------

    def cleanup(self) -> None:
        self.stop_load.set()
        self.stop_sampler.set()
        for p in reversed(self.procs):
            try:
                p.stop(timeout=5)
            except Exception as exc:  # noqa: BLE001
                log(f"stopping {p.name}: {exc}")
        if self.proxy is not None:
            try:
                self.proxy.stop()
            except Exception:  # noqa: BLE001
                pass
        if self.args.keep_workdir:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def args_off(a) -> list[str]:
    return sorted(c.strip() for c in a.classes_off.split(",") if c.strip())


def print_report(report: dict, out: Path) -> None:
    c = report["criteria"]
    rv, rss, integ, sec = c["revocation"], c["rss_flat"], c["snapshot_integrity"], c["secrets"]
    print()
    print("=" * 78)
    print(f"keyward soak: {'PASS' if report['pass'] else 'FAIL'}   ({report['duration_s']} s of load)")
    print("=" * 78)
    print(f"requests            {report['requests']}  ({report['requests_per_s']} req/s; late ticks {report['late_ticks']})")
    print("by status and code  " + ", ".join(f"{k}: {v}" for k, v in report["by_code"].items()))
    print("by class            " + ", ".join(f"{k}: {v}" for k, v in report["by_class"].items()))
    print(f"policy changes      {report['policy_changes']} (keys minted {report['keys_minted']}); "
          f"versions seen {len(report['snapshot_versions_seen'])} "
          f"({report['snapshot_versions_seen'][:1]}..{report['snapshot_versions_seen'][-1:]})")
    clean = rv["outside_faults"]
    print(f"revocations         {rv['revocations']}; latency max {rv['latency_max_s']} s, p50 {rv['latency_p50_s']} s; "
          f"outside fault windows ({clean['revocations']}): max {clean['latency_max_s']} s, p50 {clean['latency_p50_s']} s "
          f"(window {rv['window_s']} s); allowed after the window: {rv['allowed_after_deadline']}")
    print(f"sync rejections     {report['sync_rejections']}  (all sync counters: {integ['sync_counters']})")
    print("faults              " + "; ".join(f"{f['kind']} {f['start_s']}..{f['end_s']} s" for f in report["faults"]))
    print(f"Envoy RSS           first {rss['first_kib']} KiB, after warm-up {rss['after_warmup_kib']} KiB, "
          f"last {rss['last_kib']} KiB, slope {rss['slope_kib_per_min']} KiB/min (limit {rss['threshold_kib_per_min']})")
    print(f"leak scan           {sec['secrets_scanned']} secret parts in {len(sec['sources'])} sources; "
          f"store hashes {sec['store_hashes_present']}/{sec['real_keys']}; found {len(sec['found'])}")
    print("-" * 78)
    for name, crit in c.items():
        detail = {k: v for k, v in crit.items() if k != "pass" and v not in (None, [], {}, 0)}
        text = json.dumps(detail, default=str)
        if len(text) > 300 and crit["pass"]:
            text = text[:300] + "..."
        print(f"{'PASS' if crit['pass'] else 'FAIL'}  {name:22s} {text}")
    print("-" * 78)
    print(f"report: {out / 'report.json'}  logs: {out}")


# ------------------------------------------------------------------------------------------------
# Self-test: every checker can fail
# ------------------------------------------------------------------------------------------------


def self_test() -> int:
    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)

    # timeline judgement: a 2xx 2 s after a revocation with a 1.5 s window is late
    k = Key("soakAAAA1111", "ak_soakAAAA1111." + "x" * 32, "x" * 32, "ak", "seeded", "active")
    k.transitions.append(Transition("revoked", 100.0, 100.1))
    set_deadlines([k], 1.5, [])
    rows = [Row(100.05, 100.06, "valid_ak", k.id, 200, None, None),
            Row(100.5, 100.51, "valid_ak", k.id, 401, "key_revoked", None),
            Row(102.0, 102.01, "valid_ak", k.id, 200, None, None)]
    mism, late = judge(rows, {k.id: k}, set())
    expect(len(late) == 1 and len(mism) == 1, "late allow after revocation not caught")
    expect(revocation_latencies(rows, {k.id: k})[0]["latency_s"] is None, "latency measured despite a later 2xx")
    # a fault window extends the deadline
    set_deadlines([k], 1.5, [(100.5, 103.0)])
    mism, late = judge(rows, {k.id: k}, set())
    expect(not late, "fault window did not extend the deadline")
    # rollback: a minted key refused as unknown after its window
    m = Key("soakBBBB2222", "p", "s", "ak", "minted", "unknown")
    m.transitions.append(Transition("active", 10.0, 10.1))
    set_deadlines([m], 1.5, [])
    mism, _ = judge([Row(20.0, 20.01, "recent", m.id, 401, "invalid_api_key", None)], {m.id: m}, set())
    expect(len(mism) == 1, "rollback (unknown after creation) not caught")
    # fixed expectation and 5xx
    mism, _ = judge([Row(1, 1.01, "invalid_unknown_id", "", 200, None, (401, "invalid_api_key"))], {}, set())
    expect(len(mism) == 1, "invalid key allowed not caught")
    # version gauge backwards, per VM too
    expect(backwards_steps([(1, 5), (2, 7), (3, 6)]) == [(3, 7, 6)], "gauge rollback not caught")
    log_text = ("[2026-01-01 00:00:00.000][11][info][wasm] [x] wasm log keyward keyward: keyward: policy updated; policy version 7 with 3 keys\n"
                "[2026-01-01 00:00:01.000][11][info][wasm] [x] wasm log keyward keyward: keyward: policy updated; policy version 6 with 3 keys\n")
    expect(per_vm_versions(log_text) == {"11": [7, 6]}, "per-VM versions not parsed")
    # crash lines
    expect(crash_lines("[..][12][error][wasm] Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"),
           "wasm function failure not caught")
    expect(crash_lines("wasm log keyward keyward: panicked at src/x.rs:1"), "panic not caught")
    expect(not crash_lines("[..][info][wasm] keyward sync: published policy version 3"), "false crash positive")
    # RSS slope
    grow = [(t * 2.0, 100_000 + int(t * 2.0 * 100)) for t in range(60)]  # 100 KiB/s = 6000 KiB/min
    s = rss_slope_kib_per_min(grow, 0.3)
    expect(s is not None and abs(s - 6000) < 1, f"slope wrong: {s}")
    # leak scan
    secret = rand62(32)
    parts = secret_parts({f"ak_soakCCCC3333.{secret}"})
    expect(find_parts(b"xx auth=Bearer ak_soakCCCC3333." + secret.encode() + b" yy", parts), "leak not found")
    expect(find_parts(b"prefix" + secret.encode() + b"suffix", parts), "leak inside a longer run not found")
    expect(not find_parts(sha256_hex(secret).encode(), parts), "hash mistaken for the secret")
    if failures:
        for f in failures:
            print(f"self-test FAIL: {f}")
        return 1
    print("self-test: every checker trips on synthetic bad data (OK)")
    return 0


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 180)),
                    help="load duration (env SOAK_SECONDS; default 180)")
    ap.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", 100)),
                    help="fixed rate of short requests per second, all workers together (env SOAK_RATE; default 100)")
    ap.add_argument("--workers", type=int, default=5, help="fixed-rate short-request workers")
    ap.add_argument("--stream-workers", type=int, default=4, help="workers streaming SSE back to back")
    ap.add_argument("--changes", choices=("mixed", "toggle"), default="mixed",
                    help="policy change every second: mint, revoke, pause/resume in turn (mixed), or only "
                         "pause/resume (toggle: the number of keys stays constant, to tell growth from a leak)")
    ap.add_argument("--interval-ms", type=int, default=500, help="sync poll interval of the filter")
    ap.add_argument("--window-s", type=float, default=None,
                    help="revocation window; default interval + 1 s (set it tiny to see the check trip)")
    ap.add_argument("--warmup", type=float, default=0.3, help="fraction of RSS samples left out of the slope")
    ap.add_argument("--rss-max-kib-per-min", type=float, default=float(os.environ.get("SOAK_RSS_MAX_KIB_PER_MIN", 512)),
                    help="fail above this RSS slope after warm-up (default 512 KiB/min; see soak/README.md)")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", 5)), help="traffic mix seed")
    ap.add_argument("--out", type=Path, default=REPO / "target" / "soak")
    ap.add_argument("--keyward", type=Path, default=REPO / "target" / "debug" / "keyward")
    ap.add_argument("--wasm", type=Path, default=Path(os.environ.get("KEYWARD_WASM", REPO / "target" / "keyward.wasm")))
    ap.add_argument("--host", choices=["wasm", "native"], default=os.environ.get("SOAK_HOST", "wasm"),
                    help="which build of the filter to soak: the Wasm module or the native dynamic module")
    ap.add_argument("--native-module", type=Path,
                    default=Path(os.environ.get("KEYWARD_NATIVE", REPO / "target" / "keyward.so")))
    ap.add_argument("--classes-off", default=os.environ.get("SOAK_CLASSES_OFF", ""),
                    help="comma-separated traffic classes to leave out, e.g. query_param (env SOAK_CLASSES_OFF)")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (store, token, signing key)")
    ap.add_argument("--plant-leak", action="store_true",
                    help="log the authorization header in the access log: the leak scan must fail")
    ap.add_argument("--plant-rollback", action="store_true",
                    help="serve the old snapshot validly re-signed as the newest: the integrity checks must fail")
    ap.add_argument("--plant-crash", action="store_true",
                    help="SIGSEGV Envoy at 90%% of the run: the VM crash check must fail")
    ap.add_argument("--self-test", action="store_true", help="check that every checker trips on bad data, then exit")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    off = {c.strip() for c in args.classes_off.split(",") if c.strip()}
    known = {c.name for c in SHORT_CLASSES + STREAM_CLASSES}
    if off - known:
        ap.error(f"--classes-off: unknown {sorted(off - known)}; classes: {sorted(known)}")
    for c in SHORT_CLASSES:
        if c.name in off:
            c.weight = 0
    STREAM_CLASSES[:] = [c for c in STREAM_CLASSES if c.name not in off]
    args.stream_workers = args.stream_workers if STREAM_CLASSES else 0
    if args.seconds < 30:
        ap.error("--seconds: at least 30 (the chaos schedule needs room)")

    soak = Soak(args)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (a background job)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = time.time()
    try:
        report = soak.run()
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}): stopping everything")
        return 130
    except Exception as exc:  # noqa: BLE001 - setup errors: say why, clean up, exit 2
        log(f"error: {type(exc).__name__}: {exc}")
        import traceback

        traceback.print_exc()
        return 2
    finally:
        soak.cleanup()
    print_report(report, args.out)
    print(f"wall time {time.time() - started:.0f} s")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
