// Legacy HTTP+SSE (2024-11-05) client checks on the TypeScript SDK's
// SSEClientTransport, for the interop suite. Each check exits 0 when every
// assertion held, else prints why and exits 1.
//
// usage: node ts/legacy-client.mjs CHECK URL
//   sdk-server  URL is Shadowcat's /sse in front of ts/server.mjs:
//               initialize, tools/list, echo, count with progress, a tool
//               that logs, samples and elicits (answered by POST),
//               resources, prompts
//   everything  URL is Shadowcat's /sse in front of server-everything
//               (stdio): tools/list, echo, get-sum, resources, prompts
//   fallback    the SDK's documented fallback (as mcp-remote does): try
//               Streamable HTTP at URL, and on a 4xx connect with
//               SSEClientTransport; against Shadowcat's /sse the first
//               attempt fails and the legacy one works; with a Streamable
//               HTTP URL the first works
//   modern      URL is Shadowcat's /mcp in front of ts/legacy-server.mjs
//               (a legacy-only server): the SDK's Streamable HTTP client
//               gets a session id, echo, count with progress, sampling,
//               elicitation, resources, prompts; then DELETE
//   drop        as modern, then the tool `drop`, whose SSE connection the
//               server cuts while it is in flight: the call gets a
//               JSON-RPC error naming the cause, and the next call works
//               (Shadowcat re-established the session upstream)
//   both        URL is Shadowcat's /sse in front of ts/legacy-server.mjs:
//               legacy on both sides; echo, count with progress, sampling
//               and elicitation across both hops
//   resume      URL is Shadowcat's /sse in front of ts/server.mjs: a
//               legacy client on the `eventsource` package whose /sse
//               connection is cut after the 4th progress notification of a
//               count; EventSource reconnects with Last-Event-ID and every
//               progress notification arrives exactly once, in order
import { EventSource } from 'eventsource';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CallToolResultSchema,
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';

const [check, url] = process.argv.slice(2);

