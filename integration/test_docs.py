"""Docs that are tested: the shell blocks of the README, the companion quickstart, both deploy
guides and the control-plane guide run as written (integration/doc_blocks.py extracts them and
explains the markers), against the built `keyward`, the pinned Envoy and a mock provider; the
Kubernetes and Istio objects they apply are checked against the schemas; every measured figure in
them names its source. A doc that drifts from what the binaries do fails `make test`.

What the test changes in a command before running it, and nothing else, is REWRITES: the ports
(the docs use the demo's defaults, which may be taken on a shared machine; every doc names each
port it uses), the paths a reader's Envoy host has and this machine has not (the module and CA
under /etc/envoy, the native module's directory under /opt), Envoy's --base-id (one per Envoy on
a machine), and the release build (the test runs the build `make` made). Commands that need a cluster or a registry
are not run (OFFLINE); `kubectl apply -f FILE` validates FILE instead.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

import doc_blocks
import harness
from keyward_testkit.envoy import find_envoy
from keyward_testkit.net import free_port, http_ok
from mock_provider import MockProvider

# the docs render the Wasm build and the control plane: run once (pytest.ini)
pytestmark = pytest.mark.one_host

REPO = harness.REPO_ROOT
TESTED_DOCS = [REPO / "README.md", REPO / "companion" / "README.md", REPO / "docs" / "deploy-envoy.md",
               REPO / "docs" / "deploy-istio.md", REPO / "docs" / "control-plane.md"]
# every shell block of these is marked (run or skip); the configuration reference only has
# examples with made-up ids
MARKED_DOCS = [*TESTED_DOCS, REPO / "docs" / "configuration.md", REPO / "docs" / "native.md",
               REPO / "docs" / "bad-inputs.md", REPO / "soak" / "README.md"]
# every figure of these names its measurement. Not here: the measurement reports themselves
# (bench/README.md, docs/scale.md, soak/README.md, docs/bad-inputs.md) and docs/native.md, whose
# "Numbers" section is such a report that other pages cite.
FIGURE_DOCS = [*TESTED_DOCS, REPO / "docs" / "configuration.md", REPO / "SECURITY.md"]
COMMAND_TIMEOUT = 60.0
SENTINEL = "__doc_test_done__"

# (pattern, replacement): the only edits made to a command before it runs.
REWRITES = [
    (r"\b127\.0\.0\.1:7070\b", "127.0.0.1:{control_plane}"),
    (r"\b(127\.0\.0\.1|localhost):10000\b", r"\1:{listen}"),
    (r"\b127\.0\.0\.1:9901\b", "127.0.0.1:{admin}"),
    (r"\b127\.0\.0\.1:10001\b", "127.0.0.1:{upstream}"),
    (r"/etc/envoy/keyward\.wasm", "{wasm}"),
    (r"/etc/envoy/keyward-ca\.pem", "{ca}"),
    (r"/opt/envoy/modules", "{modules}"),  # where docs/native.md installs libkeyward.so
    (r"^cargo build --release -p keyward\b", "true"),
    # a distinct shared-memory id per Envoy on the machine (Envoy's --base-id)
    (r"^envoy ", "envoy --base-id {admin} "),
]
OFFLINE = ("kubectl", "oras", "skopeo", "istioctl")


def rewrite(command: str, values: dict) -> str:
    for pattern, replacement in REWRITES:
        command = re.sub(pattern, replacement.format(**values) if "{" in replacement else replacement,
                         command, flags=re.M)
    return command


# -- the shell a reader types into ----------------------------------------------------------------


class Shell:
    """One bash for one doc, fed command after command, as a reader pastes them; everything it
    starts in the background is in its process group and stopped with it."""

    def __init__(self, cwd: Path, bindir: Path):
        self.cwd = cwd
        self.count = 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")}
        env.update(PATH=f"{bindir}:{os.environ['PATH']}", HOME=str(cwd))
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=cwd, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def run(self, command: str) -> tuple[int, str, str]:
        """Exit status, stdout and stderr of one command."""
        self.count += 1
        out, err = self.cwd / f".doc-test.{self.count}.out", self.cwd / f".doc-test.{self.count}.err"
        self.proc.stdin.write(f"{{ {command}\n}} >{out} 2>{err}; echo \"{SENTINEL} $?\"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"no answer after {COMMAND_TIMEOUT:.0f} s: {command}")
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"the shell exited running: {command}")
            if line.startswith(SENTINEL):
                return int(line.split()[1]), out.read_text(), err.read_text()

    def log_of(self, count: int) -> str:
        """What command number `count` (and what it left running) wrote on stderr so far."""
        path = self.cwd / f".doc-test.{count}.err"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the shell and everything it started (one process group), SIGKILL to what
        is still there after 15 s."""
        group = self.proc.pid
        deadline = time.monotonic() + 15
        sig = signal.SIGTERM
        while True:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            sig = 0
            if time.monotonic() > deadline:
                os.killpg(group, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.1)
            self.proc.poll()


