// A stateful MCP server on the TypeScript SDK (Streamable HTTP, with the
// SDK's InMemoryEventStore so streams are resumable), for the interop suite.
//
// usage: node ts/server.mjs PORT [--no-event-store] [--log-requests] [--tls-cert FILE --tls-key FILE]
// Listens on 127.0.0.1:PORT/mcp and prints `listening PORT` once ready.
//   --no-event-store  no event store: no event ids, no priming events, and a
//                     GET with Last-Event-ID cannot resume (the SDK answers 400)
//   --log-requests    prints `request METHOD RPC id=ID auth=FP client=C
//                     aud=A session=S` for every request (FP: the first 12
//                     hex digits of the bearer token's SHA-256, or `none`;
//                     C and A: claims of a JWT bearer, unverified), so a
//                     check can tell which credential reached the upstream
//   --tls-cert FILE --tls-key FILE
//                     serve HTTPS (Node's `https`) with this PEM certificate
//                     and key
// Every GET with a Last-Event-ID prints `resume ID` on stdout, so a check can
// tell whether (and from where) a stream was resumed upstream.
import { createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import { createHash, randomUUID } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { InMemoryEventStore } from '@modelcontextprotocol/sdk/examples/shared/inMemoryEventStore.js';
import { CreateMessageResultSchema, ElicitResultSchema } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';

const [portArg, ...rest] = process.argv.slice(2);
const port = Number(portArg);
const flags = [];
const files = {};
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === '--tls-cert' || rest[i] === '--tls-key') files[rest[i]] = rest[++i];
  else flags.push(rest[i]);
}
const unknown = flags.filter((f) => f !== '--no-event-store' && f !== '--log-requests');
const tls = files['--tls-cert'] !== undefined;
if (!Number.isInteger(port) || port <= 0 || unknown.length > 0 || tls !== (files['--tls-key'] !== undefined)) {
  console.error('usage: node ts/server.mjs PORT [--no-event-store] [--log-requests] [--tls-cert FILE --tls-key FILE]');
  process.exit(2);
}
const withEventStore = !flags.includes('--no-event-store');
const logRequests = flags.includes('--log-requests');

// The SDK's InMemoryEventStore orders ids by millisecond timestamp (then a
// random suffix), so two events stored in the same millisecond may replay in
// either order. With a store, the events of one stream are kept at least
// this far apart; without one nothing is ever replayed, so no spacing.
const MIN_GAP_MS = withEventStore ? 2 : 0;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function buildServer() {
  const server = new McpServer(
    { name: 'shadowcat-interop-server', version: '1.0.0' },
    { capabilities: { logging: {} } },
  );

  server.registerTool(
    'echo',
    { description: 'Echoes its input', inputSchema: { text: z.string() } },
    async ({ text }) => ({ content: [{ type: 'text', text }] }),
  );

  // Sends `steps` progress notifications `delayMs` apart, then the result.
  // With an event store every gap (the result's too) is at least MIN_GAP_MS
  // so replay order is exact; without one, `delayMs: 0` sends them at once.
  server.registerTool(
    'count',
    {
      description: 'Counts to `steps`, one progress notification per step',
      inputSchema: { steps: z.number().int().min(1).max(100_000), delayMs: z.number().int().min(0).max(1000) },
    },
    async ({ steps, delayMs }, extra) => {
      const gap = Math.max(delayMs, MIN_GAP_MS);
      const progressToken = extra._meta?.progressToken;
      for (let i = 1; i <= steps; i++) {
        if (gap > 0) await sleep(gap);
        if (progressToken !== undefined) {
          await extra.sendNotification({
            method: 'notifications/progress',
            params: { progressToken, progress: i, total: steps, message: `step ${i}` },
          });
        }
      }
      if (MIN_GAP_MS > 0) await sleep(MIN_GAP_MS);
      return { content: [{ type: 'text', text: `counted to ${steps}` }] };
    },
  );

  // Server-to-client traffic on the request's stream: a log message, a
  // sampling request and an elicitation request, whose answers the client
  // POSTs back through the proxy.
  server.registerTool(
    'ask',
    { description: 'Logs, samples and elicits, then reports the answers', inputSchema: { question: z.string() } },
    async ({ question }, extra) => {
      await extra.sendNotification({
        method: 'notifications/message',
        params: { level: 'info', logger: 'ask', data: `asking: ${question}` },
      });
      const sampled = await extra.sendRequest(
        {
          method: 'sampling/createMessage',
          params: { messages: [{ role: 'user', content: { type: 'text', text: question } }], maxTokens: 16 },
        },
        CreateMessageResultSchema,
      );
      const elicited = await extra.sendRequest(
        {
          method: 'elicitation/create',
          params: {
            message: 'Who is asking?',
            requestedSchema: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] },
          },
        },
        ElicitResultSchema,
      );
      const answer = sampled.content.type === 'text' ? sampled.content.text : sampled.content.type;
      return { content: [{ type: 'text', text: `${answer} / ${elicited.action} ${elicited.content?.name}` }] };
    },
  );

  server.registerResource(
    'greeting',
    'interop://greeting',
    { mimeType: 'text/plain', description: 'A fixed text' },
    async (uri) => ({ contents: [{ uri: uri.href, mimeType: 'text/plain', text: 'hello from the interop server' }] }),
  );

  server.registerPrompt(
    'greet',
    { description: 'Greets someone', argsSchema: { name: z.string() } },
    ({ name }) => ({ messages: [{ role: 'user', content: { type: 'text', text: `Say hello to ${name}.` } }] }),
  );

  return server;
}

