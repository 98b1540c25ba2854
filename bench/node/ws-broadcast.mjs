// The Node side of `trunkline-bench wsfanout`: the plain broadcast server of npm `ws`
// (its README's "Server broadcast" example), every message from any client relayed to
// every other open client, as it came (text stays text). No authentication, no channels,
// no envelope, no slow-consumer policy: the least a WebSocket fan-out can do.
//
//   node bench/node/ws-broadcast.mjs [HOST] [PORT]   # default 127.0.0.1 0 (a free port)
//
// Prints one line of JSON once listening, {"port": N, "pid": P, "server": "ws X on Node Y"},
// and exits on SIGTERM or SIGINT. Needs `npm ci` in bench/node first.
import { createRequire } from 'node:module';
import { WebSocketServer, WebSocket } from 'ws';

const wsVersion = createRequire(import.meta.url)('ws/package.json').version;

const host = process.argv[2] ?? '127.0.0.1';
const port = Number(process.argv[3] ?? 0);

const wss = new WebSocketServer({ host, port });

wss.on('connection', (ws) => {
  ws.on('error', console.error);
  ws.on('message', (data, isBinary) => {
    wss.clients.forEach((client) => {
      if (client !== ws && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});

wss.on('listening', () => {
  const server = `ws ${wsVersion} on Node ${process.versions.node}`;
  console.log(JSON.stringify({ port: wss.address().port, pid: process.pid, server }));
});

wss.on('error', (err) => {
  console.error(err);
  process.exit(1);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    for (const client of wss.clients) client.terminate();
    wss.close(() => process.exit(0));
  });
}
