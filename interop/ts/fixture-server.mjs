// The conformance fixture server: every server scenario of the MCP
// conformance suite (stable and pre-release, up to 2025-11-25) on the
// TypeScript SDK's low-level `Server` and its Streamable HTTP transport.
// Written from the suite's scenario descriptions; `cargo xtask interop`
// runs the suite against it directly and through Shadowcat.
//
// usage: node ts/fixture-server.mjs PORT
// Listens on 127.0.0.1:PORT/mcp and prints `listening PORT` once ready.
//
// What it serves:
// - tools: test_simple_text, test_image_content, test_audio_content,
//   test_embedded_resource, test_multiple_content_types,
//   test_tool_with_logging, test_tool_with_progress, test_error_handling,
//   test_sampling, test_elicitation, test_elicitation_sep1034_defaults,
//   test_elicitation_sep1330_enums, test_reconnection (SSE polling: closes
//   its request's stream after the priming event, then answers, so the
//   client resumes with GET + Last-Event-ID) and json_schema_2020_12_tool;
// - resources test://static-text, test://static-binary,
//   test://watched-resource (subscribe/unsubscribe), the template
//   test://template/{id}/data; prompts test_simple_prompt,
//   test_prompt_with_arguments, test_prompt_with_embedded_resource,
//   test_prompt_with_image; completion for test_prompt_with_arguments;
//   logging/setLevel (filters the tools' log messages); ping;
// - sessions with DELETE (then 404; at most MAX_SESSIONS), POST bodies up
//   to MAX_BODY_BYTES (413 beyond), an event store whose ids are ordered
//   per stream (priming events with `retry:` for 2025-11-25 clients,
//   resumption with Last-Event-ID), and Host/Origin checks against DNS
//   rebinding (403 unless localhost, 127.0.0.1 or [::1]).
import { createServer } from 'node:http';
import { randomUUID } from 'node:crypto';
import { deflateSync } from 'node:zlib';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  ErrorCode,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  McpError,
  ReadResourceRequestSchema,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';

const [portArg, ...rest] = process.argv.slice(2);
const port = Number(portArg);
if (!Number.isInteger(port) || port <= 0 || rest.length > 0) {
  console.error('usage: node ts/fixture-server.mjs PORT');
  process.exit(2);
}

/** `retry:` sent with every priming event (ms). */
const RETRY_MS = 500;
/** Sessions held at once; an initialize over it gets 503. */
const MAX_SESSIONS = 1000;
/** Events kept per stream for resumption; older ones are dropped. */
const MAX_EVENTS_PER_STREAM = 1000;
/** Largest POST body read; a larger one gets 413. */
const MAX_BODY_BYTES = 4 * 1024 * 1024;
/** Resource-not-found error code (MCP). */
const RESOURCE_NOT_FOUND = -32002;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- media ------------------------------------------------------------------

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/** A 1x1 red pixel, RGB, 8 bits per channel. */
function redPixelPng() {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(1, 0);
  ihdr.writeUInt32BE(1, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: RGB
  const scanline = Buffer.from([0, 255, 0, 0]); // filter 0, then R G B
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(scanline)),
    pngChunk('IEND', Buffer.alloc(0)),
  ]).toString('base64');
}

/** 10 ms of silence: PCM, 8 kHz, mono, 8 bits. */
function silentWav() {
  const samples = Buffer.alloc(80, 0x80);
  const header = Buffer.alloc(44);
  header.write('RIFF', 0, 'ascii');
  header.writeUInt32LE(36 + samples.length, 4);
  header.write('WAVE', 8, 'ascii');
  header.write('fmt ', 12, 'ascii');
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // channels
  header.writeUInt32LE(8000, 24); // sample rate
  header.writeUInt32LE(8000, 28); // byte rate
  header.writeUInt16LE(1, 32); // block align
  header.writeUInt16LE(8, 34); // bits per sample
  header.write('data', 36, 'ascii');
  header.writeUInt32LE(samples.length, 40);
  return Buffer.concat([header, samples]).toString('base64');
}

