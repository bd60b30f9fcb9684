// A TCP relay on loopback that cuts every connection after a random
// 4-16 KB forwarded toward the client, for the interop chaos scenario.
//
// usage: node ts/relay.mjs PORT TARGET_PORT SEED
// Listens on 127.0.0.1:PORT, relays each connection to 127.0.0.1:TARGET_PORT
// and prints `listening PORT` once ready. Each connection draws its budget
// from a generator seeded with SEED. Once a connection has forwarded its
// budget toward the client (the last chunk is split to land exactly on it),
// both sides are reset (RST): what the relay or the kernel still held for
// the client is lost, as when a middlebox drops a connection. Every cut
// prints `cut N conn=C bytes=B`. Both directions keep TCP backpressure.
import { createServer, connect } from 'node:net';

const MIN_BUDGET = 4 * 1024;
const MAX_BUDGET = 16 * 1024;

const [portArg, targetArg, seedArg] = process.argv.slice(2);
const port = Number(portArg);
const target = Number(targetArg);
const seed = Number(seedArg);
if (![port, target, seed].every((n) => Number.isInteger(n) && n >= 0) || port === 0 || target === 0) {
  console.error('usage: node ts/relay.mjs PORT TARGET_PORT SEED');
  process.exit(2);
}

/** mulberry32: a small seeded generator of floats in [0, 1). */
function generator(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const random = generator(seed);
let connections = 0;
let cuts = 0;

/** Writes `chunk` to `to`; pauses `from` until `to` drains. */
function forward(from, to, chunk) {
  if (!to.write(chunk)) {
    from.pause();
    to.once('drain', () => from.resume());
  }
}

const server = createServer((client) => {
  const conn = ++connections;
  const budget = MIN_BUDGET + Math.floor(random() * (MAX_BUDGET - MIN_BUDGET + 1));
  let forwarded = 0;
  let cutting = false;
  const upstream = connect(target, '127.0.0.1');
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  const close = () => {
    client.destroy();
    upstream.destroy();
  };
  for (const socket of [client, upstream]) {
    socket.on('error', close);
    socket.on('close', close);
  }
  client.on('end', () => upstream.end());
  upstream.on('end', () => client.end());
  client.on('data', (chunk) => forward(client, upstream, chunk));
  upstream.on('data', (chunk) => {
    if (cutting) return;
    const room = budget - forwarded;
    if (chunk.length < room) {
      forwarded += chunk.length;
      forward(upstream, client, chunk);
      return;
    }
    cutting = true;
    forwarded = budget;
    upstream.pause();
    // Reset once the last bytes are handed to the kernel.
    client.write(chunk.subarray(0, room), (err) => {
      if (err) return close();
      cuts += 1;
      console.log(`cut ${cuts} conn=${conn} bytes=${budget}`);
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    });
  });
});

server.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
