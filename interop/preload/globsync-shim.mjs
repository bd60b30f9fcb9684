// `node:fs` plus `globSync` (patterns with `**`, `*`, `?`; options `cwd`
// and `exclude`), for Node versions without it. Returns paths relative to
// `cwd` with `/` separators; symlinked directories are not followed.
import fs from 'node:fs';
import path from 'node:path';

export * from 'node:fs';
export default fs;

function toRegExp(pattern) {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '*' && pattern[i + 1] === '*') {
      if (pattern[i + 2] === '/') {
        re += '(?:.*/)?';
        i += 2;
      } else {
        re += '.*';
        i += 1;
      }
    } else if (c === '*') {
      re += '[^/]*';
    } else if (c === '?') {
      re += '[^/]';
    } else {
      re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
  }
  return new RegExp(`^${re}$`);
}

function walk(root, rel, out) {
  let entries;
  try {
    entries = fs.readdirSync(path.join(root, rel), { withFileTypes: true });
  } catch {
    return;
  }
  for (const entry of entries) {
    const child = rel === '' ? entry.name : `${rel}/${entry.name}`;
    out.push(child);
    if (entry.isDirectory()) walk(root, child, out);
  }
}

export function globSync(pattern, options = {}) {
  const patterns = (Array.isArray(pattern) ? pattern : [pattern]).map(toRegExp);
  const cwd = options.cwd ? String(options.cwd) : process.cwd();
  const exclude = typeof options.exclude === 'function' ? options.exclude : () => false;
  const all = [];
  walk(cwd, '', all);
  return all.filter((p) => patterns.some((re) => re.test(p)) && !exclude(p));
}