@dataclass
class DocRun:
    """Runs one doc's blocks in order; what happened is in `ran` and `not_run`."""

    doc: Path
    cwd: Path
    values: dict
    bindir: Path
    validate: Callable[[Path, str], None]  # `kubectl apply -f FILE`, offline
    ran: list[tuple[str, list[str]]] = field(default_factory=list)  # (command as run, output it showed)
    not_run: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.shell = Shell(self.cwd, self.bindir)

    def run_all(self) -> None:
        blocks = doc_blocks.blocks(self.doc)
        assert all(b.action for b in blocks), [b.where for b in blocks if not b.action]
        for block in blocks:
            if block.action == "run":
                for command in block.commands():
                    self.run_one(block, command)

    def run_one(self, block: doc_blocks.Block, command: doc_blocks.Command) -> None:
        where = f"{self.doc.name}:{command.line}"
        text = rewrite(command.text, self.values)
        program = text.split()[0]
        if program in OFFLINE:
            applied = re.search(r"\bapply\s+-f\s+(\S+)", text)
            if program == "kubectl" and applied:
                self.validate(self.cwd / applied.group(1), where)
                self.ran.append((text, [f"validated {applied.group(1)}"]))
            else:
                self.not_run.append(f"{where}: {program} (no cluster or registry here)")
            return
        deadline = time.monotonic() + (doc_blocks.RETRY_SECONDS if block.retry else 0)
        while True:
            status, out, err = self.shell.run(text)
            printed = out + err
            expects_error = any(line.startswith("keyward: error:") for line in command.expected)
            ok = (status != 0) == expects_error and doc_blocks.output_matches(command.expected, printed)
            if ok or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        assert ok, f"{where}: `{text}` exited {status}; expected {command.expected}; printed:\n{printed[-3000:]}"
        self.ran.append((text, command.expected))
        if text.rstrip().endswith("&"):
            self.wait_for_server(text, where)

    def wait_for_server(self, text: str, where: str) -> None:
        """A server started in the background: wait, as a reader would, until it serves (Envoy:
        admin /ready, and its first policy: until then it answers 503 `policy_unavailable`)."""
        deadline = time.monotonic() + 30
        if re.match(r"keyward\b.*\bserve\b", text):
            port = int(re.search(r"--listen \S+:(\d+)", text).group(1))
            ready = lambda: http_ok(port, "/healthz")  # noqa: E731
        elif text.startswith("envoy "):
            admin, listen = self.values["admin"], self.values["listen"]
            ready = lambda: http_ok(admin, "/ready") and _has_policy(listen)  # noqa: E731
        else:
            raise AssertionError(f"{where}: no readiness check for a background `{text.split()[0]}`")
        while not ready():
            assert time.monotonic() < deadline, \
                f"{where}: not serving after 30 s: {text}\n{self.shell.log_of(self.shell.count)}"
            time.sleep(0.1)

    def stop(self) -> None:
        self.shell.stop()

    def showed(self, command_part: str, answer_part: str = "") -> bool:
        """A command containing `command_part` ran and printed what the doc shows, which
        contains `answer_part`."""
        return any(command_part in text and any(answer_part in line for line in expected or [""])
                   for text, expected in self.ran)


def _has_policy(listen_port: int) -> bool:
    """Envoy answers with its first policy: a request without a key gets anything but 503."""
    try:
        answer = harness.http_request(listen_port, "POST", "/v1/chat/completions", body=b"{}")
    except OSError:
        return False
    return answer.status != 503


