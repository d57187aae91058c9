// Validates Kubernetes objects (a JSON array on stdin) with the validators that the npm package
// kubernetes-models generates from Kubernetes' own OpenAPI schemas. Prints one line per object;
// exits 1 when any is invalid or of a kind this script does not know.
// Usage: node scripts/validate_k8s.mjs MODELS_DIR < objects.json
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const modelsDir = process.argv[2];
if (!modelsDir) {
  console.error("usage: validate_k8s.mjs MODELS_DIR < objects.json");
  process.exit(2);
}
const modules = {
  "v1/ServiceAccount": "kubernetes-models/v1/ServiceAccount",
  "v1/Service": "kubernetes-models/v1/Service",
  "v1/Secret": "kubernetes-models/v1/Secret",
  "v1/ConfigMap": "kubernetes-models/v1/ConfigMap",
  "apps/v1/Deployment": "kubernetes-models/apps/v1/Deployment",
  "policy/v1/PodDisruptionBudget": "kubernetes-models/policy/v1/PodDisruptionBudget",
};
const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = false;
for (const object of objects) {
  const key = `${object.apiVersion}/${object.kind}`;
  const name = `${key} ${object.metadata?.name}`;
  if (!(key in modules)) {
    console.log(`UNKNOWN ${name}`);
    failed = true;
    continue;
  }
  const file = `${modelsDir}/node_modules/${modules[key]}.js`;
  const module = await import(pathToFileURL(file).href);
  const Model = module[object.kind];
  try {
    new Model(object).validate();
    console.log(`ok ${name}`);
  } catch (error) {
    console.log(`INVALID ${name}: ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