function assert(cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`);
}

function text(result) {
  return result.content?.find((c) => c.type === 'text')?.text;
}

function newClient() {
  const client = new Client(
    { name: 'shadowcat-interop-legacy-client', version: '1.0.0' },
    { capabilities: { sampling: {}, elicitation: { form: {} } } },
  );
  client.logs = [];
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => client.logs.push(n.params.data));
  client.setRequestHandler(CreateMessageRequestSchema, async (req) => ({
    model: 'interop-model',
    role: 'assistant',
    content: { type: 'text', text: `sampled "${req.params.messages[0]?.content?.text}"` },
  }));
  client.setRequestHandler(ElicitRequestSchema, async () => ({ action: 'accept', content: { name: 'Ada' } }));
  return client;
}

/**
 * Records every message the transport delivers, in wire order. The SDK
 * runs notification handlers a microtask later but settles responses at
 * once, so a progress notification read in the same chunk as its response
 * (Shadowcat sends what it has in one write) never reaches `onprogress`:
 * delivery is checked on the wire.
 */
function traceMessages(transport) {
  const seen = [];
  const deliver = transport.onmessage;
  transport.onmessage = (m) => {
    seen.push(m);
    deliver?.(m);
  };
  return seen;
}

async function callWithProgress(client, seen, name, args) {
  const from = seen.length;
  const result = await client.callTool({ name, arguments: args }, CallToolResultSchema, {
    onprogress: () => {},
    timeout: 30_000,
  });
  const progress = seen
    .slice(from)
    .filter((m) => m.method === 'notifications/progress')
    .map((m) => m.params.progress);
  return { result, progress };
}

function assertCounted(result, progress, steps) {
  assert(text(result) === `counted to ${steps}`, `count result, got ${JSON.stringify(result)}`);
  const expected = Array.from({ length: steps }, (_, i) => i + 1);
  assert(JSON.stringify(progress) === JSON.stringify(expected), `progress 1..${steps} exactly once, in order, got ${progress}`);
}

async function sdkServer() {
  const client = newClient();
  const transport = new SSEClientTransport(new URL(url));
  await client.connect(transport);
  const seen = traceMessages(transport);
  const version = client.getServerVersion();
  assert(version?.name === 'shadowcat-interop-server', `server name, got ${JSON.stringify(version)}`);
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name).sort();
  assert(JSON.stringify(names) === '["ask","count","echo"]', `tools/list, got ${names}`);
  const echoed = await client.callTool({ name: 'echo', arguments: { text: 'héllo ✓' } });
  assert(text(echoed) === 'héllo ✓', `echo, got ${JSON.stringify(echoed)}`);
  const steps = 7;
  const { result, progress } = await callWithProgress(client, seen, 'count', { steps, delayMs: 5 });
  assertCounted(result, progress, steps);
  const asked = await client.callTool({ name: 'ask', arguments: { question: 'why?' } });
  assert(text(asked) === 'sampled "why?" / accept Ada', `ask, got ${JSON.stringify(asked)}`);
  assert(client.logs.includes('asking: why?'), `the log notification arrived, got ${client.logs}`);
  const read = await client.readResource({ uri: 'interop://greeting' });
  assert(read.contents[0]?.text === 'hello from the interop server', `resource, got ${JSON.stringify(read)}`);
  const prompt = await client.getPrompt({ name: 'greet', arguments: { name: 'Ada' } });
  assert(prompt.messages[0]?.content?.text === 'Say hello to Ada.', `prompt, got ${JSON.stringify(prompt)}`);
  await client.close();
  console.log(`ok: legacy SSE client: echo, ${steps} progress once in order, sampling, elicitation, resources, prompts`);
}

async function everything() {
  const client = newClient();
  await client.connect(new SSEClientTransport(new URL(url)));
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name);
  assert(names.includes('echo') && names.includes('get-sum'), `tools/list, got ${names}`);
  const echoed = await client.callTool({ name: 'echo', arguments: { message: 'through shadowcat' } });
  assert(text(echoed)?.includes('through shadowcat'), `echo, got ${JSON.stringify(echoed)}`);
  const sum = await client.callTool({ name: 'get-sum', arguments: { a: 40, b: 2 } });
  assert(text(sum)?.includes('42'), `get-sum, got ${JSON.stringify(sum)}`);
  const { resources } = await client.listResources();
  assert(resources.length > 0, 'resources/list is not empty');
  const read = await client.readResource({ uri: resources[0].uri });
  assert(read.contents.length > 0, 'resources/read has contents');
  const prompt = await client.getPrompt({ name: 'simple-prompt' });
  assert(prompt.messages.length > 0, 'prompts/get has messages');
  await client.close();
  console.log(`ok: legacy SSE client against a stdio server: ${names.length} tools, echo, get-sum, resources, prompts`);
}

/** The SDK's documented backwards-compatible client: Streamable HTTP first, SSE on failure. */
async function fallback() {
  const base = new URL(url);
  let client = newClient();
  let used;
  try {
    await client.connect(new StreamableHTTPClientTransport(base));
    used = 'streamable-http';
  } catch (e) {
    client = newClient();
    await client.connect(new SSEClientTransport(base));
    used = `sse (after: ${String(e.message ?? e).split('\n')[0].slice(0, 80)})`;
  }
  const echoed = await client.callTool({ name: 'echo', arguments: { text: 'fallback' } });
  assert(text(echoed) === 'fallback', `echo, got ${JSON.stringify(echoed)}`);
  await client.close();
  console.log(`ok: connected with ${used}`);
}

/** A fetch whose first /sse body is cut right after the event with `cutAfter` progress notifications. */
function cuttingFetch(cutAfter, log) {
  let connects = 0;
  return async (input, init) => {
    const res = await fetch(input, init);
    const headers = new Headers(init?.headers);
    connects += 1;
    log.push({ connect: connects, lastEventId: headers.get('last-event-id'), status: res.status });
    if (connects > 1 || !res.body) return res;
    const decoder = new TextDecoder();
    let seen = 0;
    let pending = '';
    const reader = res.body.getReader();
    const body = new ReadableStream({
      async pull(controller) {
        const { done, value } = await reader.read();
        if (done) return controller.close();
        pending += decoder.decode(value, { stream: true });
        // Pass whole events on; cut after the one that completes the count.
        let out = '';
        let at;
        while ((at = pending.indexOf('\n\n')) >= 0) {
          const event = pending.slice(0, at + 2);
          pending = pending.slice(at + 2);
          out += event;
          if (event.includes('notifications/progress')) seen += 1;
          if (seen >= cutAfter) {
            controller.enqueue(new TextEncoder().encode(out));
            controller.error(new Error('cut by the test'));
            await reader.cancel();
            return;
          }
        }
        if (out) controller.enqueue(new TextEncoder().encode(out));
      },
      cancel() {
        return reader.cancel();
      },
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
}

/**
 * A minimal legacy client on the `eventsource` package (the SDK's own
 * EventSource): its SSEClientTransport replaces the EventSource's request
 * headers with its own, so it never sends Last-Event-ID on a reconnect.
 */
async function resume() {
  const steps = 12;
  const log = [];
  const es = new EventSource(url, { fetch: cuttingFetch(4, log) });
  const endpoints = [];
  const messages = [];
  const ids = [];
  const waiters = [];
  es.addEventListener('endpoint', (e) => endpoints.push(e.data));
  es.addEventListener('message', (e) => {
    const msg = JSON.parse(e.data);
    messages.push(msg);
    ids.push(e.lastEventId);
    for (const w of waiters.splice(0)) w();
  });
  const until = async (pred, what) => {
    const deadline = Date.now() + 30_000;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => {
        waiters.push(r);
        setTimeout(r, 200);
      });
    }
  };
  await until(() => endpoints.length > 0, 'the endpoint event');
  const post = async (body) => {
    const res = await fetch(new URL(endpoints[0], url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    await res.body?.cancel();
    assert(res.status === 202, `POST answered 202, got ${res.status}`);
  };
  await post({
    jsonrpc: '2.0',
    id: 1,
    method: 'initialize',
    params: { protocolVersion: '2024-11-05', capabilities: {}, clientInfo: { name: 'legacy-resume', version: '1' } },
  });
  await until(() => messages.some((m) => m.id === 1), 'the initialize result');
  await post({ jsonrpc: '2.0', method: 'notifications/initialized' });
  await post({
    jsonrpc: '2.0',
    id: 2,
    method: 'tools/call',
    params: { name: 'count', arguments: { steps, delayMs: 100 }, _meta: { progressToken: 'p' } },
  });
  await until(() => messages.some((m) => m.id === 2), 'the count result');
  const progress = messages.filter((m) => m.method === 'notifications/progress').map((m) => m.params.progress);
  const result = messages.find((m) => m.id === 2).result;
  assertCounted(result, progress, steps);
  assert(new Set(ids).size === ids.length, `event ids never repeat, got ${ids}`);
  assert(log.length >= 2, `the client reconnected, got ${JSON.stringify(log)}`);
  const resumed = log[1];
  assert(resumed.lastEventId && resumed.status === 200, `the reconnect carried Last-Event-ID and got 200, got ${JSON.stringify(resumed)}`);
  assert(endpoints.length === 2 && endpoints[0] === endpoints[1], `the reconnect names the same endpoint, got ${endpoints}`);
  await post({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'echo', arguments: { text: 'after the cut' } } });
  await until(() => messages.some((m) => m.id === 3), 'the echo result');
  assert(text(messages.find((m) => m.id === 3).result) === 'after the cut', 'echo after the resume');
  es.close();
  console.log(`ok: cut after 4 progress notifications, resumed with Last-Event-ID ${resumed.lastEventId}; ${steps} progress once, in order; ${ids.length} events, none twice`);
}

async function both() {
  const client = newClient();
  const transport = new SSEClientTransport(new URL(url));
  await client.connect(transport);
  const seen = traceMessages(transport);
  assert(client.getServerVersion()?.name === 'shadowcat-interop-legacy-server', 'the legacy server answered');
  const echoed = await client.callTool({ name: 'echo', arguments: { text: 'both ways' } });
  assert(text(echoed) === 'both ways', `echo, got ${JSON.stringify(echoed)}`);
  const steps = 7;
  const { result, progress } = await callWithProgress(client, seen, 'count', { steps, delayMs: 5 });
  assertCounted(result, progress, steps);
  const asked = await client.callTool({ name: 'ask', arguments: { question: 'why?' } });
  assert(text(asked) === 'sampled "why?" / accept Ada', `ask, got ${JSON.stringify(asked)}`);
  await client.close();
  console.log(`ok: legacy client, legacy server: echo, ${steps} progress once in order, sampling, elicitation`);
}

async function connectModern() {
  const client = newClient();
  const transport = new StreamableHTTPClientTransport(new URL(url));
  await client.connect(transport);
  assert(typeof transport.sessionId === 'string' && transport.sessionId.length > 0, 'Shadowcat set a session id');
  return { client, transport, seen: traceMessages(transport) };
}

async function modern() {
  const { client, transport, seen } = await connectModern();
  const version = client.getServerVersion();
  assert(version?.name === 'shadowcat-interop-legacy-server', `server name, got ${JSON.stringify(version)}`);
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name).sort();
  assert(JSON.stringify(names) === '["ask","count","drop","echo"]', `tools/list, got ${names}`);
  const echoed = await client.callTool({ name: 'echo', arguments: { text: 'héllo ✓' } });
  assert(text(echoed) === 'héllo ✓', `echo, got ${JSON.stringify(echoed)}`);
  const steps = 7;
  const { result, progress } = await callWithProgress(client, seen, 'count', { steps, delayMs: 5 });
  assertCounted(result, progress, steps);
  const asked = await client.callTool({ name: 'ask', arguments: { question: 'why?' } });
  assert(text(asked) === 'sampled "why?" / accept Ada', `ask, got ${JSON.stringify(asked)}`);
  assert(client.logs.includes('asking: why?'), `the log notification arrived, got ${client.logs}`);
  const read = await client.readResource({ uri: 'interop://greeting' });
  assert(read.contents[0]?.text === 'hello from the legacy server', `resource, got ${JSON.stringify(read)}`);
  const prompt = await client.getPrompt({ name: 'greet', arguments: { name: 'Ada' } });
  assert(prompt.messages[0]?.content?.text === 'Say hello to Ada.', `prompt, got ${JSON.stringify(prompt)}`);
  await transport.terminateSession();
  await client.close();
  console.log(`ok: Streamable HTTP client, legacy server: session, echo, ${steps} progress once in order, sampling, elicitation, resources, prompts, DELETE`);
}

async function drop() {
  const { client } = await connectModern();
  const before = await client.callTool({ name: 'echo', arguments: { text: 'before' } });
  assert(text(before) === 'before', 'echo before the drop');
  let failure;
  try {
    await client.callTool({ name: 'drop', arguments: {} }, CallToolResultSchema, { timeout: 20_000 });
  } catch (e) {
    failure = String(e.message ?? e);
  }
  assert(failure && /legacy/.test(failure) && /SSE/.test(failure), `the in-flight call fails naming the cause, got ${failure}`);
  const after = await client.callTool({ name: 'echo', arguments: { text: 'after' } });
  assert(text(after) === 'after', `echo after the re-establishment, got ${JSON.stringify(after)}`);
  await client.close();
  console.log(`ok: the in-flight call failed (${failure.slice(0, 100)}); the next call worked`);
}

const checks = { 'sdk-server': sdkServer, everything, fallback, resume, modern, drop, both };
const run = checks[check];
if (!run || !url) {
  console.error(`usage: node ts/legacy-client.mjs ${Object.keys(checks).join('|')} URL`);
  process.exit(2);
}
const timer = setTimeout(() => {
  console.error(`${check}: timed out`);
  process.exit(1);
}, 60_000);
try {
  await run();
  clearTimeout(timer);
  process.exit(0);
} catch (e) {
  console.error(`${check} failed:`, e);
  process.exit(1);
}
