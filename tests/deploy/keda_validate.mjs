// Validates KEDA objects (JSON array on stdin) with @kubernetes-models/keda's
// generated CRD validators; prints one line per error, exits 1 on any.
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";

const kinds = { ScaledObject, TriggerAuthentication };
let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = 0;
for (const doc of JSON.parse(input)) {
  const Model = kinds[doc.kind];
  try {
    if (!Model) throw new Error(`no validator for kind ${doc.kind}`);
    new Model(doc).validate();
    console.log(`ok ${doc.kind}/${doc.metadata.name}`);
  } catch (err) {
    failed++;
    console.log(`FAIL ${doc.kind}/${doc.metadata?.name}: ${err.message}`);
  }
}
process.exit(failed ? 1 : 0);
