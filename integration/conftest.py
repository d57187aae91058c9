"""pytest fixtures: one Envoy per plugin configuration, shared across the session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import world  # noqa: E402


@pytest.fixture(scope="session")
def envoy_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("envoy")


@pytest.fixture(scope="session")
def wasm() -> Path:
    path = harness.wasm_path()
    if not path.is_file():
        # a hard failure, not a skip: `make test` must never pass without the filter under test
        pytest.fail(f"keyward wasm not found at {path}; run `make wasm` (or set KEYWARD_WASM)", pytrace=False)
    return path


def _envoy(name, workdir, config, wasm):
    env = harness.Envoy(name, workdir, plugin_config=config, wasm=wasm)
    try:
        env.start()
        return env
    except harness.EnvoyStartError as e:
        error = str(e)
    pytest.fail(error, pytrace=False)  # outside the except: no chained traceback


@pytest.fixture(scope="session")
def plain_envoy(envoy_workdir):
    """Envoy without the keyward filter: checks the harness itself."""
    env = harness.Envoy("plain", envoy_workdir)
    env.start()
    yield env
    env.stop()


@pytest.fixture(scope="session")
def main_envoy(envoy_workdir, wasm):
    env = _envoy("enforce", envoy_workdir, world.enforce_config(), wasm)
    yield env
    env.stop()


@pytest.fixture(scope="session")
def shadow_envoy(envoy_workdir, wasm):
    env = _envoy("shadow", envoy_workdir, world.shadow_config(), wasm)
    yield env
    env.stop()


@pytest.fixture(scope="session")
def fail_closed_envoy(envoy_workdir, wasm):
    env = _envoy("fail-closed", envoy_workdir, world.no_policy_config(fail_open=False), wasm)
    yield env
    env.stop()


@pytest.fixture(scope="session")
def fail_open_envoy(envoy_workdir, wasm):
    env = _envoy("fail-open", envoy_workdir, world.no_policy_config(fail_open=True), wasm)
    yield env
    env.stop()


@pytest.fixture(scope="session")
def stale_envoy(envoy_workdir, wasm):
    env = _envoy("stale", envoy_workdir, world.stale_policy_config(), wasm)
    yield env
    env.stop()


@pytest.fixture(scope="session")
def alt_envoy(envoy_workdir, wasm):
    env = _envoy("alt", envoy_workdir, world.alt_config(), wasm)
    yield env
    env.stop()


@pytest.fixture(scope="session")
def bypass_world(tmp_path_factory, envoy_workdir, wasm):
    """The bypass battery's control plane, keys and Envoys (integration/bypass_world.py)."""
    import bypass_world as bw

    world = None
    try:
        world = bw.BypassWorld(tmp_path_factory.mktemp("bypass"), envoy_workdir)
        world.start()
    except Exception as e:  # noqa: BLE001 - any failure to build the world fails the tests loudly
        if world is not None:
            world.stop()
        error = f"the bypass battery's world did not start: {e}"
    else:
        yield world
        world.stop()
        return
    pytest.fail(error, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        used = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, harness.Envoy)]
        for env in used:
            report.sections.append((f"envoy {env.name} log ({env.log_path}, tail)", env.log_tail(80)))