const PNG = redPixelPng();
const WAV = silentWav();

// ---- event store --------------------------------------------------------------

/**
 * One session's events, kept per stream in order, for resumption. Ids are
 * `{stream}.{n}` with `n` counting up per store, so replay order is exact.
 * Priming events (stored as `{}`) move the cursor but are never replayed.
 */
class OrderedEventStore {
  constructor() {
    this.streams = new Map();
    this.next = 0;
  }

  async storeEvent(streamId, message) {
    const n = this.next++;
    let events = this.streams.get(streamId);
    if (!events) {
      events = [];
      this.streams.set(streamId, events);
    }
    events.push({ n, message });
    if (events.length > MAX_EVENTS_PER_STREAM) events.shift();
    return `${streamId}.${n}`;
  }

  parse(eventId) {
    const dot = eventId.lastIndexOf('.');
    if (dot <= 0) return undefined;
    const streamId = eventId.slice(0, dot);
    const n = Number(eventId.slice(dot + 1));
    if (!Number.isSafeInteger(n) || !this.streams.has(streamId)) return undefined;
    return { streamId, n };
  }

  async getStreamIdForEventId(eventId) {
    return this.parse(eventId)?.streamId;
  }

  async replayEventsAfter(eventId, { send }) {
    const at = this.parse(eventId);
    if (!at) throw new Error(`unknown event id ${eventId}`);
    for (const { n, message } of this.streams.get(at.streamId)) {
      if (n > at.n && 'jsonrpc' in message) await send(`${at.streamId}.${n}`, message);
    }
    return at.streamId;
  }
}

// ---- the MCP server -------------------------------------------------------------

const LOG_LEVELS = ['debug', 'info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency'];

const JSON_SCHEMA_2020_12 = 'https://json-schema.org/draft/2020-12/schema';

const noArgs = { type: 'object', properties: {} };

const TOOLS = [
  { name: 'test_simple_text', description: 'Returns a simple text', inputSchema: noArgs },
  { name: 'test_image_content', description: 'Returns a 1x1 red PNG', inputSchema: noArgs },
  { name: 'test_audio_content', description: 'Returns a short silent WAV', inputSchema: noArgs },
  { name: 'test_embedded_resource', description: 'Returns an embedded text resource', inputSchema: noArgs },
  { name: 'test_multiple_content_types', description: 'Returns text, an image and a resource', inputSchema: noArgs },
  { name: 'test_tool_with_logging', description: 'Sends three info log messages ~50 ms apart', inputSchema: noArgs },
  { name: 'test_tool_with_progress', description: 'Reports progress 0, 50 and 100 of 100', inputSchema: noArgs },
  { name: 'test_error_handling', description: 'Always returns a tool error', inputSchema: noArgs },
  {
    name: 'test_sampling',
    description: 'Asks the client to sample an LLM with the prompt',
    inputSchema: {
      type: 'object',
      properties: { prompt: { type: 'string', description: 'The prompt to send to the LLM' } },
      required: ['prompt'],
    },
  },
  {
    name: 'test_elicitation',
    description: 'Asks the user (through the client) for a username and an email',
    inputSchema: {
      type: 'object',
      properties: { message: { type: 'string', description: 'The message to show the user' } },
      required: ['message'],
    },
  },
  {
    name: 'test_elicitation_sep1034_defaults',
    description: 'Elicits every primitive type with a default value (SEP-1034)',
    inputSchema: noArgs,
  },
  {
    name: 'test_elicitation_sep1330_enums',
    description: 'Elicits the five enum schema variants (SEP-1330)',
    inputSchema: noArgs,
  },
  {
    name: 'test_reconnection',
    description: 'Closes its SSE stream after the priming event, then answers (SSE polling, SEP-1699)',
    inputSchema: noArgs,
  },
  {
    name: 'json_schema_2020_12_tool',
    description: 'Tool with JSON Schema 2020-12 features',
    inputSchema: {
      $schema: JSON_SCHEMA_2020_12,
      type: 'object',
      $defs: {
        address: {
          $anchor: 'addressDef',
          type: 'object',
          properties: { street: { type: 'string' }, city: { type: 'string' } },
        },
      },
      properties: {
        name: { type: 'string' },
        address: { $ref: '#/$defs/address' },
        contactMethod: { type: 'string', enum: ['phone', 'email'] },
        phone: { type: 'string' },
        email: { type: 'string' },
      },
      allOf: [{ anyOf: [{ required: ['phone'] }, { required: ['email'] }] }],
      if: { properties: { contactMethod: { const: 'phone' } }, required: ['contactMethod'] },
      then: { required: ['phone'] },
      else: { required: ['email'] },
      additionalProperties: false,
    },
  },
];

