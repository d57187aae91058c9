//! The module's sha256 for a `WasmPlugin`: from the module file, or checked against an OCI
//! image layout (the *oci* variant of the Wasm Artifact Image Specification).

use super::*;

pub(super) const WASM_URL_SCHEMES: [&str; 4] = ["oci://", "file://", "http://", "https://"];
/// The *oci* variant of the Wasm Artifact Image Specification, which istio-agent reads: two
/// layers, the runtime configuration and the raw module (written by `scripts/oci.py`).
pub const OCI_WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
pub const OCI_RUNTIME_CONFIG_LAYER: &str = "application/vnd.module.wasm.config.v1+json";

pub(super) fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(keyward_engine::hash::sha256(bytes))
}

pub(super) fn layout_error(dir: &Path, message: impl std::fmt::Display) -> Error {
    Error::invalid(
        "invalid_oci_layout",
        format!("--oci-layout {}: {message}", dir.display()),
    )
}

/// `"sha256:HEX"` in a descriptor, as lower-case HEX.
pub(super) fn descriptor_digest(descriptor: &Value) -> Option<String> {
    let hex = descriptor
        .get("digest")?
        .as_str()?
        .strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

pub(super) fn media_type(descriptor: &Value) -> Option<&str> {
    descriptor.get("mediaType")?.as_str()
}

/// The digests (hex) of the one manifest in an OCI image layout written by `make oci`, and of
/// its Wasm layer. The manifest blob is checked against its digest.
pub fn oci_layout_digests(dir: &Path) -> Result<(String, String), Error> {
    let read_json = |path: &Path| -> Result<(Vec<u8>, Value), Error> {
        let bytes = std::fs::read(path).map_err(|error| layout_error(dir, error))?;
        let value = serde_json::from_slice(&bytes).map_err(|error| layout_error(dir, error))?;
        Ok((bytes, value))
    };
    let (_, index) = read_json(&dir.join("index.json"))?;
    let manifests = index.get("manifests").and_then(Value::as_array);
    let Some([entry]) = manifests.map(Vec::as_slice) else {
        return Err(layout_error(
            dir,
            "index.json must list exactly one manifest",
        ));
    };
    let digest = descriptor_digest(entry)
        .ok_or_else(|| layout_error(dir, "the manifest digest is not sha256:HEX"))?;
    let (bytes, manifest) = read_json(&dir.join("blobs").join("sha256").join(&digest))?;
    if hex_sha256(&bytes) != digest {
        return Err(layout_error(
            dir,
            "the manifest blob does not match its digest",
        ));
    }
    let layers = manifest.get("layers").and_then(Value::as_array);
    let Some([first, second]) = layers.map(Vec::as_slice) else {
        return Err(layout_error(
            dir,
            "Istio needs exactly two layers (runtime config, module)",
        ));
    };
    if media_type(first) != Some(OCI_RUNTIME_CONFIG_LAYER)
        || media_type(second) != Some(OCI_WASM_LAYER)
    {
        return Err(layout_error(
            dir,
            format!("the layers must be {OCI_RUNTIME_CONFIG_LAYER} and {OCI_WASM_LAYER}"),
        ));
    }
    let layer = descriptor_digest(second)
        .ok_or_else(|| layout_error(dir, "the Wasm layer digest is not sha256:HEX"))?;
    Ok((digest, layer))
}

/// The WasmPlugin's `sha256`: what istio-agent compares. For an `oci://` URL that is the
/// digest of the image *manifest* (from the layout `make oci` wrote, which `oras cp` pushes
/// unchanged); for `file://` and `http(s)://`, the module's own SHA-256.
pub fn wasm_plugin_sha256(
    wasm_url: &str,
    wasm: Option<&[u8]>,
    oci_layout: Option<&Path>,
) -> Result<String, Error> {
    if wasm_url.starts_with("oci://") {
        let dir = oci_layout.ok_or_else(|| {
            Error::invalid(
                "missing_oci_layout",
                "--wasm-url oci://…: pass --oci-layout target/oci (from `make oci`): for OCI \
                 images Istio checks the manifest digest, not the module's",
            )
        })?;
        let (manifest, layer) = oci_layout_digests(dir)?;
        if let Some(wasm) = wasm {
            if hex_sha256(wasm) != layer {
                return Err(layout_error(
                    dir,
                    "its Wasm layer is not --wasm-file (stale layout? run `make oci`)",
                ));
            }
        }
        return Ok(manifest);
    }
    if oci_layout.is_some() {
        return Err(Error::invalid(
            "invalid_oci_layout",
            "--oci-layout goes with an oci:// --wasm-url",
        ));
    }
    let wasm = wasm.ok_or_else(|| {
        Error::invalid(
            "missing_wasm_file",
            "--wasm-file is needed to compute the module's sha256",
        )
    })?;
    Ok(hex_sha256(wasm))
}
