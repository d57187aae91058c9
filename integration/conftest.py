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


@pytest.fixture(scope="session")
def native_module() -> Path:
    path = harness.native_path()
    if not path.is_file():
        # a hard failure, not a skip, as for the wasm
        pytest.fail(f"keyward native module not found at {path}; run `make native` (or set KEYWARD_NATIVE)", pytrace=False)
    return path


def _envoy(name, workdir, config, wasm, host="wasm", native=None):
    env = harness.Envoy(name, workdir, plugin_config=config, wasm=wasm, host=host, native=native)
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
def native_envoy(envoy_workdir, native_module):
    """The enforce world on the native build (the Envoy dynamic module)."""
    env = _envoy("enforce-native", envoy_workdir, world.enforce_config(), None, host="native", native=native_module)
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        used = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, harness.Envoy)]
        for env in used:
            report.sections.append((f"envoy {env.name} log ({env.log_path}, tail)", env.log_tail(80)))
