// A real OAuth 2.1 authorization server (oidc-provider) for the OAuth
// interop scenarios. Loopback only; every login and consent is approved at
// once, so a client can run the authorization code flow unattended.
//
// usage: node oauth/as.mjs PORT [--opaque] [--opaque-resource URL]...
// Issuer http://127.0.0.1:PORT; prints `listening PORT` once ready.
//   --opaque                every access token is opaque (RFC 7662
//                           introspection), whatever its resource
//   --opaque-resource URL   access tokens for this resource are opaque
// Any other resource indicator (RFC 8707) on 127.0.0.1 gets a JWT access
// token (RS256, `typ: at+jwt`) whose `aud` is the resource, with the
// scopes `mcp` and `admin` available.
//
// Clients:
//   - dynamic registration at /reg (the TS SDK client registers itself);
//     a registered client may ask for any scope (the `scope` it registers
//     with is not kept: a step-up asks for more); PKCE (S256) is required
//     of every client;
//   - CONFIDENTIAL below (client_secret_basic): client_credentials (a
//     proxy's own upstream credential) and introspection.
// Interactions: /interaction/UID logs in `login_hint` (default `alice`)
// and grants every scope and resource asked for.
// Test endpoints (loopback only, POST):
//   /test/rotate   a new signing key is put first in the JWKS (the old one
//                  stays published): prints and returns `{"kid": NEW}`
//   /test/sign     `{"payload": {...}, "header": {...}, "key": "current" |
//                  "foreign"}` -> `{"token": JWT}`: signs claims with the
//                  current key (or one never published); the payload
//                  defaults to iss/iat/exp(+300 s)/jti, a `null` claim is
//                  left out
import { createServer } from 'node:http';
import { generateKeyPairSync, createPrivateKey, randomUUID, sign } from 'node:crypto';
import Provider from 'oidc-provider';
// The package's own in-memory adapter; used without a store of its own it
// keeps everything in one module-level store, so a provider rebuilt for a
// key rotation still knows every client, grant and token.
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

/** Confidential clients, `client_secret_basic`; the secrets are test values. */
const CONFIDENTIAL = [
  { client_id: 'shadowcat-upstream', client_secret: 'upstream-secret' },
  { client_id: 'shadowcat-introspect', client_secret: 'introspect-secret' },
  { client_id: 'rs-introspect', client_secret: 'rs-secret' },
  { client_id: 'test-client', client_secret: 'test-secret' },
];
/** Scopes a resource server (an MCP endpoint) offers. */
const RESOURCE_SCOPES = 'mcp admin';
/** Lifetime of an access token. */
const ACCESS_TOKEN_TTL_SECS = 600;

const args = process.argv.slice(2);
const port = Number(args.shift());
let allOpaque = false;
const opaqueResources = new Set();
while (args.length > 0) {
  const flag = args.shift();
  if (flag === '--opaque') allOpaque = true;
  else if (flag === '--opaque-resource' && args.length > 0) opaqueResources.add(args.shift());
  else usage();
}
if (!Number.isInteger(port) || port <= 0) usage();

function usage() {
  console.error('usage: node oauth/as.mjs PORT [--opaque] [--opaque-resource URL]...');
  process.exit(2);
}

const issuer = `http://127.0.0.1:${port}`;

/** A fresh RS256 signing key as a private JWK with a kid. */
function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

/** Signing keys, the current one first; all are published. */
const keys = [newKey()];
/** A key never published: what a forger would sign with. */
const foreignKey = newKey();

function isLoopbackResource(indicator) {
  const url = URL.parse(indicator);
  return url !== null && (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname === '127.0.0.1';
}

/**
 * Keeps registered clients without a `scope` of their own, so a client may
 * later ask for any scope this server supports: the TS SDK registers with
 * the scopes it first needs, and a step-up (403 insufficient_scope) asks
 * for more.
 */
class ClientAdapter extends MemoryAdapter {
  async upsert(id, payload, expiresIn) {
    const { scope: _scope, ...rest } = payload;
    return super.upsert(id, rest, expiresIn);
  }
}

function buildProvider() {
  const provider = new Provider(issuer, {
    adapter: (model) => (model === 'Client' ? new ClientAdapter(model) : new MemoryAdapter(model)),
    jwks: { keys },
    // Signed with a fixed test key so interactions survive a key rotation.
    cookies: { keys: ['interop-cookie-key'] },
    clients: CONFIDENTIAL.map((c) => ({
      ...c,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    scopes: ['openid', 'offline_access', 'mcp', 'admin'],
    pkce: { required: () => true },
    findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // Only confidential clients introspect; any token of this server.
        allowedPolicy: async (_ctx, client) => client.clientAuthMethod !== 'none',
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator) => {
          if (!isLoopbackResource(indicator)) throw new Provider.errors.InvalidTarget();
          const opaque = allOpaque || opaqueResources.has(indicator);
          return {
            scope: RESOURCE_SCOPES,
            audience: indicator,
            accessTokenTTL: ACCESS_TOKEN_TTL_SECS,
            accessTokenFormat: opaque ? 'opaque' : 'jwt',
            ...(opaque ? {} : { jwt: { sign: { alg: 'RS256' } } }),
          };
        },
      },
    },
    ttl: {
      AccessToken: ACCESS_TOKEN_TTL_SECS,
      ClientCredentials: ACCESS_TOKEN_TTL_SECS,
      AuthorizationCode: 60,
      Grant: 3600,
      Interaction: 600,
      Session: 3600,
      RefreshToken: 3600,
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  return { provider, callback: provider.callback() };
}

let current = buildProvider();

/** Approves the pending login (as `login_hint`, default `alice`) or consent. */
async function interact(req, res) {
  const { provider } = current;
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (prompt.name === 'login') {
    const accountId = typeof params.login_hint === 'string' && params.login_hint ? params.login_hint : 'alice';
    console.log(`login ${accountId} client=${params.client_id}`);
    return provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
  }
  if (prompt.name !== 'consent') throw new Error(`unexpected prompt ${prompt.name}`);
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  console.log(`consent ${session.accountId} client=${params.client_id}`);
  return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

function b64url(value) {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

/** Signs `payload` (defaults filled in) with the current or a foreign key. */
function signToken({ payload = {}, header = {}, key = 'current' }) {
  const jwk = key === 'foreign' ? foreignKey : keys[0];
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: issuer, iat: now, exp: now + 300, jti: randomUUID(), ...payload };
  for (const [name, value] of Object.entries(claims)) if (value === null) delete claims[name];
  const head = { alg: 'RS256', typ: 'at+jwt', kid: keys[0].kid, ...header };
  const input = `${b64url(head)}.${b64url(claims)}`;
  const signature = sign('sha256', Buffer.from(input), createPrivateKey({ key: jwk, format: 'jwk' }));
  return `${input}.${signature.toString('base64url')}`;
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const server = createServer(async (req, res) => {
  try {
    const path = new URL(req.url, issuer).pathname;
    if (path.startsWith('/interaction/')) return await interact(req, res);
    if (path === '/test/rotate' && req.method === 'POST') {
      keys.unshift(newKey());
      current = buildProvider();
      console.log(`rotated kid=${keys[0].kid}`);
      return json(res, 200, { kid: keys[0].kid });
    }
    if (path === '/test/sign' && req.method === 'POST') {
      return json(res, 200, { token: signToken(await readJson(req)) });
    }
    return current.callback(req, res);
  } catch (e) {
    console.error('request failed:', e);
    if (!res.headersSent) json(res, 500, { error: 'server_error', error_description: String(e.message ?? e) });
    else res.end();
  }
});

server.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
