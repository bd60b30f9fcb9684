// Preload (`node --import`): a listen() without a host binds 127.0.0.1, not
// every interface. server-everything calls app.listen(PORT) with no host.
import net from 'node:net';

const HOST = '127.0.0.1';
const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object') {
    if ('port' in first && !first.host && !first.path) {
      args[0] = { ...first, host: HOST };
    }
  } else if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    if (typeof args[1] !== 'string') args.splice(1, 0, HOST);
  } else if (first === undefined || typeof first === 'function') {
    args.unshift(0, HOST);
  }
  return listen.apply(this, args);
};
