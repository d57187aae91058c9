// Validates Istio resources with the validators of npm @kubernetes-models/istio (generated from
// Istio's published CRD schemas; installed by `make` into .tools/istio-models, never vendored).
//
//   node validate.mjs FILE...   (env ISTIO_MODELS_DIR: the npm prefix holding node_modules)
//
// FILE holds JSON documents separated by `---` lines (a YAML stream of JSON documents, which is
// what `keyward render istio` prints). Prints one `ok KIND/NAME` line per valid document; on the
// first invalid one, prints `invalid KIND/NAME: reason` on stderr and exits 1. The validators do
// not reject unknown fields: integration/test_istio.py checks those against an allow-list.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const MODELS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": "extensions.istio.io/v1alpha1/WasmPlugin.js",
  "networking.istio.io/v1/ServiceEntry": "networking.istio.io/v1/ServiceEntry.js",
  "networking.istio.io/v1beta1/ServiceEntry": "networking.istio.io/v1beta1/ServiceEntry.js",
  "networking.istio.io/v1alpha3/EnvoyFilter": "networking.istio.io/v1alpha3/EnvoyFilter.js",
};

function fail(message) {
  process.stderr.write(message + "\n");
  process.exit(1);
}

const modelsDir = process.env.ISTIO_MODELS_DIR;
if (!modelsDir) fail("ISTIO_MODELS_DIR is not set (npm prefix of @kubernetes-models/istio)");
const packageDir = join(modelsDir, "node_modules", "@kubernetes-models", "istio");

async function model(apiVersion, kind) {
  const file = MODELS[`${apiVersion}/${kind}`];
  if (!file) return null;
  const module = await import(pathToFileURL(join(packageDir, file)).href);
  return module[kind];
}

const files = process.argv.slice(2);
if (files.length === 0) fail("usage: node validate.mjs FILE...");
let count = 0;
for (const file of files) {
  const chunks = readFileSync(file, "utf8").split(/^---[ \t]*$/m).filter((c) => c.trim() !== "");
  for (const chunk of chunks) {
    let doc;
    try {
      doc = JSON.parse(chunk);
    } catch (error) {
      fail(`invalid ${file}: a document is not JSON: ${error.message}`);
    }
    const label = `${doc.kind}/${doc.metadata?.name}`;
    const Model = await model(doc.apiVersion, doc.kind);
    if (!Model) fail(`invalid ${label}: no validator for ${doc.apiVersion} ${doc.kind}`);
    try {
      new Model(doc).validate();
    } catch (error) {
      fail(`invalid ${label}: ${error.message}`);
    }
    console.log(`ok ${label}`);
    count += 1;
  }
}
if (count === 0) fail("no documents found");
