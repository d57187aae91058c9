"""The control plane's container image (scripts/image.py, `make image`): a reproducible OCI image
layout, built without a container daemon. Checked on a stand-in binary so that `make test` does
not pay for a static release build; `make image` packages the real one with the same code."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import tarfile
from pathlib import Path

import pytest

# the control plane image, no filter: not run again on the native pass (pytest.ini)
pytestmark = pytest.mark.one_host

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("image", REPO / "scripts" / "image.py")
image = importlib.util.module_from_spec(spec)
spec.loader.exec_module(image)

BINARY = b"\x7fELF" + bytes(range(256)) * 64


def blob(files: dict, descriptor: dict) -> bytes:
    data = files["blobs/sha256/" + descriptor["digest"].split(":", 1)[1]]
    assert hashlib.sha256(data).hexdigest() == descriptor["digest"].split(":", 1)[1]
    assert len(data) == descriptor["size"]
    return data


def test_the_same_binary_gives_the_same_image_and_another_binary_another(tmp_path):
    first, digest = image.build(BINARY, "0.1.0", "0.1.0", 0)
    again, digest_again = image.build(BINARY, "0.1.0", "0.1.0", 0)
    assert first == again and digest == digest_again
    _, other = image.build(BINARY + b"x", "0.1.0", "0.1.0", 0)
    assert other != digest
    # Written twice, the tarball is the same bytes too.
    image.write(first, tmp_path / "a", tmp_path / "a.tar", 0)
    image.write(again, tmp_path / "b", tmp_path / "b.tar", 0)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert json.loads((tmp_path / "a" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


def test_the_image_runs_keyward_unprivileged_from_one_layer():
    files, digest = image.build(BINARY, "0.1.0", "0.1.0", 0)
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "0.1.0"
    manifest_bytes = blob(files, entry)
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == digest
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    config = json.loads(blob(files, manifest["config"]))
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/keyward"]
    assert config["config"]["Cmd"][0] == "serve"
    (layer_descriptor,) = manifest["layers"]
    assert layer_descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    layer = gzip.decompress(blob(files, layer_descriptor))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        binary = members["usr/local/bin/keyward"]
        assert tar.extractfile(binary).read() == BINARY
        assert binary.mode == 0o755 and binary.uid == 0
        assert all(m.mtime == 0 for m in members.values())
        home = members["var/lib/keyward"]
        assert home.isdir() and home.uid == 65532 and home.mode == 0o700
        passwd = tar.extractfile(members["etc/passwd"]).read().decode()
        assert "keyward:x:65532:65532:" in passwd


def test_a_dynamically_linked_binary_is_refused():
    """The base is empty: a binary that needs a loader would not start there."""
    import os
    import pytest

    dynamic = Path(os.environ.get("KEYWARD_BIN", REPO / "target" / "debug" / "keyward"))
    with pytest.raises(SystemExit, match="dynamically linked"):
        image.check_static(dynamic)
