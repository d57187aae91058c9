"""Pieces of Envoy bootstrap configuration that every generated config repeats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from .net import LOOPBACK

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STRING_VALUE_TYPE = "type.googleapis.com/google.protobuf.StringValue"


def socket_address(port: int, host: str = LOOPBACK) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


def static_cluster(name: str, port: int, host: str = LOOPBACK, connect_timeout: str = "1s") -> dict:
    """A cluster of one fixed endpoint."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(port, host)}}]}],
        },
    }


def static_bootstrap(admin_port: int, listeners: list[dict], clusters: list[dict]) -> dict:
    """A bootstrap of static listeners and clusters, its admin on loopback."""
    return {
        "admin": {"address": socket_address(admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def http_listener(name: str, port: int, connection_manager: dict) -> dict:
    """A loopback listener running one HTTP connection manager (its typed_config)."""
    return {
        "name": name,
        "address": socket_address(port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": connection_manager}]}
        ],
    }


HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def router_filter() -> dict:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }


def wasm_plugin(
    wasm: Path,
    configuration: Union[str, dict, None],
    name: str = "keyward",
    vm_id: Optional[str] = None,
    hold_headers: bool = False,
) -> dict:
    """A proxy-wasm plugin on V8 (the `config` of the HTTP filter or of a bootstrap WasmService).

    configuration: the plugin configuration (a dict is written as compact JSON); vm_id: plugins
    with the same vm_id share data (the name by default); hold_headers: the filter may pause in
    on_http_request_headers while it reads the body (Envoy >= 1.35)."""
    plugin: dict = {
        "name": name,
        "root_id": name,
        "vm_config": {"vm_id": vm_id or name, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(wasm)}}},
    }
    if hold_headers:
        plugin["allow_on_headers_stop_iteration"] = True
    if configuration is not None:
        value = configuration if isinstance(configuration, str) else json.dumps(configuration, separators=(",", ":"))
        plugin["configuration"] = {"@type": STRING_VALUE_TYPE, "value": value}
    return plugin


def wasm_filter(wasm: Path, configuration: Union[str, dict, None], **plugin) -> dict:
    """The HTTP filter running `wasm_plugin(wasm, configuration, **plugin)`."""
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {"@type": WASM_TYPE, "config": wasm_plugin(wasm, configuration, **plugin)},
    }


# Envoy looks a dynamic module up as lib<name>.so in ENVOY_DYNAMIC_MODULES_SEARCH_PATH.
NATIVE_MODULE_NAME = "keyward"
DYNAMIC_MODULE_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"


def native_filter(configuration: Union[str, dict], filter_name: str = "keyward") -> dict:
    """keyward's native build (an Envoy dynamic module) as an HTTP filter: the same plugin
    configuration as the Wasm build. The Envoy process needs ENVOY_DYNAMIC_MODULES_SEARCH_PATH
    pointing at a directory with lib<NATIVE_MODULE_NAME>.so (`native_search_dir`)."""
    value = configuration if isinstance(configuration, str) else json.dumps(configuration, separators=(",", ":"))
    return {
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": DYNAMIC_MODULE_FILTER_TYPE,
            "dynamic_module_config": {"name": NATIVE_MODULE_NAME},
            "filter_name": filter_name,
            "filter_config": {"@type": STRING_VALUE_TYPE, "value": value},
        },
    }


def native_search_dir(workdir: Path, module: Path) -> Path:
    """A directory holding lib<NATIVE_MODULE_NAME>.so -> module, for ENVOY_DYNAMIC_MODULES_SEARCH_PATH."""
    directory = Path(workdir) / "dynamic-modules"
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / f"lib{NATIVE_MODULE_NAME}.so"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(module).resolve())
    return directory
