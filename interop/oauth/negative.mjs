// Negative OAuth checks against a Shadowcat in `oauth` or `passthrough`
// mode, with real tokens from oauth/as.mjs (and a few it signs on purpose).
// Each case asserts the status, the `WWW-Authenticate` challenge and the
// JSON-RPC error body, and that the upstream saw nothing of it (every
// request of a case carries a JSON-RPC id starting `neg-`, and the
// upstream, run with request logging, prints the ids it got). Prints one
// `case NAME STATUS: MESSAGE` line per case and a JSON summary line; exits
// 1 at the first failed assertion.
//
// usage: node oauth/negative.mjs MODE URL AS_URL UPSTREAM_LOG
//   MODE          `oauth`: URL is a Shadowcat with --auth-mode oauth in
//                 front of ts/server.mjs --log-requests (UPSTREAM_LOG is
//                 its stdout); `passthrough`: a Shadowcat with --auth-mode
//                 passthrough in front of oauth/rs-server.mjs
//   AS_URL        the issuer (oauth/as.mjs)
// oauth cases: no token, expired, wrong audience, wrong issuer, bad
// signature (altered, and signed by an unpublished key), alg none, HS256
// signed with the public key, a kid no key set has, missing scope (403),
// another principal's token on a session (403), a stolen session id with no
// token / another principal's / a bad token asking for a buffered replay
// (no event), and a new kid after a key rotation (accepted once Shadowcat
// has refreshed the key set; bounded by ROTATION_DEADLINE_MS).
// passthrough cases: no token and a bad token (the upstream's 401 relayed,
// resource_metadata rewritten to Shadowcat), the metadata rewritten, a
// stolen session id with no token or a bad one asking for a replay (no
// event), another valid token asking for the replay (served once the
// upstream accepted it on the session), and a POST with another valid
// token (rebound).
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { UnattendedOAuthProvider, assert, connectWithOAuth, fingerprint, jwtClaims } from './lib.mjs';

const PROTOCOL = '2025-06-18';
const INIT = { protocolVersion: PROTOCOL, capabilities: {}, clientInfo: { name: 'negative', version: '1' } };
/** Longest a new kid may stay unknown to Shadowcat after a rotation. */
const ROTATION_DEADLINE_MS = 20_000;
/** Pause between two tries of the rotated token. */
const ROTATION_RETRY_MS = 250;
/** Longest one response body is read. */
const READ_MS = 5_000;

const [mode, url, issuer, upstreamLog] = process.argv.slice(2);
if (!['oauth', 'passthrough'].includes(mode) || !URL.canParse(url ?? '') || !URL.canParse(issuer ?? '') || !upstreamLog) {
  console.error('usage: node oauth/negative.mjs oauth|passthrough URL AS_URL UPSTREAM_LOG');
  process.exit(2);
}
const endpoint = new URL(url);
const metadataUrl = `${endpoint.origin}/.well-known/oauth-protected-resource${endpoint.pathname}`;
const results = [];

function headers({ token, session, lastEventId } = {}) {
  const h = {
    accept: 'application/json, text/event-stream',
    'content-type': 'application/json',
    'mcp-protocol-version': PROTOCOL,
  };
  if (token !== undefined) h.authorization = `Bearer ${token}`;
  if (session) h['mcp-session-id'] = session;
  if (lastEventId) h['last-event-id'] = lastEventId;
  return h;
}

function post(body, opts = {}) {
  return fetch(url, { method: 'POST', headers: headers(opts), body: JSON.stringify(body), signal: opts.signal });
}

function resume(session, lastEventId, token, signal) {
  const h = headers({ token, session, lastEventId });
  h.accept = 'text/event-stream';
  delete h['content-type'];
  return fetch(url, { method: 'GET', headers: h, signal });
}

/** A JSON-RPC request with a case id, so the upstream log names it. */
function request(name, method = 'tools/list', params = {}) {
  return { jsonrpc: '2.0', id: `neg-${name}`, method, params };
}