const RESOURCES = [
  {
    uri: 'test://static-text',
    name: 'static-text',
    description: 'A static text resource',
    mimeType: 'text/plain',
  },
  {
    uri: 'test://static-binary',
    name: 'static-binary',
    description: 'A static binary resource (a 1x1 red PNG)',
    mimeType: 'image/png',
  },
  {
    uri: 'test://watched-resource',
    name: 'watched-resource',
    description: 'A resource clients may subscribe to',
    mimeType: 'text/plain',
  },
];

const TEMPLATE = /^test:\/\/template\/([^/]+)\/data$/;

const PROMPTS = [
  { name: 'test_simple_prompt', description: 'A prompt without arguments' },
  {
    name: 'test_prompt_with_arguments',
    description: 'A prompt with two arguments',
    arguments: [
      { name: 'arg1', description: 'First test argument', required: true },
      { name: 'arg2', description: 'Second test argument', required: true },
    ],
  },
  {
    name: 'test_prompt_with_embedded_resource',
    description: 'A prompt embedding a resource',
    arguments: [{ name: 'resourceUri', description: 'URI of the resource to embed', required: true }],
  },
  { name: 'test_prompt_with_image', description: 'A prompt with an image' },
];

/** Completion candidates for test_prompt_with_arguments' arguments. */
const COMPLETIONS = ['paris', 'park', 'party', 'test', 'testing', 'tested'];

const text = (t) => ({ content: [{ type: 'text', text: t }] });

function invalidParams(message) {
  return new McpError(ErrorCode.InvalidParams, message);
}

function requireArg(args, name) {
  const value = args?.[name];
  if (typeof value !== 'string') throw invalidParams(`argument \`${name}\` (a string) is required`);
  return value;
}

