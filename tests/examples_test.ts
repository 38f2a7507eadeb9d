import assert from "node:assert/strict";
import { main, runQuantizeLinearExample } from "../examples/quantize_linear.ts";
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

Deno.test("examples/quantize_linear.ts: --help, and a bad option is a usage error", () => {
  const logged: string[] = [];
  const [log, error] = [console.log, console.error];
  console.log = (m: string) => logged.push(m);
  console.error = (m: string) => logged.push(m);
  try {
    assert.equal(main(["--help"]), 0);
    assert.equal(main(["--bogus"]), 2);
  } finally {
    [console.log, console.error] = [log, error];
  }
  assert.match(logged[0], /usage: deno run -A examples\/quantize_linear.ts/);
  assert.match(logged[1], /error: Unknown option '--bogus'/);
});
