import assert from "node:assert/strict";
import { runQuantizeLinearExample } from "../examples/quantize_linear.ts";
import { testOnDevices } from "./helpers.ts";

testOnDevices("examples/quantize_linear.ts: the module and the manual version agree", (device) => {
  const r = runQuantizeLinearExample(device);
  assert.deepEqual(r.moduleOutput.shape, [4, 2304]);
  assert.equal(r.maxDiffModuleVsManual, 0);
  // int8 with per-channel weights stays close to float32, but is not identical to it.
  assert.ok(
    r.maxDiffVsFloat > 0 && r.maxDiffVsFloat < 0.1,
    `quantization error ${r.maxDiffVsFloat}`,
  );
});
