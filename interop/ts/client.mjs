// TypeScript SDK client checks for the interop suite. Each check exits 0
// when every assertion held, else prints why and exits 1.
//
// usage: node ts/client.mjs CHECK URL [NAME=NUMBER ...]
//   sdk-server   against ts/server.mjs: initialize, tools/list, tools/call
//                with progress, a tool call that logs, samples and elicits
//                (the client answers by POST), resources, prompts, DELETE
//   resume       against ts/server.mjs: a tools/call whose SSE stream the
//                client cuts mid-stream; the SDK resumes with Last-Event-ID
//                and every progress notification arrives exactly once
//                (steps=12 delayMs=25 cutAfter=3; cutAfter=0 cuts before
//                the first message, so only a priming event gives an id)
//   restart      against ts/server.mjs: after `holdAfter` events of a
//                tools/call the client reads on without processing (the
//                next events are lost in flight); after `lose` of them it
//                prints `holding ID upstream=UID` and waits for the
//                connection to break (the test kills the proxy); the SDK
//                resumes with its Mcp-Session-Id and the last processed id
//                (a resume GET that cannot connect prints `resume failed
//                CODE`), and every progress notification arrives exactly
//                once (steps=40 delayMs=20 holdAfter=5 lose=3)
//   chaos        against ts/server.mjs behind a cutting relay (ts/relay.mjs):
//                one tools/call of `steps` progress notifications; the
//                client reads its stream at most `readBytesPerMs` (slower
//                than the server sends), the SDK resumes every cut with
//                GET + Last-Event-ID and never gives up; a resume answered
//                other than 200 ends the check with its status and body.
//                Prints one `resume N ...` line per resume and a `figures
//                ...` line (events, lost, duplicated, out of order, worst
//                gap from a break the client saw to its next event);
//                passes when every notification arrived once, in order,
//                and the result came
//                (steps=10000 delayMs=1 readBytesPerMs=70 timeoutMs=75000)
//   everything   against server-everything: initialize, tools/list, echo,
//                a long-running tool with progress, resources, prompts
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CallToolResultSchema,
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';

const [check, url, ...settings] = process.argv.slice(2);

/** `NAME=NUMBER` arguments; `defaults` names the ones a check takes. */
function options(defaults) {
  const out = { ...defaults };
  for (const setting of settings) {
    const [name, value] = setting.split('=');
    if (!(name in defaults) || !/^\d+$/.test(value ?? '')) {
      throw new Error(`${check}: bad setting ${setting} (takes ${Object.keys(defaults).join(', ')})`);
    }
    out[name] = Number(value);
  }
  return out;
}

/** The upstream event id carried in a Shadowcat client id `S.Q.T[.UPSTREAM]`. */
function carriedUpstreamId(id) {
  const parts = id.split('.');
  return parts.length > 3 ? decodeURIComponent(parts.slice(3).join('.')) : '';
}

/** Asserts exactly-once, in-order progress 1..steps and the count result. */
function assertCounted(result, progress, tokens, steps) {
  assert(text(result) === `counted to ${steps}`, `count result, got ${JSON.stringify(result)}`);
  const expected = Array.from({ length: steps }, (_, i) => i + 1);
  assert(JSON.stringify(progress) === JSON.stringify(expected), `progress 1..${steps} exactly once, in order, got ${progress}`);
  assert(new Set(tokens).size === tokens.length, `event ids never repeat, got ${tokens}`);
}

