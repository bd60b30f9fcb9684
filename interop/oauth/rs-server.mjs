// A stateful MCP server on the TypeScript SDK that is its own OAuth
// resource server: the SDK's `requireBearerAuth` middleware with a verifier
// that introspects tokens (RFC 7662) at the authorization server, and the
// SDK's `mcpAuthMetadataRouter` serving its RFC 9728 metadata. The target
// of Shadowcat's `passthrough` mode.
//
// usage: node oauth/rs-server.mjs PORT AS_URL [--audience URL]...
// Listens on 127.0.0.1:PORT/mcp; prints `listening PORT` once ready.
//   AS_URL          the issuer (oauth/as.mjs); its tokens for this server
//                   must be opaque (as.mjs --opaque or --opaque-resource)
//   --audience URL  a further resource this server answers for (the public
//                   URL of a proxy in front of it); its own URL always is
// A token is accepted when it is active, its `aud` is one of those
// resources, it has the scope `mcp` and has not expired. Every request
// prints `request METHOD RPC id=ID auth=FP sub=SUB session=S` (FP: the first 12
// hex digits of the token's SHA-256, `none` without one; a rejected one
// prints `rejected STATUS auth=FP`), so a check can tell what reached it.
// Tools: `echo` and `count` (progress notifications), as ts/server.mjs.
import { randomUUID } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import { requireBearerAuth } from '@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js';
import { mcpAuthMetadataRouter, getOAuthProtectedResourceMetadataUrl } from '@modelcontextprotocol/sdk/server/auth/router.js';
import { InvalidTokenError, ServerError } from '@modelcontextprotocol/sdk/server/auth/errors.js';
import { z } from 'zod';
import { fingerprint } from './lib.mjs';

/** This server's confidential client at the authorization server (oauth/as.mjs). */
const INTROSPECTION_CLIENT = { id: 'rs-introspect', secret: 'rs-secret' };
const REQUIRED_SCOPES = ['mcp'];

const args = process.argv.slice(2);
const port = Number(args.shift());
const issuer = args.shift();
const audiences = new Set();
while (args.length > 0) {
  const flag = args.shift();
  if (flag === '--audience' && args.length > 0) audiences.add(args.shift().replace(/\/$/, ''));
  else usage();
}
if (!Number.isInteger(port) || port <= 0 || !URL.canParse(issuer ?? '')) usage();

function usage() {
  console.error('usage: node oauth/rs-server.mjs PORT AS_URL [--audience URL]...');
  process.exit(2);
}

const resource = new URL(`http://127.0.0.1:${port}/mcp`);
audiences.add(resource.href);

function bearer(req) {
  const [type, token] = (req.headers.authorization ?? '').split(' ');
  return type?.toLowerCase() === 'bearer' ? token : undefined;
}

async function fetchJson(url, init) {
  const res = await fetch(url, init);
  if (!res.ok) throw new ServerError(`${url}: HTTP ${res.status}`);
  return res.json();
}

const asMetadata = await fetchJson(new URL('/.well-known/openid-configuration', issuer));

/** RFC 7662 introspection at the authorization server. */
const verifier = {
  async verifyAccessToken(token) {
    const basic = Buffer.from(`${INTROSPECTION_CLIENT.id}:${INTROSPECTION_CLIENT.secret}`).toString('base64');
    const info = await fetchJson(asMetadata.introspection_endpoint, {
      method: 'POST',
      headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    });
    if (!info.active) throw new InvalidTokenError('Token is not active');
    const aud = [info.aud ?? []].flat().map((a) => String(a).replace(/\/$/, ''));
    if (!aud.some((a) => audiences.has(a))) throw new InvalidTokenError('Token was not issued for this resource');
    return {
      token,
      clientId: info.client_id,
      scopes: typeof info.scope === 'string' ? info.scope.split(' ') : [],
      expiresAt: info.exp,
      resource: new URL(aud[0]),
      extra: { sub: info.sub ?? info.client_id },
    };
  },
};

function buildServer() {
  const server = new McpServer({ name: 'shadowcat-interop-rs-server', version: '1.0.0' }, { capabilities: { logging: {} } });
  server.registerTool(
    'echo',
    { description: 'Echoes its input', inputSchema: { text: z.string() } },
    async ({ text }) => ({ content: [{ type: 'text', text }] }),
  );
  server.registerTool(
    'count',
    {
      description: 'Counts to `steps`, one progress notification per step',
      inputSchema: { steps: z.number().int().min(1).max(10_000), delayMs: z.number().int().min(0).max(1000) },
    },
    async ({ steps, delayMs }, extra) => {
      const progressToken = extra._meta?.progressToken;
      for (let i = 1; i <= steps; i++) {
        if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
        if (progressToken !== undefined) {
          await extra.sendNotification({
            method: 'notifications/progress',
            params: { progressToken, progress: i, total: steps, message: `step ${i}` },
          });
        }
      }
      return { content: [{ type: 'text', text: `counted to ${steps}` }] };
    },
  );
  return server;
}

const app = createMcpExpressApp();
app.use(
  mcpAuthMetadataRouter({
    oauthMetadata: asMetadata,
    resourceServerUrl: resource,
    scopesSupported: REQUIRED_SCOPES,
    resourceName: 'shadowcat interop resource server',
  }),
);

// Logs what was rejected (requireBearerAuth answers it) before the check.
app.use('/mcp', (req, res, next) => {
  res.on('finish', () => {
    if (res.statusCode === 401 || res.statusCode === 403) {
      console.log(`rejected ${res.statusCode} ${req.method} auth=${fingerprint(bearer(req))}`);
    }
  });
  next();
});
app.use(
  '/mcp',
  requireBearerAuth({
    verifier,
    requiredScopes: REQUIRED_SCOPES,
    resourceMetadataUrl: getOAuthProtectedResourceMetadataUrl(resource),
  }),
);

/** Session id -> transport. */
const transports = new Map();

function reply(res, status, message) {
  res.status(status).json({ jsonrpc: '2.0', error: { code: -32000, message }, id: null });
}

app.all('/mcp', async (req, res) => {
  try {
    const sessionId = req.headers['mcp-session-id'];
    const rpc = req.method === 'POST' ? (req.body?.method ?? (req.body?.result !== undefined ? 'response' : '-')) : '-';
    console.log(
      `request ${req.method} ${rpc} id=${req.body?.id ?? '-'} auth=${fingerprint(req.auth?.token)} sub=${req.auth?.extra?.sub} session=${sessionId ?? '-'}`,
    );
    const existing = typeof sessionId === 'string' ? transports.get(sessionId) : undefined;
    if (existing) return await existing.handleRequest(req, res, req.body);
    if (sessionId !== undefined) return reply(res, 404, 'session not found');
    if (req.method !== 'POST' || req.body?.method !== 'initialize') {
      return reply(res, 400, 'no session id and not an initialize request');
    }
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => transports.set(id, transport),
      onsessionclosed: (id) => transports.delete(id),
    });
    transport.onclose = () => {
      if (transport.sessionId) transports.delete(transport.sessionId);
    };
    await buildServer().connect(transport);
    return await transport.handleRequest(req, res, req.body);
  } catch (e) {
    console.error('request failed:', e);
    if (!res.headersSent) reply(res, 500, 'internal error');
    else res.end();
  }
});

const http = app.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    http.close();
    process.exit(0);
  });
}
