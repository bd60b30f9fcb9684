// Module resolve hook for globsync.mjs: `fs` and `node:fs` resolve to the
// shim, except from the shim itself.
const shim = new URL('./globsync-shim.mjs', import.meta.url).href;

export async function resolve(specifier, context, next) {
  if ((specifier === 'fs' || specifier === 'node:fs') && context.parentURL !== shim) {
    return { url: shim, shortCircuit: true };
  }
  return next(specifier, context);
}