function assert(cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`);
}

function text(result) {
  return result.content?.find((c) => c.type === 'text')?.text;
}

async function connect(options = {}) {
  const client = new Client(
    { name: 'shadowcat-interop-client', version: '1.0.0' },
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
  const transport = new StreamableHTTPClientTransport(new URL(url), options);
  await client.connect(transport);
  assert(typeof transport.sessionId === 'string' && transport.sessionId.length > 0, 'the server set a session id');
  return { client, transport };
}

/** Calls `name` with a progress token; returns the result and the progress values seen. */
async function callWithProgress(client, name, args, extra = {}) {
  const progress = [];
  const result = await client.callTool({ name, arguments: args }, CallToolResultSchema, {
    onprogress: (p) => progress.push(p.progress),
    timeout: 20_000,
    ...extra,
  });
  return { result, progress };
}

/** A session id the proxy no longer knows must get 404 (spec: re-initialize). */
async function expectGone(sessionId) {
  const res = await fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-session-id': sessionId,
      'mcp-protocol-version': '2025-06-18',
    },
    body: JSON.stringify({ jsonrpc: '2.0', id: 99, method: 'tools/list' }),
  });
  await res.body?.cancel();
  assert(res.status === 404, `a deleted session gets 404, got ${res.status}`);
}

async function sdkServer() {
  const { client, transport } = await connect();
  const version = client.getServerVersion();
  assert(version?.name === 'shadowcat-interop-server', `server name, got ${JSON.stringify(version)}`);

  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name).sort();
  assert(JSON.stringify(names) === '["ask","count","echo"]', `tools/list, got ${names}`);

  const echoed = await client.callTool({ name: 'echo', arguments: { text: 'héllo ✓' } });
  assert(text(echoed) === 'héllo ✓', `echo, got ${JSON.stringify(echoed)}`);

  const steps = 7;
  const { result, progress } = await callWithProgress(client, 'count', { steps, delayMs: 5 });
  assertCounted(result, progress, [], steps);

  const asked = await client.callTool({ name: 'ask', arguments: { question: 'why?' } });
  assert(text(asked) === 'sampled "why?" / accept Ada', `ask (sampling + elicitation answered), got ${JSON.stringify(asked)}`);
  assert(JSON.stringify(client.logs) === '["asking: why?"]', `one log message on the call's stream, got ${JSON.stringify(client.logs)}`);

  const { resources } = await client.listResources();
  assert(resources.length === 1 && resources[0].uri === 'interop://greeting', `resources/list, got ${JSON.stringify(resources)}`);
  const read = await client.readResource({ uri: 'interop://greeting' });
  assert(read.contents[0]?.text === 'hello from the interop server', `resources/read, got ${JSON.stringify(read)}`);

  const { prompts } = await client.listPrompts();
  assert(prompts.length === 1 && prompts[0].name === 'greet', `prompts/list, got ${JSON.stringify(prompts)}`);
  const prompt = await client.getPrompt({ name: 'greet', arguments: { name: 'Ada' } });
  assert(prompt.messages[0]?.content?.text === 'Say hello to Ada.', `prompts/get, got ${JSON.stringify(prompt)}`);

  const sessionId = transport.sessionId;
  await transport.terminateSession();
  assert(transport.sessionId === undefined, 'DELETE cleared the session id');
  await client.close();
  await expectGone(sessionId);
  console.log(`sdk-server: ${tools.length} tools, ${progress.length} progress, sampling + elicitation + log, DELETE then 404`);
}

/**
 * A fetch that cuts the first tools/call response stream after `cutAfter`
 * messages (events with data): the body errors and the connection is
 * aborted, as a dropped network would. `cutAfter=0` cuts before the first
 * message, after any blocks without data (a priming event). Later requests
 * go through untouched.
 */
