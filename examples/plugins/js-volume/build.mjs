// Builds src/plugin.js into a component for the mercato:pricing/plugin world.
// Usage: npm ci && node build.mjs [OUT.wasm]
import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const out = process.argv[2] ?? here('./plugin.wasm');
const { component } = await componentize(await readFile(here('./src/plugin.js'), 'utf8'), {
  witPath: here('../../../wit/pricing'),
  worldName: 'plugin',
  // A plugin gets no capability: no fetch, no incoming handler; no real
  // clock or randomness either (the host's are fixed and seeded anyway).
  disableFeatures: ['http', 'fetch-event', 'random', 'clocks'],
});
await writeFile(out, component);
console.log(`wrote ${out} (${component.length} bytes)`);