/** The whole body, or what came within READ_MS. */
async function readBody(res) {
  const timer = setTimeout(() => res.body?.cancel().catch(() => {}), READ_MS);
  try {
    return await res.text();
  } catch {
    return '';
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Asserts a rejection: status, a Bearer challenge naming Shadowcat's
 * metadata (and `error` when given; a session bound to someone else may
 * answer without one: `challenge: false`), a JSON-RPC error with a message,
 * no event, and nothing of `secret` (the token used) in the answer.
 */
async function expectRejected(name, res, { status, error, secret, challenge = true }) {
  const body = await readBody(res);
  const www = res.headers.get('www-authenticate') ?? '';
  assert(res.status === status, `${name}: HTTP ${status}, got ${res.status} ${www} ${body.slice(0, 300)}`);
  if (challenge || www) {
    assert(/^Bearer\b/i.test(www), `${name}: a Bearer challenge, got ${JSON.stringify(www)}`);
    assert(www.includes(`resource_metadata="${metadataUrl}"`), `${name}: the challenge names ${metadataUrl}, got ${www}`);
  }
  if (error) assert(www.includes(`error="${error}"`), `${name}: error="${error}" in ${www}`);
  if (error === 'insufficient_scope') assert(/scope="[^"]*\bmcp\b/.test(www), `${name}: the missing scope named in ${www}`);
  let message;
  try {
    const json = JSON.parse(body);
    message = json.error?.message ?? json.error_description ?? json.error;
    // Shadowcat answers a JSON-RPC error; a relayed upstream answer is the upstream's.
    if (mode === 'oauth') assert(json.jsonrpc === '2.0' && typeof json.error?.message === 'string', `${name}: a JSON-RPC error, got ${body}`);
  } catch (e) {
    throw new Error(`${name}: the body is JSON, got ${JSON.stringify(body.slice(0, 300))}: ${e.message}`);
  }
  assert(typeof message === 'string' && message.length > 0, `${name}: an error message, got ${body}`);
  assert(!/notifications\/progress|^data:/m.test(body), `${name}: no event in the body, got ${body.slice(0, 300)}`);
  if (secret) assert(!body.includes(secret) && !www.includes(secret), `${name}: the answer never shows the token`);
  console.log(`case ${name} ${res.status}: ${message}`);
  results.push({ name, status: res.status });
}

/** Records a case that was served as it should be. */
function passed(name, what) {
  console.log(`case ${name} 200: ${what}`);
  results.push({ name, status: 200 });
}

/** Reads SSE events from a response until `stop(events)` or its end. */
async function readEvents(res, stop, ms = READ_MS) {
  const events = [];
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  const timer = setTimeout(() => reader.cancel().catch(() => {}), ms);
  try {
    while (!stop(events)) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = { id: undefined, data: '' };
        for (const line of block.split('\n')) {
          if (line.startsWith('id:')) event.id = line.slice(3).trim();
          else if (line.startsWith('data:')) event.data += line.slice(5).trim();
        }
        if (event.data) events.push({ ...event, message: JSON.parse(event.data) });
      }
    }
  } finally {
    clearTimeout(timer);
    await reader.cancel().catch(() => {});
  }
  return events;
}

const progressOf = (events) => events.filter((e) => e.message.method === 'notifications/progress');

/**
 * Starts a `count` tools/call on the session and drops the stream after
 * `keep` progress events; returns the id of the first one (events after it
 * are in Shadowcat's buffer by the time a resume asks).
 */
async function startAndDrop(token, session, { steps = 20, keep = 3 } = {}) {
  const abort = new AbortController();
  const res = await post(
    { jsonrpc: '2.0', id: 'count-1', method: 'tools/call', params: { name: 'count', arguments: { steps, delayMs: 10 }, _meta: { progressToken: 'p1' } } },
    { token, session, signal: abort.signal },
  );
  assert(res.status === 200 && (res.headers.get('content-type') ?? '').startsWith('text/event-stream'), `the tools/call streams, got ${res.status}`);
  const events = await readEvents(res, (ev) => progressOf(ev).length >= keep);
  abort.abort();
  const progress = progressOf(events);
  assert(progress.length >= keep && progress[0].id, `${keep} progress events with ids before the cut, got ${JSON.stringify(events)}`);
  return { lastEventId: progress[0].id, steps };
}

