"""pytest fixtures: one Envoy per plugin configuration, shared across the session."""

from __future__ import annotations

from pathlib import Path

import pytest

import harness  # pytest.ini puts this directory and ../pylib (keyward_testkit) on sys.path
import world


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
def keyward_bin() -> Path:
    """The `keyward` command; a hard failure when it is not built."""
    if not harness.KEYWARD_BIN.is_file():
        pytest.fail(f"{harness.KEYWARD_BIN} not found: run `cargo build -p keyward` (or set KEYWARD_BIN)", pytrace=False)
    return harness.KEYWARD_BIN


@pytest.fixture(scope="session")
def native_module() -> Path:
    path = harness.native_path()
    if not path.is_file():
        # a hard failure, not a skip, as for the wasm
        pytest.fail(f"keyward native module not found at {path}; run `make native` (or set KEYWARD_NATIVE)", pytrace=False)
    return path


def _envoy(name, workdir, config, wasm, host=None, native=None):
    """An Envoy with the keyward filter; host None: the build under test (KEYWARD_HOST)."""
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


def _session_envoy(fixture_name: str, envoy_name: str, config):
    """A session fixture: one Envoy running `config()`, shared by every test that names it."""

    @pytest.fixture(scope="session", name=fixture_name)
    def fixture(envoy_workdir, wasm):
        env = _envoy(envoy_name, envoy_workdir, config(), wasm)
        yield env
        env.stop()

    return fixture


main_envoy = _session_envoy("main_envoy", "enforce", world.enforce_config)
shadow_envoy = _session_envoy("shadow_envoy", "shadow", world.shadow_config)
fail_closed_envoy = _session_envoy("fail_closed_envoy", "fail-closed", lambda: world.no_policy_config(fail_open=False))
fail_open_envoy = _session_envoy("fail_open_envoy", "fail-open", lambda: world.no_policy_config(fail_open=True))
stale_envoy = _session_envoy("stale_envoy", "stale", world.stale_policy_config)
alt_envoy = _session_envoy("alt_envoy", "alt", world.alt_config)


def _enforce_envoy_on(host: str):
    """The enforce world on one build, whichever build the suite runs against: the same Envoy
    as `main_envoy` when that build is the one under test."""

    @pytest.fixture(scope="session", name=f"{host}_envoy")
    def fixture(request, envoy_workdir):
        if harness.default_host() == host:
            yield request.getfixturevalue("main_envoy")
            return
        wasm = request.getfixturevalue("wasm") if host == "wasm" else None
        native = request.getfixturevalue("native_module") if host == "native" else None
        env = _envoy(f"enforce-{host}", envoy_workdir, world.enforce_config(), wasm, host=host, native=native)
        yield env
        env.stop()

    return fixture


wasm_envoy = _enforce_envoy_on("wasm")
native_envoy = _enforce_envoy_on("native")


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
