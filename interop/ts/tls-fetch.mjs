// Preload for the interop TLS scenarios: replaces the global fetch (what
// the TypeScript SDK client and ts/client.mjs use) with undici's fetch on
// an Agent that trusts only the test CA and, with INTEROP_TLS_H2=1, offers
// HTTP/2 by ALPN (allowH2); otherwise HTTP/1.1 only.
//
// usage: INTEROP_TLS_CA=ca.pem [INTEROP_TLS_H2=1] node --import ./ts/tls-fetch.mjs ts/client.mjs ...
import { readFileSync } from 'node:fs';
import { Agent, fetch as undiciFetch } from 'undici';

const caFile = process.env.INTEROP_TLS_CA;
if (!caFile) {
  console.error('tls-fetch: INTEROP_TLS_CA names no CA file');
  process.exit(2);
}
const h2 = process.env.INTEROP_TLS_H2 === '1';
const agent = new Agent({ allowH2: h2, connect: { ca: readFileSync(caFile) } });
globalThis.fetch = (input, init) => undiciFetch(input, { ...init, dispatcher: agent });
