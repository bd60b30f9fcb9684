// Preload (`node --import`): supplies `fs.globSync` on Node versions that
// lack it (added in Node 22). The conformance CLI imports it by name, and
// the named exports of a built-in module cannot be added to after the fact,
// so a resolve hook serves `fs` / `node:fs` from a shim that re-exports the
// real module plus a small globSync.
import fs from 'node:fs';
import { register } from 'node:module';

if (typeof fs.globSync !== 'function') {
  register('./globsync-hooks.mjs', import.meta.url);
}
