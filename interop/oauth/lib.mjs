// Shared by the OAuth interop scripts: a TS SDK `OAuthClientProvider` that
// completes the authorization code flow unattended, and small helpers.
//
// The provider keeps everything in memory. Its `redirectToAuthorization`
// does what a browser would: it fetches the authorization URL, follows the
// authorization server's redirects (with its cookies) through the
// interactions that oauth/as.mjs approves at once, and ends at the
// loopback redirect_uri, a real listener that receives the code.
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

/** Most redirects one authorization may take (login, consent, code). */
const MAX_REDIRECTS = 10;

/** First 12 hex digits of the token's SHA-256: names a token without showing it. */
export function fingerprint(token) {
  return token ? createHash('sha256').update(token).digest('hex').slice(0, 12) : 'none';
}

/** The claims of a JWT (not verified), or undefined for an opaque token. */
export function jwtClaims(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return undefined;
  try {
    return JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
}

export function assert(cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`);
}

/** A `fetch` that records `METHOD URL -> STATUS` of every request into `log`. */
export function recordingFetch(log) {
  return async (url, init) => {
    const res = await fetch(url, init);
    const u = new URL(url instanceof Request ? url.url : String(url));
    log.push(`${init?.method ?? 'GET'} ${u.origin}${u.pathname} -> ${res.status}`);
    return res;
  };
}

/** A listener on 127.0.0.1 for the redirect_uri; resolves each code it receives. */
async function callbackListener() {
  const waiters = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    res.writeHead(200, { 'content-type': 'text/plain' }).end('authorized; you may close this window');
    waiters.shift()?.(url.searchParams);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  server.unref();
  return {
    url: `http://127.0.0.1:${server.address().port}/callback`,
    next: () => new Promise((resolve) => waiters.push(resolve)),
    close: () => server.close(),
  };
}

/** Cookies by name, from `Set-Cookie` headers (attributes ignored, one origin). */
function keepCookies(jar, setCookies) {
  for (const line of setCookies) {
    const [pair, ...attrs] = line.split(';');
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq).trim();
    const expired = attrs.some((a) => /^\s*expires=/i.test(a) && Date.parse(a.split('=')[1]) < Date.now());
    if (expired || pair.slice(eq + 1) === '') jar.delete(name);
    else jar.set(name, pair.slice(eq + 1).trim());
  }
}

/**
 * An `OAuthClientProvider` for a public client (no secret, PKCE) that
 * registers itself dynamically and signs in as `loginHint`.
 */
export class UnattendedOAuthProvider {
  static async create({ loginHint, log = [] } = {}) {
    return new UnattendedOAuthProvider(await callbackListener(), loginHint, log);
  }

  constructor(callback, loginHint, log) {
    this.callback = callback;
    this.loginHint = loginHint;
    /** Steps of the flow, for the summary. */
    this.log = log;
    this._client = undefined;
    this._tokens = undefined;
    this._verifier = undefined;
    this._state = undefined;
    this._discovery = undefined;
    /** The code from the last authorization. */
    this.code = undefined;
  }

  get redirectUrl() {
    return this.callback.url;
  }

  get clientMetadata() {
    return {
      client_name: 'shadowcat-interop-oauth-client',
      redirect_uris: [this.callback.url],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }

  state() {
    this._state = randomBytes(16).toString('base64url');
    return this._state;
  }

  clientInformation() {
    return this._client;
  }

  saveClientInformation(info) {
    this.log.push(`registered client_id=${info.client_id}`);
    this._client = info;
  }

  tokens() {
    return this._tokens;
  }

  saveTokens(tokens) {
    this.log.push(`tokens access=${fingerprint(tokens.access_token)}`);
    this._tokens = tokens;
  }

  saveCodeVerifier(verifier) {
    this._verifier = verifier;
  }

  codeVerifier() {
    return this._verifier;
  }

  saveDiscoveryState(state) {
    this._discovery = state;
  }

  discoveryState() {
    return this._discovery;
  }

  invalidateCredentials(scope) {
    if (scope === 'all' || scope === 'client') this._client = undefined;
    if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
    if (scope === 'all' || scope === 'verifier') this._verifier = undefined;
    if (scope === 'all' || scope === 'discovery') this._discovery = undefined;
  }

  /** Follows the authorization URL to the redirect_uri; keeps the code. */
  async redirectToAuthorization(authorizationUrl) {
    const url = new URL(authorizationUrl);
    if (this.loginHint) url.searchParams.set('login_hint', this.loginHint);
    this.log.push(
      `authorize resource=${url.searchParams.get('resource')} scope=${url.searchParams.get('scope')} pkce=${url.searchParams.get('code_challenge_method')}`,
    );
    const received = this.callback.next();
    const jar = new Map();
    let next = url;
    for (let hop = 0; ; hop++) {
      assert(hop < MAX_REDIRECTS, `the authorization ends at the redirect_uri within ${MAX_REDIRECTS} redirects`);
      if (next.href.startsWith(this.callback.url)) {
        const res = await fetch(next);
        await res.body?.cancel();
        break;
      }
      const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
      const res = await fetch(next, { redirect: 'manual', headers: cookie ? { cookie } : {} });
      keepCookies(jar, res.headers.getSetCookie());
      const body = await res.text();
      const location = res.headers.get('location');
      if (res.status < 300 || res.status >= 400 || !location) {
        throw new Error(`authorization stopped at ${next.origin}${next.pathname}: HTTP ${res.status} ${body.slice(0, 300)}`);
      }
      next = new URL(location, next);
    }
    const params = await received;
    if (params.get('error')) {
      throw new Error(`authorization error ${params.get('error')}: ${params.get('error_description')}`);
    }
    assert(params.get('state') === this._state, 'the redirect carries our state');
    this.code = params.get('code');
    this.log.push('code received at the redirect_uri');
  }

  close() {
    this.callback.close();
  }
}

export function newClient() {
  return new Client({ name: 'shadowcat-interop-oauth-client', version: '1.0.0' }, { capabilities: {} });
}

/**
 * Connects to `url` as the SDK does with an auth provider: the first
 * attempt meets the 401, runs discovery, registration and the
 * authorization; then `finishAuth` exchanges the code and a new transport
 * connects with the token.
 */
export async function connectWithOAuth(url, provider, fetchLog) {
  const fetchFn = recordingFetch(fetchLog);
  let client = newClient();
  let transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider, fetch: fetchFn });
  try {
    await client.connect(transport);
    return { client, transport };
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
  }
  assert(provider.code, 'the authorization produced a code');
  await transport.finishAuth(provider.code);
  client = newClient();
  transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider, fetch: fetchFn });
  await client.connect(transport);
  return { client, transport };
}