def run_doc(doc: Path, cwd: Path, values: dict, bindir: Path, validate) -> DocRun:
    """Every block of `doc`, in order, in one shell in `cwd`; the shell and what it started in
    the background are stopped after, whatever happened."""
    run = DocRun(doc, cwd, values, bindir, validate)
    try:
        run.run_all()
    finally:
        run.stop()
    return run


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bindir(tmp_path_factory, keyward_bin, wasm) -> Path:
    """`keyward` and `envoy` on the reader's PATH: the built binary and the pinned Envoy."""
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed: the docs' commands use it", pytrace=False)
    directory = tmp_path_factory.mktemp("doc-bin")
    (directory / "keyward").symlink_to(keyward_bin)
    (directory / "envoy").symlink_to(find_envoy())
    return directory


def _values(wasm: Path, ca: Path | str = "/nonexistent", modules: Path | str = "/nonexistent") -> dict:
    return {"control_plane": free_port(), "listen": free_port(), "admin": free_port(), "upstream": free_port(),
            "wasm": str(wasm), "ca": str(ca), "modules": str(modules)}


def _no_validation(path: Path, where: str) -> None:
    raise AssertionError(f"{where}: applies {path}, which nothing here validates")


# -- every block is marked; every figure names its source -----------------------------------------