/** Posts to the AS and returns its JSON. */
async function asJson(path, init) {
  const res = await fetch(new URL(path, issuer), init);
  const json = await res.json();
  assert(res.ok, `${path}: HTTP ${res.status} ${JSON.stringify(json)}`);
  return json;
}

async function clientCredentials(resource, scope) {
  const basic = Buffer.from('test-client:test-secret').toString('base64');
  const body = new URLSearchParams({ grant_type: 'client_credentials', resource, scope });
  const json = await asJson('/token', {
    method: 'POST',
    headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
    body,
  });
  return json.access_token;
}

async function signed(payload, { header = {}, key = 'current' } = {}) {
  const json = await asJson('/test/sign', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ payload, header, key }),
  });
  return json.token;
}

function b64(value) {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** Signs in as `login` with the SDK's own flow; returns its token and session. */
async function signIn(login) {
  const provider = await UnattendedOAuthProvider.create({ loginHint: login });
  const { client, transport } = await connectWithOAuth(url, provider, []);
  const token = (await provider.tokens()).access_token;
  provider.close();
  return { client, transport, token, session: transport.sessionId };
}

function upstreamLines() {
  return readFileSync(upstreamLog, 'utf8').split('\n');
}

async function oauthCases() {
  const alice = await signIn('alice');
  const bob = await signIn('bob');
  const claims = jwtClaims(alice.token);
  assert(claims, 'oauth mode: the token is a JWT');
  const session = alice.session;
  const now = Math.floor(Date.now() / 1000);
  const good = { sub: 'alice', aud: url, scope: 'mcp', client_id: claims.client_id };

  // The control: a token the AS signs on request, with alice's claims, is
  // accepted; so each minted token below fails for its one wrong claim.
  const control = await signed(good);
  const controlRes = await post({ jsonrpc: '2.0', id: 'control', method: 'tools/list', params: {} }, { token: control, session });
  const controlBody = await readBody(controlRes);
  assert(controlRes.status === 200 && controlBody.includes('"echo"'), `a well-formed signed token is accepted, got ${controlRes.status} ${controlBody.slice(0, 300)}`);
  passed('control', 'a token signed on request with good claims is accepted');

  await expectRejected('no-token', await post(request('no-token'), { session }), { status: 401 });
  const expired = await signed({ ...good, iat: now - 7200, exp: now - 3600 });
  await expectRejected('expired', await post(request('expired'), { token: expired, session }), { status: 401, error: 'invalid_token', secret: expired });
  const elsewhere = await clientCredentials('http://127.0.0.1:9/elsewhere', 'mcp');
  assert(jwtClaims(elsewhere)?.aud === 'http://127.0.0.1:9/elsewhere', 'a real token for another resource');
  await expectRejected('wrong-audience', await post(request('wrong-audience'), { token: elsewhere, session }), { status: 401, error: 'invalid_token', secret: elsewhere });
  const otherIssuer = await signed({ ...good, iss: 'http://127.0.0.1:9' });
  await expectRejected('wrong-issuer', await post(request('wrong-issuer'), { token: otherIssuer, session }), { status: 401, error: 'invalid_token', secret: otherIssuer });
  const [h, p, s] = alice.token.split('.');
  const flipped = `${h}.${p}.${s.slice(0, 10)}${s[10] === 'A' ? 'B' : 'A'}${s.slice(11)}`;
  await expectRejected('bad-signature', await post(request('bad-signature'), { token: flipped, session }), { status: 401, error: 'invalid_token', secret: flipped });
  const forged = await signed(good, { key: 'foreign' });
  await expectRejected('unpublished-key', await post(request('unpublished-key'), { token: forged, session }), { status: 401, error: 'invalid_token', secret: forged });
  const none = `${b64({ alg: 'none', typ: 'at+jwt' })}.${p}.`;
  await expectRejected('alg-none', await post(request('alg-none'), { token: none, session }), { status: 401, error: 'invalid_token', secret: none });
  const jwks = await asJson('/jwks');
  const hsHeader = b64({ alg: 'HS256', typ: 'at+jwt', kid: jwks.keys[0].kid });
  const hsSig = createHmac('sha256', JSON.stringify(jwks.keys[0])).update(`${hsHeader}.${p}`).digest('base64url');
  const hs = `${hsHeader}.${p}.${hsSig}`;
  await expectRejected('alg-hs256', await post(request('alg-hs256'), { token: hs, session }), { status: 401, error: 'invalid_token', secret: hs });
  const unknownKid = await signed(good, { header: { kid: 'no-such-kid' }, key: 'foreign' });
  await expectRejected('unknown-kid', await post(request('unknown-kid'), { token: unknownKid, session }), { status: 401, error: 'invalid_token', secret: unknownKid });
  const adminOnly = await clientCredentials(url, 'admin');
  assert(jwtClaims(adminOnly)?.scope === 'admin', 'a real token without the mcp scope');
  await expectRejected('missing-scope', await post(request('missing-scope', 'initialize', INIT), { token: adminOnly }), { status: 403, error: 'insufficient_scope', secret: adminOnly });
  await expectRejected('other-principal', await post(request('other-principal'), { token: bob.token, session }), { status: 403, challenge: false, secret: bob.token });

  // A stolen session id asking for a replay from Shadowcat's buffer.
  const { lastEventId, steps } = await startAndDrop(alice.token, session);
  await expectRejected('replay-no-token', await resume(session, lastEventId), { status: 401 });
  await expectRejected('replay-other-principal', await resume(session, lastEventId, bob.token), { status: 403, challenge: false, secret: bob.token });
  await expectRejected('replay-bad-token', await resume(session, lastEventId, flipped), { status: 401, error: 'invalid_token' });
  // The owner gets the events the others did not: there was something to leak.
  const owned = await resume(session, lastEventId, alice.token);
  assert(owned.status === 200, `the owner's resume is served, got ${owned.status}`);
  const replayed = progressOf(await readEvents(owned, (ev) => ev.some((e) => e.message.id === 'count-1')));
  assert(replayed.length >= 2, `the owner's resume replays the rest, got ${replayed.length}`);
  passed('replay-owner', `${replayed.length} events after ${lastEventId} of ${steps}`);

  // Key rotation: a token with the new kid is accepted once Shadowcat has
  // refreshed the issuer's key set (it is rate-limited, hence the retries).
  const { kid } = await asJson('/test/rotate', { method: 'POST' });
  const rotated = await clientCredentials(url, 'mcp');
  assert(JSON.parse(Buffer.from(rotated.split('.')[0], 'base64url')).kid === kid, 'the token after the rotation has the new kid');
  const began = Date.now();
  let tries = 0;
  let accepted;
  while (Date.now() - began < ROTATION_DEADLINE_MS) {
    tries++;
    const res = await post(
      { jsonrpc: '2.0', id: 'rotated-init', method: 'initialize', params: INIT },
      { token: rotated },
    );
    await readBody(res);
    if (res.status === 200) {
      accepted = res;
      break;
    }
    assert(res.status === 401, `a rotated token not yet known gets 401, got ${res.status}`);
    await new Promise((resolve) => setTimeout(resolve, ROTATION_RETRY_MS));
  }
  assert(accepted, `the new kid was accepted within ${ROTATION_DEADLINE_MS} ms (${tries} tries)`);
  passed('rotated-kid', `accepted after ${tries} tries, ${Date.now() - began} ms`);
  const rotatedSession = accepted.headers.get('mcp-session-id');
  if (rotatedSession) await fetch(url, { method: 'DELETE', headers: headers({ token: rotated, session: rotatedSession }) });

  // The upstream saw none of it, and never a client's token.
  const lines = upstreamLines();
  const leaked = lines.filter((l) => l.includes('id=neg-'));
  assert(leaked.length === 0, `the upstream saw no rejected request, got ${leaked.join('\n')}`);
  const clientTokens = [alice.token, bob.token, rotated].map(fingerprint);
  const forwarded = lines.filter((l) => clientTokens.some((fp) => l.includes(`auth=${fp}`)));
  assert(forwarded.length === 0, `no client token reached the upstream, got ${forwarded.join('\n')}`);
  await alice.client.close();
  await bob.client.close();
  return { upstream_requests: lines.filter((l) => l.startsWith('request ')).length };
}

async function passthroughCases() {
  // Without a session only an initialize goes upstream (anything else is
  // Shadowcat's own 400).
  const noToken = await post(request('no-token', 'initialize', INIT));
  await expectRejected('no-token', noToken, { status: 401 });
  const badToken = await post(request('bad-token', 'initialize', INIT), { token: 'not-a-token' });
  await expectRejected('bad-token', badToken, { status: 401, error: 'invalid_token' });
  const prm = await fetch(metadataUrl);
  const metadata = await prm.json();
  assert(prm.status === 200 && metadata.resource === url, `the metadata names ${url}, got ${prm.status} ${JSON.stringify(metadata)}`);
  assert(metadata.authorization_servers?.[0]?.replace(/\/$/, '') === issuer.replace(/\/$/, ''), `the metadata names the issuer, got ${JSON.stringify(metadata)}`);
  passed('metadata', `resource ${metadata.resource}`);

  const alice = await signIn('alice');
  const bob = await signIn('bob');
  const session = alice.session;
  const { lastEventId } = await startAndDrop(alice.token, session);
  const before = upstreamLines().length;
  await expectRejected('replay-no-token', await resume(session, lastEventId), { status: 401 });
  await expectRejected('replay-bad-token', await resume(session, lastEventId, 'not-a-token'), { status: 401, error: 'invalid_token' });
  const served = upstreamLines()
    .slice(before - 1)
    .filter((l) => l.startsWith('request ') && /auth=(none|[0-9a-f]{12}) /.test(l) && !l.includes(`auth=${fingerprint(alice.token)}`));
  assert(served.length === 0, `the upstream served nothing to a stolen session id, got ${served.join('\n')}`);

  // Another credential the upstream accepts (as a refreshed token would
  // be): the replay is served, but only after the upstream has checked the
  // new credential on the session.
  const checkedFrom = upstreamLines().length;
  const renewed = await resume(session, lastEventId, bob.token);
  assert(renewed.status === 200, `a credential the upstream accepts gets the replay, got ${renewed.status}`);
  const replayed = progressOf(await readEvents(renewed, (ev) => ev.some((e) => e.message.id === 'count-1')));
  assert(replayed.length >= 2, `the replay carries the buffered events, got ${replayed.length}`);
  const checks = upstreamLines()
    .slice(checkedFrom - 1)
    .filter((l) => l.startsWith('request ') && l.includes(`auth=${fingerprint(bob.token)} `));
  assert(checks.length >= 1, 'the upstream was asked with the new credential before the replay');
  passed('replay-new-credential', `${replayed.length} events, after the upstream accepted it (${checks[0]})`);

  // And back: a POST with the first credential, accepted upstream, rebinds.
  const rebound = await post({ jsonrpc: '2.0', id: 'rebind-1', method: 'tools/list', params: {} }, { token: alice.token, session });
  const rebody = await readBody(rebound);
  assert(rebound.status === 200 && rebody.includes('"count"'), `a credential the upstream accepts is served, got ${rebound.status} ${rebody.slice(0, 300)}`);
  const seen = upstreamLines().filter((l) => l.includes(' id=rebind-1 '));
  assert(
    seen.length === 1 && seen[0].includes(`auth=${fingerprint(alice.token)} sub=alice `),
    `the upstream served the request with that credential, got ${seen.join('\n')}`,
  );
  passed('rebind', 'a POST with another token the upstream accepts is served on the session');
  await alice.client.close();
  await bob.client.close();
  return {};
}

async function main() {
  const extra = mode === 'oauth' ? await oauthCases() : await passthroughCases();
  const rejected = results.filter((r) => r.status >= 400).length;
  console.log(JSON.stringify({ ok: true, mode, cases: results.length, rejected, results, ...extra }));
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e?.stack ?? String(e));
    process.exit(1);
  },
);