/** Session id -> transport. */
const transports = new Map();

function reply(res, status, message) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message }, id: null }));
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text.length === 0 ? undefined : JSON.parse(text);
}

/** One line naming the request and the credential it carried. */
function logRequest(req, body) {
  const [type, token] = (req.headers.authorization ?? '').split(' ');
  const bearer = type?.toLowerCase() === 'bearer' && token ? token : undefined;
  let claims = {};
  try {
    claims = bearer ? JSON.parse(Buffer.from(bearer.split('.')[1] ?? '', 'base64url').toString('utf8')) : {};
  } catch {
    // An opaque token has no claims to show.
  }
  const fp = bearer ? createHash('sha256').update(bearer).digest('hex').slice(0, 12) : 'none';
  const rpc = body?.method ?? (body?.result !== undefined ? 'response' : '-');
  console.log(
    `request ${req.method} ${rpc} id=${body?.id ?? '-'} auth=${fp} client=${claims.client_id ?? '-'} aud=${claims.aud ?? '-'} session=${req.headers['mcp-session-id'] ?? '-'}`,
  );
}

const handler = async (req, res) => {
  try {
    if (new URL(req.url, 'http://127.0.0.1').pathname !== '/mcp') return reply(res, 404, 'not found');
    const sessionId = req.headers['mcp-session-id'];
    const existing = typeof sessionId === 'string' ? transports.get(sessionId) : undefined;
    if (req.method === 'POST') {
      const body = await readJson(req);
      if (logRequests) logRequest(req, body);
      if (existing) return await existing.handleRequest(req, res, body);
      if (sessionId !== undefined) return reply(res, 404, 'session not found');
      if (body?.method !== 'initialize') return reply(res, 400, 'no session id and not an initialize request');
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        eventStore: withEventStore ? new InMemoryEventStore() : undefined,
        onsessioninitialized: (id) => transports.set(id, transport),
        onsessionclosed: (id) => transports.delete(id),
      });
      transport.onclose = () => {
        if (transport.sessionId) transports.delete(transport.sessionId);
      };
      await buildServer().connect(transport);
      return await transport.handleRequest(req, res, body);
    }
    if (req.method === 'GET' || req.method === 'DELETE') {
      if (logRequests) logRequest(req, undefined);
      const lastEventId = req.headers['last-event-id'];
      if (req.method === 'GET' && typeof lastEventId === 'string') console.log(`resume ${lastEventId}`);
      if (!existing) return reply(res, sessionId === undefined ? 400 : 404, 'session not found');
      return await existing.handleRequest(req, res);
    }
    res.writeHead(405, { allow: 'GET, POST, DELETE' }).end();
  } catch (e) {
    console.error('request failed:', e);
    if (!res.headersSent) reply(res, 500, 'internal error');
    else res.end();
  }
};

const http = tls
  ? createHttpsServer({ cert: readFileSync(files['--tls-cert']), key: readFileSync(files['--tls-key']) }, handler)
  : createServer(handler);

http.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    http.close();
    process.exit(0);
  });
}