@pytest.mark.parametrize("doc", MARKED_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shell_block_is_run_or_skipped_with_a_reason(doc):
    blocks = doc_blocks.blocks(doc)
    assert blocks, f"{doc}: no shell blocks found"
    unmarked = [f"{b.where} ({b.marker or 'no marker'})" for b in blocks if b.action is None]
    assert unmarked == [], "add <!-- doc-test: run --> or <!-- doc-test: skip reason=\"...\" --> before each"
    for block in blocks:
        block.commands()  # console blocks parse


@pytest.mark.parametrize("doc", FIGURE_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_figure_names_its_measurement(doc):
    missing = [f"{f.doc.name}:{f.line}: {f.text!r} in {f.context!r}" for f in doc_blocks.figures_without_source(doc)]
    assert missing == [], "\n".join(missing)


def test_the_extractor_catches_drift(tmp_path):
    """An unmarked block, an unknown marker, output that differs and a figure without a source
    are all caught."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Start-up takes about 3 s here.\n\n```sh\nkeyward init\n```\n\n<!-- doc-test: runn -->\n```console\n"
        "$ keyward init\nstore ready: …\n```\n\n<!-- doc-test: skip reason=\"no cluster\" -->\n```sh\nkubectl x\n```\n"
    )
    blocks = doc_blocks.blocks(doc)
    assert [b.action for b in blocks] == [None, None, "skip"]
    assert blocks[1].commands()[0].expected == ["store ready: …"]
    assert doc_blocks.output_matches(["store ready: …"], "store ready: ./keyward.db (policy version 1)\n")
    assert not doc_blocks.output_matches(["store ready: …"], "keyward: error: no store\n")
    assert [f.text for f in doc_blocks.figures_without_source(doc)] == ["3 s"]
    doc.write_text("Start-up takes 3 s (`make bench`). The poll interval is 1 s by default.\n")
    assert doc_blocks.figures_without_source(doc) == []


# -- the README ------------------------------------------------------------------------------------

# README's benchmark rows -> the comparison of the run `make bench` last wrote into bench/README.md
BENCH_ROWS = {
    "keyward accept vs no-op Wasm floor": "keyward accept vs no-op Wasm floor",
    "no-op filter + keyward's host calls vs no-op Wasm floor": "no-op + keyward's host calls vs no-op Wasm floor",
    "keyward accept vs no-op + keyward's host calls": "keyward accept vs no-op + keyward's host calls",
    "keyward 1M keys vs 1k keys": "keyward 1M keys vs 1k keys",
    "keyward metered, streamed chat vs no-op Wasm filter, same stream":
        "keyward metered stream vs no-op Wasm stream floor",
    "keyward accept vs native `api_key_auth`": "keyward accept vs native api_key_auth",
    "ext_authz (Envoy + service) vs keyward accept": "ext_authz (Envoy + service) vs keyward accept",
    "keyward 401 reply vs accept": "keyward reject (401) vs accept",
}


def test_readme_benchmark_ratios_are_the_benchmark_run():
    """Each ratio in the README's benchmark table is the one `make bench` wrote into
    bench/README.md, rounded as the README shows it: a new run that changes one fails here until
    the README follows."""
    bench = (REPO / "bench" / "README.md").read_text()
    block = bench.split("<!-- bench:latest:start -->", 1)[1].split("<!-- bench:latest:end -->", 1)[0]
    measured = dict(re.findall(r"^\| ([^|]+?) \| ([\d.]+) \|", block, flags=re.M))
    readme = (REPO / "README.md").read_text().split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    shown = dict(re.findall(r"^\| ([^|]+?) \| ([\d.]+) ?×", readme, flags=re.M))
    assert set(shown) == set(BENCH_ROWS), set(shown) ^ set(BENCH_ROWS)
    for row, ratio in shown.items():
        decimals = len(ratio.split(".")[1])
        assert round(float(measured[BENCH_ROWS[row]]), decimals) == float(ratio), (row, ratio, measured[BENCH_ROWS[row]])



def _readme_quickstart_answers() -> list[tuple[int, str | None]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    answers = []
    for row in re.findall(r"^\| (?!case|---)(.+?) \| (.+?) \|$", section, flags=re.M):
        found = re.match(r"(\d{3})(?:[ ;(].*?(?:`(\w+)`)?.*)?$", row[1])
        code = found.group(2) if found.group(2) and found.group(1) != "200" else None
        answers.append((int(found.group(1)), code))
    return answers


def test_readme_quickstart_table_is_what_make_run_answers():
    """The README's table of `make run`'s curl lines and answers is the demo's scenario list,
    which test_demo.py sends through the demo Envoy one by one."""
    sys.path.insert(0, str(REPO / "scripts"))
    import render_demo

    scenarios = sorted((s["expect_status"], s.get("expect_code")) for s in render_demo.scenarios())
    assert sorted(_readme_quickstart_answers(), key=lambda a: (a[0], a[1] or "")) == \
        sorted(scenarios, key=lambda a: (a[0], a[1] or ""))


def test_readme_runs_as_written(tmp_path, bindir, wasm):
    """The README's example curl line against the demo Envoy (rendered as `make run` renders it),
    and the control-plane walkthrough against the built `keyward`."""
    sys.path.insert(0, str(REPO / "scripts"))
    import render_demo

    values = _values(wasm)
    demo = harness.Envoy("doc-demo", tmp_path, render=lambda listen, admin, up: render_demo.render(listen, admin, up, wasm))
    demo.start()
    values.update(listen=demo.port, admin=demo.admin_port)
    (tmp_path / "work").mkdir()
    try:
        run = run_doc(REPO / "README.md", tmp_path / "work", values, bindir, _no_validation)
    finally:
        demo.stop()
    assert run.showed("demoRevoked", "key_revoked"), run.ran
    assert run.showed("keyward render envoy") and run.showed("keyward key revoke"), run.ran


# -- the companion quickstart ----------------------------------------------------------------------


def test_companion_quickstart_verbatim_enforces_the_key(tmp_path, bindir, wasm):
    """Issue #19's acceptance: following the companion quickstart as written, a disallowed model
    is refused, /healthz passes without a key, an allowed model reaches the provider (a mock), and
    a revoked key is refused; the doc's own curl lines and their shown answers say so."""
    values = _values(wasm)
    provider = MockProvider(values["upstream"]).start()
    try:
        run = run_doc(REPO / "companion" / "README.md", tmp_path, values, bindir, _no_validation)
    finally:
        provider.stop()
    assert run.showed('"model": "o3"', '"code":"model_not_allowed"'), run.ran
    assert run.showed("/healthz", "200"), run.ran
    assert run.showed('"model": "gpt-4o-mini"', '"choices"'), run.ran
    assert run.showed('Bearer $KEY', '"code":"key_revoked"'), run.ran
    models = [s.body.get("model") for s in provider.served()]
    assert "gpt-4o-mini" in models and "o3" not in models, models
    assert oct((tmp_path / "envoy.json").stat().st_mode & 0o777) == "0o600"


# -- the deploy guides and the control-plane guide -------------------------------------------------


@pytest.fixture(scope="module")
def validators(tmp_path_factory):
    """`kubectl apply -f FILE`, offline: every object in FILE against Istio's CRD validators or
    Kubernetes' schemas (the checks of test_istio.py and test_manifests.py)."""
    import test_istio
    import test_manifests

    models = test_istio.ISTIO_MODELS
    if not (models / "node_modules" / "@kubernetes-models" / "istio").is_dir():
        pytest.fail(f"@kubernetes-models/istio not installed under {models}: run `make tools`", pytrace=False)

    def validate(path: Path, where: str) -> None:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, f"{where}: {path} holds no object"
        istio = [d for d in docs if d["apiVersion"].split("/")[0].endswith("istio.io")]
        kubernetes = [d for d in docs if d not in istio]
        if istio:
            test_istio.check_schema(models, tmp_path_factory.mktemp("istio-validate"), istio)
        if kubernetes:
            result = test_manifests.validate(kubernetes)
            assert result.returncode == 0 and result.stdout.count("ok ") == len(kubernetes), \
                f"{where}: {result.stdout}{result.stderr}"

    return validate


def test_deploy_envoy_guide_runs_as_written(tmp_path, bindir, wasm, validators):
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "work").mkdir()
    run = run_doc(REPO / "docs" / "deploy-envoy.md", tmp_path / "work", _values(wasm, tmp_path / "ca.pem"), bindir,
                 validators)
    assert run.showed("--mode validate"), run.ran


def test_deploy_istio_guide_runs_as_written(tmp_path, bindir, wasm, validators):
    """Rendered from a control plane's store and key (the companion quickstart's first steps),
    in a checkout where `make oci` has run: target/keyward.wasm and target/oci."""
    import test_istio

    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keyward.wasm").symlink_to(wasm)
    test_istio.build_oci(wasm, tmp_path / "target")
    (tmp_path / "deploy").symlink_to(REPO / "deploy")
    for command in (["init"], ["secret", "signing-key", "--out", "signing.key"]):
        subprocess.run([str(bindir / "keyward"), *command], cwd=tmp_path, check=True, capture_output=True,
                       env={**os.environ, "KEYWARD_DB": str(tmp_path / "keyward.db")})
    run = run_doc(REPO / "docs" / "deploy-istio.md", tmp_path, _values(wasm), bindir, validators)
    assert run.showed("keyward render istio"), run.ran
    assert run.showed("apply -f keyward-istio.yaml", "validated"), run.ran
    assert run.showed("apply -f deploy/kubernetes/keyward-control-plane.yaml", "validated"), run.ran


def test_control_plane_guide_runs_as_written(tmp_path, bindir, wasm, validators):
    (tmp_path / "deploy").symlink_to(REPO / "deploy")
    run = run_doc(REPO / "docs" / "control-plane.md", tmp_path, _values(wasm), bindir, validators)
    assert run.showed("dataplane token revoke"), run.ran
    assert run.showed("apply -f deploy/kubernetes/keyward-control-plane.yaml", "validated"), run.ran


def test_native_guide_runs_as_written(tmp_path, bindir, wasm, native_module):
    """The native build's bootstrap, rendered and checked by Envoy with the module loaded, in the
    directory of a control plane (its public key and a data-plane token)."""
    from keyward_testkit.envoy_config import native_search_dir

    modules = native_search_dir(tmp_path, native_module)
    (tmp_path / "work").mkdir()
    for command in (["init"], ["secret", "signing-key", "--out", "signing.key"],
                    ["dataplane", "token", "create", "--name", "edge", "--out", "dataplane.token"]):
        subprocess.run([str(bindir / "keyward"), *command], cwd=tmp_path / "work", check=True, capture_output=True,
                       env={**os.environ, "KEYWARD_DB": str(tmp_path / "work" / "keyward.db")})
    run = run_doc(REPO / "docs" / "native.md", tmp_path / "work", _values(wasm, modules=modules), bindir,
                  _no_validation)
    assert run.showed("--mode validate"), run.ran


def test_soak_readme_runs_as_written(tmp_path, bindir, wasm):
    """The soak's help and its checkers' self-test, from a checkout (make soak itself is not run)."""
    for part in (".tools", "soak", "pylib", "scripts", "envoy"):
        (tmp_path / part).symlink_to(REPO / part)
    run = run_doc(REPO / "soak" / "README.md", tmp_path, _values(wasm), bindir, _no_validation)
    assert run.showed("--self-test"), run.ran
