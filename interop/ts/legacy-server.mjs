// A legacy HTTP+SSE (2024-11-05) MCP server on the TypeScript SDK's
// SSEServerTransport, for the interop suite: GET /sse opens a session's
// stream (its first event names /messages?sessionId=…), POST /messages
// takes the client's messages. No Streamable HTTP: a POST to /sse gets 405.
//
// usage: node ts/legacy-server.mjs PORT
// Prints `listening PORT` once ready and `session N` per SSE connection.
// Tools: echo, count (progress per step), ask (log, sampling, elicitation),
// and drop, which cuts its session's SSE connection while it is in flight
// (it never answers), as a network drop would.
import { createServer } from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
import { CreateMessageResultSchema, ElicitResultSchema } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node ts/legacy-server.mjs PORT');
  process.exit(2);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function buildServer(res) {
  const server = new McpServer(
    { name: 'shadowcat-interop-legacy-server', version: '1.0.0' },
    { capabilities: { logging: {} } },
  );
  server.registerTool(
    'echo',
    { description: 'Echoes its input', inputSchema: { text: z.string() } },
    async ({ text }) => ({ content: [{ type: 'text', text }] }),
  );
  server.registerTool(
    'count',
    {
      description: 'Counts to `steps`, one progress notification per step',
      inputSchema: { steps: z.number().int().min(1).max(100_000), delayMs: z.number().int().min(0).max(1000) },
    },
    async ({ steps, delayMs }, extra) => {
      const progressToken = extra._meta?.progressToken;
      for (let i = 1; i <= steps; i++) {
        if (delayMs > 0) await sleep(delayMs);
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
  server.registerTool(
    'drop',
    { description: "Cuts this session's SSE connection and never answers", inputSchema: {} },
    async () => {
      res.destroy();
      await new Promise(() => {});
    },
  );
  server.registerResource(
    'greeting',
    'interop://greeting',
    { mimeType: 'text/plain', description: 'A fixed text' },
    async (uri) => ({ contents: [{ uri: uri.href, mimeType: 'text/plain', text: 'hello from the legacy server' }] }),
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
let sessions = 0;

const http = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/sse' && req.method === 'GET') {
      const transport = new SSEServerTransport('/messages', res);
      transports.set(transport.sessionId, transport);
      res.on('close', () => transports.delete(transport.sessionId));
      sessions += 1;
      console.log(`session ${sessions}`);
      await buildServer(res).connect(transport);
      return;
    }
    if (url.pathname === '/messages' && req.method === 'POST') {
      const transport = transports.get(url.searchParams.get('sessionId') ?? '');
      if (!transport) {
        res.writeHead(404).end('unknown session');
        return;
      }
      await transport.handlePostMessage(req, res);
      return;
    }
    res.writeHead(url.pathname === '/sse' ? 405 : 404, { allow: 'GET' }).end();
  } catch (e) {
    console.error('request failed:', e);
    if (!res.headersSent) res.writeHead(500).end();
    else res.end();
  }
});

http.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    http.close();
    process.exit(0);
  });
}