/** One session's MCP server. */
function buildServer() {
  const server = new Server(
    { name: 'shadowcat-conformance-fixture', version: '1.0.0' },
    {
      capabilities: {
        tools: {},
        resources: { subscribe: true },
        prompts: {},
        completions: {},
        logging: {},
      },
    },
  );
  let logLevel = 'debug';
  const subscriptions = new Set();

  const log = (extra, data) => {
    if (LOG_LEVELS.indexOf('info') < LOG_LEVELS.indexOf(logLevel)) return Promise.resolve();
    return extra.sendNotification({
      method: 'notifications/message',
      params: { level: 'info', logger: 'fixture', data },
    });
  };

  const elicit = (extra, params) => {
    if (!server.getClientCapabilities()?.elicitation) {
      throw new McpError(ErrorCode.InvalidRequest, 'the client did not declare the elicitation capability');
    }
    return extra.sendRequest({ method: 'elicitation/create', params }, ElicitResultSchema);
  };

  server.setRequestHandler(SetLevelRequestSchema, async (request) => {
    logLevel = request.params.level;
    return {};
  });

  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));

  const tools = {
    test_simple_text: async () => text('This is a simple text response for testing.'),
    test_image_content: async () => ({ content: [{ type: 'image', data: PNG, mimeType: 'image/png' }] }),
    test_audio_content: async () => ({ content: [{ type: 'audio', data: WAV, mimeType: 'audio/wav' }] }),
    test_embedded_resource: async () => ({
      content: [
        {
          type: 'resource',
          resource: {
            uri: 'test://embedded-resource',
            mimeType: 'text/plain',
            text: 'This is an embedded resource content.',
          },
        },
      ],
    }),
    test_multiple_content_types: async () => ({
      content: [
        { type: 'text', text: 'Multiple content types test:' },
        { type: 'image', data: PNG, mimeType: 'image/png' },
        {
          type: 'resource',
          resource: {
            uri: 'test://mixed-content-resource',
            mimeType: 'application/json',
            text: JSON.stringify({ test: 'data', value: 123 }),
          },
        },
      ],
    }),
    test_tool_with_logging: async (_args, extra) => {
      await log(extra, 'Tool execution started');
      await sleep(50);
      await log(extra, 'Tool processing data');
      await sleep(50);
      await log(extra, 'Tool execution completed');
      return text('Logged three messages.');
    },
    test_tool_with_progress: async (_args, extra) => {
      const progressToken = extra._meta?.progressToken;
      for (const [i, progress] of [0, 50, 100].entries()) {
        if (i > 0) await sleep(50);
        if (progressToken !== undefined) {
          await extra.sendNotification({
            method: 'notifications/progress',
            params: { progressToken, progress, total: 100 },
          });
        }
      }
      return text('Progress reported: 0, 50, 100 of 100.');
    },
    test_error_handling: async () => ({
      isError: true,
      content: [{ type: 'text', text: 'This tool intentionally returns an error for testing' }],
    }),
    test_sampling: async (args, extra) => {
      const prompt = requireArg(args, 'prompt');
      if (!server.getClientCapabilities()?.sampling) {
        throw new McpError(ErrorCode.InvalidRequest, 'the client did not declare the sampling capability');
      }
      const sampled = await extra.sendRequest(
        {
          method: 'sampling/createMessage',
          params: { messages: [{ role: 'user', content: { type: 'text', text: prompt } }], maxTokens: 100 },
        },
        CreateMessageResultSchema,
      );
      const answer = sampled.content.type === 'text' ? sampled.content.text : `[${sampled.content.type}]`;
      return text(`LLM response: ${answer}`);
    },
    test_elicitation: async (args, extra) => {
      const message = requireArg(args, 'message');
      const result = await elicit(extra, {
        message,
        requestedSchema: {
          type: 'object',
          properties: {
            username: { type: 'string', description: "User's response" },
            email: { type: 'string', description: "User's email address" },
          },
          required: ['username', 'email'],
        },
      });
      return text(`User response: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`);
    },
    test_elicitation_sep1034_defaults: async (_args, extra) => {
      const result = await elicit(extra, {
        message: 'Please review the defaults',
        requestedSchema: {
          type: 'object',
          properties: {
            name: { type: 'string', default: 'John Doe' },
            age: { type: 'integer', default: 30 },
            score: { type: 'number', default: 95.5 },
            status: { type: 'string', enum: ['active', 'inactive', 'pending'], default: 'active' },
            verified: { type: 'boolean', default: true },
          },
        },
      });
      return text(`Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`);
    },
    test_elicitation_sep1330_enums: async (_args, extra) => {
      const result = await elicit(extra, {
        message: 'Please pick some options',
        requestedSchema: {
          type: 'object',
          properties: {
            untitledSingle: { type: 'string', enum: ['option1', 'option2', 'option3'] },
            titledSingle: {
              type: 'string',
              oneOf: [
                { const: 'value1', title: 'First Option' },
                { const: 'value2', title: 'Second Option' },
                { const: 'value3', title: 'Third Option' },
              ],
            },
            legacyEnum: {
              type: 'string',
              enum: ['opt1', 'opt2', 'opt3'],
              enumNames: ['Option One', 'Option Two', 'Option Three'],
            },
            untitledMulti: { type: 'array', items: { type: 'string', enum: ['option1', 'option2', 'option3'] } },
            titledMulti: {
              type: 'array',
              items: {
                anyOf: [
                  { const: 'value1', title: 'First Choice' },
                  { const: 'value2', title: 'Second Choice' },
                  { const: 'value3', title: 'Third Choice' },
                ],
              },
            },
          },
        },
      });
      return text(`Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`);
    },
    test_reconnection: async (_args, extra) => {
      // The transport offers closeSSEStream only when the stream is
      // resumable (event store, client on 2025-11-25 or later); then the
      // answer goes to the event store and the client's GET with
      // Last-Event-ID gets it.
      const closed = typeof extra.closeSSEStream === 'function';
      if (closed) extra.closeSSEStream();
      await sleep(100);
      return text(closed ? 'Answered after closing the stream.' : 'Answered on the open stream (not resumable).');
    },
    json_schema_2020_12_tool: async (args) => text(`Received: ${JSON.stringify(args ?? {})}`),
  };

  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const tool = tools[request.params.name];
    if (!tool) throw invalidParams(`unknown tool: ${request.params.name}`);
    return tool(request.params.arguments, extra);
  });

  server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources: RESOURCES }));

  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({
    resourceTemplates: [
      {
        uriTemplate: 'test://template/{id}/data',
        name: 'template-data',
        description: 'Data for an id',
        mimeType: 'application/json',
      },
    ],
  }));

  server.setRequestHandler(ReadResourceRequestSchema, async (request) => {
    const { uri } = request.params;
    switch (uri) {
      case 'test://static-text':
        return { contents: [{ uri, mimeType: 'text/plain', text: 'This is the content of the static text resource.' }] };
      case 'test://static-binary':
        return { contents: [{ uri, mimeType: 'image/png', blob: PNG }] };
      case 'test://watched-resource':
        return { contents: [{ uri, mimeType: 'text/plain', text: 'The watched resource.' }] };
      default: {
        const id = TEMPLATE.exec(uri)?.[1];
        if (id !== undefined) {
          const data = { id, templateTest: true, data: `Data for ID: ${id}` };
          return { contents: [{ uri, mimeType: 'application/json', text: JSON.stringify(data) }] };
        }
        throw new McpError(RESOURCE_NOT_FOUND, `Resource not found: ${uri}`, { uri });
      }
    }
  });

  server.setRequestHandler(SubscribeRequestSchema, async (request) => {
    subscriptions.add(request.params.uri);
    return {};
  });

  server.setRequestHandler(UnsubscribeRequestSchema, async (request) => {
    subscriptions.delete(request.params.uri);
    return {};
  });

  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));

  server.setRequestHandler(GetPromptRequestSchema, async (request) => {
    const args = request.params.arguments;
    const user = (content) => ({ role: 'user', content });
    switch (request.params.name) {
      case 'test_simple_prompt':
        return { messages: [user({ type: 'text', text: 'This is a simple prompt for testing.' })] };
      case 'test_prompt_with_arguments': {
        const arg1 = requireArg(args, 'arg1');
        const arg2 = requireArg(args, 'arg2');
        return {
          messages: [user({ type: 'text', text: `Prompt with arguments: arg1='${arg1}', arg2='${arg2}'` })],
        };
      }
      case 'test_prompt_with_embedded_resource': {
        const uri = requireArg(args, 'resourceUri');
        return {
          messages: [
            user({
              type: 'resource',
              resource: { uri, mimeType: 'text/plain', text: 'Embedded resource content for testing.' },
            }),
            user({ type: 'text', text: 'Please process the embedded resource above.' }),
          ],
        };
      }
      case 'test_prompt_with_image':
        return {
          messages: [
            user({ type: 'image', data: PNG, mimeType: 'image/png' }),
            user({ type: 'text', text: 'Please analyze the image above.' }),
          ],
        };
      default:
        throw invalidParams(`unknown prompt: ${request.params.name}`);
    }
  });

  server.setRequestHandler(CompleteRequestSchema, async (request) => {
    const { ref, argument } = request.params;
    const known = ref.type === 'ref/prompt' && ref.name === 'test_prompt_with_arguments';
    const values = known ? COMPLETIONS.filter((v) => v.startsWith(argument.value)) : [];
    return { completion: { values, total: values.length, hasMore: false } };
  });

  return server;
}

