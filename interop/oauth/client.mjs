// The TS SDK client running its own OAuth flow against a protected MCP
// endpoint: the 401's `WWW-Authenticate` resource_metadata, the protected
// resource metadata (RFC 9728), the authorization server's metadata,
// dynamic client registration, authorization code + PKCE (completed
// unattended, the code received by a loopback redirect_uri), the token
// exchange with the resource indicator (RFC 8707); then tools/list, echo
// and a tools/call with progress. A call refused with 403
// insufficient_scope is made again once the SDK has authorized the scope
// the challenge names (step-up; `step_ups` in the summary). Exits 0 when
// every assertion held and prints one JSON summary line; else prints why
// and exits 1.
//
// usage: node oauth/client.mjs URL [--login NAME] [--steps N]
//   --login NAME  the user to sign in as (default alice)
//   --steps N     progress notifications asked of `count` (default 5)
import { CallToolResultSchema } from '@modelcontextprotocol/sdk/types.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { UnattendedOAuthProvider, assert, connectWithOAuth, fingerprint, jwtClaims } from './lib.mjs';

const args = process.argv.slice(2);
const url = args.shift();
let login = 'alice';
let steps = 5;
while (args.length > 0) {
  const flag = args.shift();
  if (flag === '--login' && args.length > 0) login = args.shift();
  else if (flag === '--steps' && /^\d+$/.test(args[0] ?? '')) steps = Number(args.shift());
  else usage();
}
if (!URL.canParse(url ?? '')) usage();

function usage() {
  console.error('usage: node oauth/client.mjs URL [--login NAME] [--steps N]');
  process.exit(2);
}

function text(result) {
  return result.content?.find((c) => c.type === 'text')?.text;
}

async function main() {
  const fetchLog = [];
  const provider = await UnattendedOAuthProvider.create({ loginHint: login, log: fetchLog });
  const { client, transport } = await connectWithOAuth(url, provider, fetchLog);
  for (const line of fetchLog) console.log(`flow ${line}`);

  // The flow as the spec describes it, in order.
  const at = (pattern) => fetchLog.findIndex((l) => pattern.test(l));
  const order = [
    at(/^POST .* -> 401$/),
    at(/^GET .*\/\.well-known\/oauth-protected-resource.* -> 200$/),
    at(/^GET .*\/\.well-known\/(oauth-authorization-server|openid-configuration).* -> 200$/),
    at(/^POST .*\/reg -> 201$/),
    at(/^authorize /),
    at(/^code received/),
    at(/^POST .*\/token -> 200$/),
  ];
  assert(order.every((i) => i >= 0), `every step of the flow happened: ${JSON.stringify(fetchLog)}`);
  assert(order.every((v, i) => i === 0 || order[i - 1] < v), `the steps came in order: ${JSON.stringify(fetchLog)}`);
  const origin = new URL(url).origin;
  const metadataFetch = fetchLog[order[1]];
  assert(
    metadataFetch.startsWith(`GET ${origin}/.well-known/oauth-protected-resource`),
    `the resource metadata came from ${origin} (named by its 401): ${metadataFetch}`,
  );
  const authorize = fetchLog[order[4]];
  assert(authorize.includes(`resource=${url}`), `the resource indicator is the MCP URL: ${authorize}`);
  assert(authorize.endsWith('pkce=S256'), `PKCE S256: ${authorize}`);

  const token = (await provider.tokens()).access_token;
  const claims = jwtClaims(token);
  if (claims) {
    assert(claims.aud === url, `the JWT's aud is the MCP URL, got ${claims.aud}`);
    assert(claims.sub === login, `the JWT's sub is ${login}, got ${claims.sub}`);
  }

  // A 403 insufficient_scope makes the SDK authorize again with the scope
  // the challenge names (step-up); the call is then made again.
  let stepUps = 0;
  const stepUp = async (call) => {
    try {
      return await call();
    } catch (e) {
      if (!(e instanceof UnauthorizedError) || stepUps > 0) throw e;
      stepUps++;
      assert(provider.code, 'the step-up authorization produced a code');
      await transport.finishAuth(provider.code);
      return await call();
    }
  };

  const { tools } = await stepUp(() => client.listTools());
  const names = tools.map((t) => t.name).sort();
  assert(names.includes('echo') && names.includes('count'), `tools/list has echo and count, got ${names}`);
  const echoed = await stepUp(() => client.callTool({ name: 'echo', arguments: { text: 'oauth ✓' } }));
  assert(text(echoed) === 'oauth ✓', `echo, got ${JSON.stringify(echoed)}`);
  const progress = [];
  const counted = await stepUp(() =>
    client.callTool({ name: 'count', arguments: { steps, delayMs: 5 } }, CallToolResultSchema, {
      onprogress: (p) => progress.push(p.progress),
      timeout: 20_000,
    }),
  );
  assert(text(counted) === `counted to ${steps}`, `count result, got ${JSON.stringify(counted)}`);
  const expected = Array.from({ length: steps }, (_, i) => i + 1);
  assert(JSON.stringify(progress) === JSON.stringify(expected), `progress 1..${steps} in order, got ${progress}`);

  const sessionId = transport.sessionId;
  await transport.terminateSession().catch(() => {});
  await client.close();
  provider.close();
  console.log(
    JSON.stringify({
      ok: true,
      login,
      client_id: provider.clientInformation()?.client_id,
      token: fingerprint(token),
      // Every token the client was given (a step-up adds one).
      tokens: fetchLog.filter((l) => l.startsWith('tokens access=')).map((l) => l.slice('tokens access='.length)),
      token_format: claims ? 'jwt' : 'opaque',
      aud: claims?.aud,
      scope: (await provider.tokens()).scope,
      step_ups: stepUps,
      session: sessionId,
      tools: names,
      progress: progress.length,
    }),
  );
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e?.stack ?? String(e));
    process.exit(1);
  },
);
