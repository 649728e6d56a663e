// Checks ScaledObjects against KEDA's published schema (@kubernetes-models/keda, pinned in
// package-lock.json), and what a CRD schema lets through silently: the API server drops
// unknown fields, so a misspelt maxReplicaCount would leave the fleet uncapped.
// Usage: node check-keda.mjs <file.yaml>...
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1";

// The fields gancho's ScaledObject may use, and the nats-jetstream scaler's metadata keys.
const SPEC = new Set(["scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
  "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount", "advanced", "fallback", "triggers"]);
const NATS = new Set(["natsServerMonitoringEndpoint", "account", "stream", "consumer",
  "lagThreshold", "activationLagThreshold", "useHttps"]);
const PROMETHEUS = new Set(["serverAddress", "query", "threshold", "activationThreshold",
  "namespace", "customHeaders", "ignoreNullValues", "unsafeSsl", "queryParameters"]);

let failed = false;
const fail = (file, why) => { console.error(`${file}: ${why}`); failed = true; };
for (const file of process.argv.slice(2)) {
  const docs = parseAllDocuments(readFileSync(file, "utf8")).map((d) => d.toJS());
  for (const doc of docs.filter((d) => d && d.kind === "ScaledObject")) {
    try {
      new ScaledObject(doc).validate();
    } catch (e) {
      fail(file, `not a valid ScaledObject: ${e.message}`);
      continue;
    }
    for (const key of Object.keys(doc.spec)) {
      if (!SPEC.has(key)) fail(file, `unknown field spec.${key}`);
    }
    if (!Number.isInteger(doc.spec.maxReplicaCount)) fail(file, "spec.maxReplicaCount must cap the workers");
    for (const t of doc.spec.triggers) {
      if (t.type === "prometheus") {
        for (const key of Object.keys(t.metadata)) {
          if (!PROMETHEUS.has(key)) fail(file, `unknown prometheus metadata ${key}`);
        }
        for (const key of ["serverAddress", "query", "threshold"]) {
          if (!(key in t.metadata)) fail(file, `prometheus metadata ${key} is missing`);
        }
        continue;
      }
      if (t.type !== "nats-jetstream") continue;
      for (const key of Object.keys(t.metadata)) {
        if (!NATS.has(key)) fail(file, `unknown nats-jetstream metadata ${key}`);
      }
      for (const key of ["natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"]) {
        if (!(key in t.metadata)) fail(file, `nats-jetstream metadata ${key} is missing`);
      }
    }
    if (!failed) console.log(`${file}: ScaledObject ${doc.metadata.name} is valid`);
  }
}
process.exit(failed ? 1 : 0);
