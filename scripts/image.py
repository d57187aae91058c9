#!/usr/bin/env python3
"""Package the static `keyward` binary as an OCI container image, without a container daemon.

Writes an OCI image layout directory (oci-layout, index.json, blobs/sha256/...) and the same
layout as a tarball. One layer on an empty base: the binary at /usr/local/bin/keyward, passwd and
group entries for the unprivileged user 65532 (`keyward`), and its working directory
/var/lib/keyward. Stdlib only, and reproducible: fixed times (SOURCE_DATE_EPOCH, default 0),
sorted members, zero uid/gid on files, gzip without a time stamp, canonical JSON; the same binary
always gives the same image digest.

Push it with any OCI client, e.g.
    skopeo copy oci:target/keyward-image:0.1.0 docker://registry.example.com/keyward-control-plane:0.1.0
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from datetime import datetime, timezone
from pathlib import Path

UID = GID = 65532
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


def canonical(document) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type: str, blob: bytes, annotations=None) -> dict:
    entry = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    if annotations:
        entry["annotations"] = annotations
    return entry


def layer_tar(binary: bytes, mtime: int) -> bytes:
    """The root file system, as an uncompressed tar with fixed metadata."""
    entries = [
        ("etc/", None, 0o755, 0),
        ("etc/group", f"root:x:0:\nkeyward:x:{GID}:\n".encode(), 0o644, 0),
        ("etc/passwd", f"root:x:0:0:root:/root:/sbin/nologin\n"
                       f"keyward:x:{UID}:{GID}:keyward:/var/lib/keyward:/sbin/nologin\n".encode(), 0o644, 0),
        ("tmp/", None, 0o1777, 0),
        ("usr/", None, 0o755, 0),
        ("usr/local/", None, 0o755, 0),
        ("usr/local/bin/", None, 0o755, 0),
        ("usr/local/bin/keyward", binary, 0o755, 0),
        ("var/", None, 0o755, 0),
        ("var/lib/", None, 0o755, 0),
        ("var/lib/keyward/", None, 0o700, UID),
    ]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode, owner in sorted(entries):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mode, info.mtime = mode, mtime
            info.uid = info.gid = owner
            info.uname = info.gname = ""
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def build(binary: bytes, tag: str, version: str, mtime: int) -> tuple[dict, str]:
    """All files of the layout, as {relative path: bytes}, and the manifest digest."""
    tar = layer_tar(binary, mtime)
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(tar)
    layer = compressed.getvalue()
    created = datetime.fromtimestamp(mtime, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = canonical({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{UID}:{GID}",
            "Entrypoint": ["/usr/local/bin/keyward"],
            "Cmd": ["serve", "--listen", "0.0.0.0:7070", "--allow-non-loopback"],
            "Env": ["KEYWARD_DB=/var/lib/keyward/keyward.db"],
            "WorkingDir": "/var/lib/keyward",
            "ExposedPorts": {"7070/tcp": {}},
            "Labels": {"org.opencontainers.image.title": "keyward-control-plane",
                       "org.opencontainers.image.version": version},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "history": [{"created": created, "created_by": "scripts/image.py"}],
    })
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, config),
        "layers": [descriptor(LAYER_MEDIA_TYPE, layer)],
        "annotations": {"org.opencontainers.image.version": version},
    })
    index = canonical({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [descriptor(MANIFEST_MEDIA_TYPE, manifest, {"org.opencontainers.image.ref.name": tag})],
    })
    files = {"oci-layout": canonical({"imageLayoutVersion": "1.0.0"}), "index.json": index}
    for blob in (layer, config, manifest):
        files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob
    return files, "sha256:" + hashlib.sha256(manifest).hexdigest()


def write(files: dict, out_dir: Path, tar_path: Path, mtime: int) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for name, data in files.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, mtime
            tar.addfile(info, io.BytesIO(files[name]))


def check_static(binary: Path) -> None:
    """A binary on an empty base must need no dynamic loader: no PT_INTERP program header."""
    data = binary.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        sys.exit(f"{binary} is not a 64-bit little-endian ELF binary")
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    for index in range(phnum):
        start = phoff + index * phentsize
        if int.from_bytes(data[start:start + 4], "little") == 3:  # PT_INTERP
            sys.exit(f"{binary} is dynamically linked: build it for x86_64-unknown-linux-musl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True, type=Path)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--tar", required=True, type=Path)
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--version", default="0.1.0")
    args = parser.parse_args()
    check_static(args.binary)
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    files, digest = build(args.binary.read_bytes(), args.tag, args.version, mtime)
    write(files, args.out_dir, args.tar, mtime)
    print(f"{args.out_dir} ({args.tar}): {args.tag} {digest}")


if __name__ == "__main__":
    main()
