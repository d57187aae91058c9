#!/usr/bin/env python3
"""Package target/keyward.wasm as an OCI artifact that Istio's WasmPlugin can pull.

Writes an OCI image layout directory (oci-layout, index.json, blobs/sha256/...) and the same
layout as a tarball. Stdlib only, and reproducible: no timestamps, fixed JSON key order, sorted
tar members with zero mtime/uid/gid, so the same module always gives the same manifest digest.

Format: the *oci* variant of the Wasm Artifact Image Specification (solo-io/wasm spec/spec.md),
which istio-agent's image fetcher (istio/istio pkg/wasm/imagefetcher.go) reads: an OCI image
manifest with exactly two layers, the runtime configuration
(`application/vnd.module.wasm.config.v1+json`) and the raw module
(`application/vnd.module.wasm.content.layer.v1+wasm`, so its digest is the module's sha256). The
manifest's own config is the empty JSON object `{}` (`application/vnd.unknown.config.v1+json`), as
`oras push` writes it.

Istio checks a WasmPlugin's `sha256` against the *manifest* digest for oci:// URLs (the module's
sha256 for http(s)://): `keyward render istio --oci-layout target/oci` reads it from here.

Push the directory with any OCI client, e.g.
    oras cp --from-oci-layout target/oci:latest registry.example.com/keyward:0.1.0
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_CONFIG_MEDIA_TYPE = "application/vnd.unknown.config.v1+json"
RUNTIME_CONFIG_MEDIA_TYPE = "application/vnd.module.wasm.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.module.wasm.content.layer.v1+wasm"
# The proxy-wasm ABI the module exports (proxy-wasm Rust SDK 0.2) and its root contexts.
RUNTIME_CONFIG = {"type": "envoy_proxy", "abiVersions": ["proxy_abi_version_0_2_1"],
                  "config": {"root_ids": ["keyward", "keyward_sync"]}}
LAYOUT = {"imageLayoutVersion": "1.0.0"}


def canonical(document) -> bytes:
    """JSON with sorted keys and no whitespace: the same document, the same bytes."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type: str, blob: bytes, annotations=None) -> dict:
    entry = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    if annotations:
        entry["annotations"] = annotations
    return entry


def build(wasm: bytes, tag: str, module_name: str = "keyward.wasm") -> dict:
    """All files of the layout, as {relative path: bytes}, plus the manifest digest."""
    config = b"{}"
    runtime_config = canonical(RUNTIME_CONFIG)
    layer = descriptor(LAYER_MEDIA_TYPE, wasm, {"org.opencontainers.image.title": module_name})
    manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": descriptor(MANIFEST_CONFIG_MEDIA_TYPE, config),
            "layers": [
                descriptor(RUNTIME_CONFIG_MEDIA_TYPE, runtime_config,
                           {"org.opencontainers.image.title": "runtime-config.json"}),
                layer,
            ],
        }
    )
    manifest_descriptor = descriptor(MANIFEST_MEDIA_TYPE, manifest, {"org.opencontainers.image.ref.name": tag})
    index = canonical({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [manifest_descriptor]})
    files = {"oci-layout": canonical(LAYOUT), "index.json": index}
    for blob in (config, runtime_config, wasm, manifest):
        files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob
    return {"files": files, "manifest_digest": manifest_descriptor["digest"], "layer_digest": layer["digest"]}


def write_layout(files: dict, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for name, data in sorted(files.items()):
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_tar(files: dict, tar_path: Path) -> None:
    directories = sorted({str(Path(name).parent) for name in files if "/" in name} | {"blobs"})
    tmp = tar_path.with_name(tar_path.name + ".tmp")
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in directories:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(normalized(info))
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(normalized(info), io.BytesIO(data))
    os.replace(tmp, tar_path)


def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wasm", type=Path, default=Path("target/keyward.wasm"))
    parser.add_argument("--out-dir", type=Path, default=Path("target/oci"))
    parser.add_argument("--tar", type=Path, default=Path("target/keyward-oci.tar"))
    parser.add_argument("--tag", default="latest", help="the layout's ref name (org.opencontainers.image.ref.name)")
    args = parser.parse_args(argv)
    try:
        wasm = args.wasm.read_bytes()
    except OSError as error:
        print(f"oci.py: cannot read {args.wasm}: {error}", file=sys.stderr)
        return 1
    if not wasm.startswith(b"\0asm"):
        print(f"oci.py: {args.wasm} is not a Wasm module", file=sys.stderr)
        return 1
    result = build(wasm, args.tag)
    write_layout(result["files"], args.out_dir)
    write_tar(result["files"], args.tar)
    print(json.dumps({"layout": str(args.out_dir), "tar": str(args.tar), "tag": args.tag,
                      "manifest_digest": result["manifest_digest"], "layer_digest": result["layer_digest"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