// ---- HTTP -----------------------------------------------------------------------

/** Session id -> transport. */
const transports = new Map();

function reply(res, status, code, message) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

const LOCAL_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]']);

/** Why a request's Host or Origin is refused (DNS rebinding), if it is. */
function rebinding(req) {
  const host = req.headers.host;
  if (typeof host !== 'string') return 'no Host header';
  let hostname;
  try {
    hostname = new URL(`http://${host}`).hostname;
  } catch {
    return `malformed Host header: ${host}`;
  }
  if (!LOCAL_HOSTS.has(hostname)) return `Host ${host} is not a loopback name`;
  const origin = req.headers.origin;
  if (origin !== undefined) {
    let originHost;
    try {
      originHost = new URL(origin).hostname;
    } catch {
      return `malformed Origin header: ${origin}`;
    }
    if (!LOCAL_HOSTS.has(originHost)) return `Origin ${origin} is not a loopback origin`;
  }
  return undefined;
}

class TooLarge extends Error {}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new TooLarge(`body over ${MAX_BODY_BYTES} bytes (MAX_BODY_BYTES)`);
    chunks.push(chunk);
  }
  const body = Buffer.concat(chunks).toString('utf8');
  return body.length === 0 ? undefined : JSON.parse(body);
}

const http = createServer(async (req, res) => {
  try {
    if (new URL(req.url, 'http://127.0.0.1').pathname !== '/mcp') {
      return reply(res, 404, -32000, 'not found: the MCP endpoint is /mcp');
    }
    const refused = rebinding(req);
    if (refused) return reply(res, 403, -32000, `Forbidden: ${refused}`);
    const sessionId = req.headers['mcp-session-id'];
    const existing = typeof sessionId === 'string' ? transports.get(sessionId) : undefined;
    if (req.method === 'POST') {
      let body;
      try {
        body = await readJson(req);
      } catch (e) {
        if (e instanceof TooLarge) {
          reply(res, 413, ErrorCode.InvalidRequest, `Payload too large: ${e.message}`);
          req.destroy();
          return;
        }
        return reply(res, 400, ErrorCode.ParseError, `Parse error: ${e.message}`);
      }
      if (existing) return await existing.handleRequest(req, res, body);
      if (sessionId !== undefined) return reply(res, 404, -32001, 'Session not found');
      if (body?.method !== 'initialize') {
        return reply(res, 400, -32000, 'Bad Request: no Mcp-Session-Id and not an initialize request');
      }
      if (transports.size >= MAX_SESSIONS) {
        return reply(res, 503, -32000, `too many sessions (MAX_SESSIONS = ${MAX_SESSIONS})`);
      }
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        eventStore: new OrderedEventStore(),
        retryInterval: RETRY_MS,
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
      if (!existing) {
        return sessionId === undefined
          ? reply(res, 400, -32000, 'Bad Request: Mcp-Session-Id required')
          : reply(res, 404, -32001, 'Session not found');
      }
      return await existing.handleRequest(req, res);
    }
    res.writeHead(405, { allow: 'GET, POST, DELETE' }).end();
  } catch (e) {
    console.error('request failed:', e);
    if (!res.headersSent) reply(res, 500, ErrorCode.InternalError, 'internal error');
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