function cuttingFetch(cutAfter, state) {
  return async (input, init) => {
    const lastEventId = new Headers(init?.headers).get('last-event-id');
    if (init?.method === 'GET' && lastEventId) state.resumedFrom.push(lastEventId);
    const isCall = init?.method === 'POST' && typeof init.body === 'string' && init.body.includes('"tools/call"');
    if (!isCall || state.cut) return fetch(input, init);
    state.cut = true;
    const abort = new AbortController();
    const res = await fetch(input, { ...init, signal: abort.signal });
    if (!res.body || !res.headers.get('content-type')?.includes('text/event-stream')) {
      throw new Error(`expected an SSE stream for tools/call, got ${res.status} ${res.headers.get('content-type')}`);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let seen = 0;
    let buffered = '';
    const body = new ReadableStream({
      async pull(controller) {
        const cut = () => {
          abort.abort();
          controller.error(new TypeError('connection cut by the interop test'));
        };
        // Erroring the body drops what it has not delivered yet, so the cut
        // after a passed event waits for the next read.
        if (state.cutNext) return cut();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return controller.close();
          buffered += decoder.decode(value, { stream: true });
          // Pass through whole events only, so the cut lands between events.
          let passed = false;
          let end;
          while ((end = buffered.indexOf('\n\n')) !== -1) {
            const event = buffered.slice(0, end + 2);
            const isMessage = /^data: ?\S/m.test(event);
            if (cutAfter === 0 && isMessage) {
              // Cut before the first message; blocks without data passed.
              state.cutNext = true;
              return passed ? undefined : cut();
            }
            buffered = buffered.slice(end + 2);
            controller.enqueue(new TextEncoder().encode(event));
            passed = true;
            if (isMessage) seen += 1;
            const id = /^id: ?(.*)$/m.exec(event)?.[1];
            if (id) state.lastIdBeforeCut = id;
            if (cutAfter > 0 && seen >= cutAfter) {
              state.cutAt = seen;
              state.cutNext = true;
              return;
            }
          }
          if (passed) return;
        }
      },
      cancel() {
        abort.abort();
      },
    });
    return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
}

async function resume() {
  const { steps, delayMs, cutAfter } = options({ steps: 12, delayMs: 25, cutAfter: 3 });
  const state = { cut: false, cutAt: 0, lastIdBeforeCut: undefined, resumedFrom: [] };
  const tokens = [];
  const { client, transport } = await connect({
    fetch: cuttingFetch(cutAfter, state),
    reconnectionOptions: { initialReconnectionDelay: 50, maxReconnectionDelay: 200, reconnectionDelayGrowFactor: 1.5, maxRetries: 5 },
  });
  const { result, progress } = await callWithProgress(
    client,
    'count',
    { steps, delayMs },
    { onresumptiontoken: (t) => tokens.push(t) },
  );
  assert(state.cut && state.cutAt === cutAfter, `the stream was cut after ${cutAfter} events (cut at ${state.cutAt})`);
  assert(
    state.resumedFrom[0] !== undefined && state.resumedFrom[0] === state.lastIdBeforeCut,
    `resumed with GET + Last-Event-ID of the last event before the cut (${state.lastIdBeforeCut}), got ${state.resumedFrom}`,
  );
  assertCounted(result, progress, tokens, steps);
  await transport.terminateSession();
  await client.close();
  console.log(
    `resume: cut after ${state.cutAt} events, resumed ${state.resumedFrom.length}x with Last-Event-ID, ${progress.length} progress, ${tokens.length} event ids`,
  );
}

/**
 * A fetch that passes `holdAfter` SSE events of the first tools/call stream
 * on, then reads the connection without passing anything on: the next
 * events are lost in flight, as when a proxy dies with bytes in its socket
 * buffers. Once `lose` events were lost it prints `holding ID upstream=UID`
 * (ID: the last event passed on) for the test to kill the proxy. The body
 * errors once the connection breaks (a clean end is recorded: the stream
 * finished before the break). Later requests go through untouched.
 */
function holdingFetch(holdAfter, lose, state) {
  const announce = () => {
    const id = state.lastIdBeforeHold ?? '';
    console.log(`holding ${id} upstream=${carriedUpstreamId(id)}`);
  };
  return async (input, init) => {
    const lastEventId = new Headers(init?.headers).get('last-event-id');
    if (init?.method === 'GET' && lastEventId) {
      // Only resumes of the call's stream count: the standalone GET stream
      // reconnects with its own id (Shadowcat ids start with the stream).
      const stream = (id) => id?.split('.')[0];
      if (state.lastIdBeforeHold === undefined || stream(lastEventId) === stream(state.lastIdBeforeHold)) {
        state.resumedFrom.push(lastEventId);
      }
      let res;
      try {
        res = await fetch(input, init);
      } catch (e) {
        state.refused += 1;
        console.log(`resume failed ${e?.cause?.code ?? e?.message ?? e}`);
        throw e;
      }
      if (res.ok) state.resumedAt ??= Date.now();
      return res;
    }
    const isCall = init?.method === 'POST' && typeof init.body === 'string' && init.body.includes('"tools/call"');
    if (!isCall || state.held) return fetch(input, init);
    state.held = true;
    const res = await fetch(input, init);
    if (!res.body || !res.headers.get('content-type')?.includes('text/event-stream')) {
      throw new Error(`expected an SSE stream for tools/call, got ${res.status} ${res.headers.get('content-type')}`);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let seen = 0;
    let buffered = '';
    const body = new ReadableStream({
      async pull(controller) {
        for (;;) {
          let chunk;
          try {
            chunk = await reader.read();
          } catch (e) {
            if (state.holdingSince === undefined) throw e;
            state.brokeAt = Date.now();
            state.breakSeen = String(e?.cause?.code ?? e?.message ?? e);
            controller.error(new TypeError('connection broken while holding'));
            return;
          }
          if (chunk.done) {
            if (state.holdingSince === undefined) return controller.close();
            state.cleanEnd = true;
            controller.error(new TypeError('stream ended while holding'));
            return;
          }
          buffered += decoder.decode(chunk.value, { stream: true });
          let passed = false;
          let end;
          while ((end = buffered.indexOf('\n\n')) !== -1) {
            const event = buffered.slice(0, end + 2);
            buffered = buffered.slice(end + 2);
            const isData = /^data: ?\S/m.test(event); // a message, not a priming event
            if (state.holdingSince === undefined) {
              controller.enqueue(new TextEncoder().encode(event));
              passed = true;
              if (isData) seen += 1;
              const id = /^id: ?(.*)$/m.exec(event)?.[1];
              if (id) state.lastIdBeforeHold = id;
              if (seen >= holdAfter) {
                state.holdingSince = Date.now();
                if (lose === 0) announce();
              }
            } else if (isData) {
              state.dropped += 1;
              if (state.dropped === lose) announce();
            }
          }
          if (passed) return;
        }
      },
      cancel() {
        reader.cancel().catch(() => {});
      },
    });
    return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
}

async function restart() {
  const { steps, delayMs, holdAfter, lose } = options({ steps: 40, delayMs: 20, holdAfter: 5, lose: 3 });
  const state = { held: false, dropped: 0, cleanEnd: false, refused: 0, resumedFrom: [] };
  const tokens = [];
  const { client, transport } = await connect({
    fetch: holdingFetch(holdAfter, lose, state),
    reconnectionOptions: { initialReconnectionDelay: 50, maxReconnectionDelay: 400, reconnectionDelayGrowFactor: 1.5, maxRetries: 30 },
  });
  const sessionId = transport.sessionId;
  const { result, progress } = await callWithProgress(
    client,
    'count',
    { steps, delayMs },
    { onresumptiontoken: (t) => tokens.push(t) },
  );
  assert(state.holdingSince !== undefined, `the client held after ${holdAfter} events`);
  assert(state.dropped >= lose, `${lose} events were lost in flight before the break, got ${state.dropped}`);
  assert(!state.cleanEnd && state.brokeAt !== undefined, 'the connection broke mid-stream (the proxy was killed before the stream ended)');
  assert(
    state.resumedFrom.length > 0 && state.resumedFrom.every((id) => id === state.lastIdBeforeHold),
    `every resume GET carried the last processed id ${state.lastIdBeforeHold}, got ${state.resumedFrom}`,
  );
  assert(state.resumedAt !== undefined, 'a resume GET succeeded');
  assert(transport.sessionId === sessionId, 'the session id survived the restart');
  assertCounted(result, progress, tokens, steps);
  await transport.terminateSession();
  await client.close();
  console.log(
    `restart: held after ${holdAfter} events, ${state.dropped} lost in flight, break (${state.breakSeen}), ` +
      `${state.refused} resume attempt(s) failed while the proxy was down, resumed ${state.resumedAt - state.brokeAt} ms after the break, ` +
      `${progress.length} progress exactly once`,
  );
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The stream number of a Shadowcat client id `S.Q.T[.UPSTREAM]`. */
const streamOf = (id) => id?.split('.')[0];

/**
 * A body read at most `bytesPerMs` (a pause after each chunk, counted by
 * `onBytes`); `onBreak` is called when the connection breaks under it.
 */
function slowBody(body, bytesPerMs, onBreak, onBytes) {
  const reader = body.getReader();
  return new ReadableStream({
    async pull(controller) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (e) {
        onBreak();
        controller.error(e);
        return;
      }
      if (chunk.done) return controller.close();
      controller.enqueue(chunk.value);
      onBytes(chunk.value.length);
      await sleep(chunk.value.length / bytesPerMs);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}

/**
 * A fetch for the chaos check. The tools/call stream and its resumes are
 * read slowly (`slowBody`). Every GET with a Last-Event-ID of the call's
 * stream is a resume: recorded, printed, and fatal unless answered 200 (the
 * SDK would retry it forever).
 */
function chaosFetch(bytesPerMs, state) {
  const onBreak = () => {
    state.breaks += 1;
    state.brokeAt ??= performance.now();
  };
  const onBytes = (n) => {
    state.bytes += n;
  };
  return async (input, init) => {
    const lastEventId = new Headers(init?.headers).get('last-event-id');
    const isCall = init?.method === 'POST' && typeof init.body === 'string' && init.body.includes('"tools/call"');
    let resume;
    if (init?.method === 'GET' && lastEventId) {
      if (state.callStream === undefined || streamOf(lastEventId) !== state.callStream) {
        state.otherResumes += 1;
        return fetch(input, init);
      }
      resume = { n: state.resumes.length + 1, id: lastEventId, last: state.lastToken, after: state.progress.at(-1) ?? 0 };
      state.resumes.push(resume);
      if (resume.id !== resume.last) state.wrongIds.push(resume);
    }
    if (!isCall && !resume) return fetch(input, init);
    let res;
    try {
      res = await fetch(input, init);
    } catch (e) {
      if (resume) console.log(`resume ${resume.n} after progress ${resume.after}: fetch failed: ${e?.cause?.code ?? e?.message ?? e}`);
      throw e;
    }
    if (resume) {
      const line = `resume ${resume.n} after progress ${resume.after}: HTTP ${res.status}`;
      if (res.status !== 200) {
        const body = await res.text().catch((e) => `(body unreadable: ${e})`);
        console.log(`${line} Last-Event-ID=${resume.id}: ${body}`);
        state.finish();
        process.exit(1);
      }
      console.log(line);
    }
    if (!res.body || !res.headers.get('content-type')?.includes('text/event-stream')) return res;
    return new Response(slowBody(res.body, bytesPerMs, onBreak, onBytes), { status: res.status, statusText: res.statusText, headers: res.headers });
  };
}

/** Events, lost, duplicated and out of order among `progress` (1..steps expected). */
function tally(progress, steps) {
  const seen = new Set();
  let duplicated = 0;
  let outOfOrder = 0;
  progress.forEach((p, i) => {
    if (seen.has(p)) duplicated += 1;
    seen.add(p);
    if (i > 0 && p < progress[i - 1]) outOfOrder += 1;
  });
  let lost = 0;
  for (let i = 1; i <= steps; i++) if (!seen.has(i)) lost += 1;
  return { events: progress.length, lost, duplicated, outOfOrder };
}

async function chaos() {
  const { steps, delayMs, readBytesPerMs, timeoutMs } = options({ steps: 10000, delayMs: 1, readBytesPerMs: 70, timeoutMs: 75000 });
  const started = performance.now();
  const state = {
    progress: [],
    callStream: undefined,
    lastToken: undefined,
    resumes: [],
    otherResumes: 0,
    wrongIds: [],
    breaks: 0,
    bytes: 0,
    brokeAt: undefined,
    worstGapMs: 0,
    result: undefined,
  };
  // The figures, printed whether the check passes or not.
  state.finish = () => {
    const t = tally(state.progress, steps);
    const result = state.result === undefined ? 'missing' : 'ok';
    console.log(
      `figures events=${t.events} lost=${t.lost} duplicated=${t.duplicated} outOfOrder=${t.outOfOrder} ` +
        `resumes=${state.resumes.length} otherResumes=${state.otherResumes} breaks=${state.breaks} bytesRead=${state.bytes} worstGapMs=${Math.round(state.worstGapMs)} ` +
        `result=${result} seconds=${((performance.now() - started) / 1000).toFixed(1)}`,
    );
    return t;
  };
  const { client, transport } = await connect({
    fetch: chaosFetch(readBytesPerMs, state),
    reconnectionOptions: { initialReconnectionDelay: 10, maxReconnectionDelay: 100, reconnectionDelayGrowFactor: 1.5, maxRetries: Infinity },
  });
  try {
    state.result = await client.callTool({ name: 'count', arguments: { steps, delayMs } }, CallToolResultSchema, {
      onprogress: (p) => {
        if (state.brokeAt !== undefined) {
          state.worstGapMs = Math.max(state.worstGapMs, performance.now() - state.brokeAt);
          state.brokeAt = undefined;
        }
        state.progress.push(p.progress);
      },
      onresumptiontoken: (t) => {
        state.callStream ??= streamOf(t);
        state.lastToken = t;
      },
      timeout: timeoutMs,
    });
  } catch (e) {
    state.finish();
    throw e;
  }
  const t = state.finish();
  assert(t.lost === 0 && t.duplicated === 0 && t.outOfOrder === 0, `every progress notification once, in order`);
  assertCounted(state.result, state.progress, [], steps);
  assert(
    state.wrongIds.length === 0,
    `every resume carried the last event id received, got ${state.wrongIds.map((r) => `#${r.n} ${r.id} (last ${r.last})`).join(', ')}`,
  );
  await transport.terminateSession();
  await client.close();
}

async function everything() {
  const { client, transport } = await connect();
  const { tools } = await client.listTools();
  const names = new Set(tools.map((t) => t.name));
  for (const name of ['echo', 'trigger-long-running-operation', 'get-sum']) assert(names.has(name), `tools/list has ${name}`);

  const echoed = await client.callTool({ name: 'echo', arguments: { message: 'through shadowcat' } });
  assert(text(echoed)?.includes('through shadowcat'), `echo, got ${JSON.stringify(echoed)}`);
  const sum = await client.callTool({ name: 'get-sum', arguments: { a: 40, b: 2 } });
  assert(text(sum)?.includes('42'), `get-sum, got ${JSON.stringify(sum)}`);

  const steps = 5;
  const { result, progress } = await callWithProgress(client, 'trigger-long-running-operation', { duration: 0.25, steps });
  assert(text(result)?.includes(`Steps: ${steps}`), `long-running result, got ${JSON.stringify(result)}`);
  assert(JSON.stringify(progress) === '[1,2,3,4,5]', `progress 1..${steps}, got ${progress}`);

  const { resources } = await client.listResources();
  assert(resources.length > 0, 'resources/list is not empty');
  const read = await client.readResource({ uri: resources[0].uri });
  assert(read.contents.length > 0, `resources/read ${resources[0].uri}`);

  const prompt = await client.getPrompt({ name: 'simple-prompt' });
  assert(prompt.messages.length > 0, 'prompts/get simple-prompt');

  const sessionId = transport.sessionId;
  await transport.terminateSession();
  await client.close();
  await expectGone(sessionId);
  console.log(`everything: ${tools.length} tools, ${resources.length} resources, ${progress.length} progress`);
}

const checks = { 'sdk-server': sdkServer, resume, restart, chaos, everything };
if (!checks[check] || !url) {
  console.error(`usage: node ts/client.mjs <${Object.keys(checks).join('|')}> URL [NAME=NUMBER ...]`);
  process.exit(2);
}
try {
  await checks[check]();
  process.exit(0);
} catch (e) {
  console.error(`${check}: ${e?.stack ?? e}`);
  process.exit(1);
}
