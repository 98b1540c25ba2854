// Shared by the stompjs interop tests: starting and stopping a real `trunkline` node,
// and the HTTP calls the tests need (tokens, clients, /receive). The JavaScript twin of
// tests/interop/trunkline_node.py.
//
// Every wait is bounded: the node must write listen.json within START_TIMEOUT_MS, exit
// within STOP_TIMEOUT_MS of SIGTERM, and every HTTP call gets HTTP_TIMEOUT_MS.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const HTTP_TIMEOUT_MS = 10_000;
const START_TIMEOUT_MS = 20_000;
// The node drains connections for up to 10 s on SIGTERM.
const STOP_TIMEOUT_MS = 20_000;

export function binary() {
  const p = process.env.TRUNKLINE_BIN || path.join(REPO, 'target', 'debug', 'trunkline');
  return path.resolve(p);
}

export function uid() {
  return randomBytes(4).toString('hex');
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/** `promise`, or `onTimeout` after `ms`; the timer is cleared either way (a pending timer
 * would keep the test process alive). */
async function within(promise, ms, onTimeout) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise(resolve => (timer = setTimeout(() => resolve(onTimeout), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function logTail(logPath, lines = 40) {
  try {
    return fs.readFileSync(logPath, 'utf8').split('\n').slice(-lines).join('\n');
  } catch (e) {
    return `(no log: ${e.message})`;
  }
}

/**
 * Starts `trunkline serve` with its data in `<tmp>/data` and its log in
 * `<tmp>/trunkline.log`, every listener on 127.0.0.1 port 0, and waits until
 * `listen.json` is written. `configToml` (optional) is written to `<tmp>/trunkline.toml`
 * and passed as --config. Returns a Node (see below).
 */
export async function startNode(configToml) {
  const bin = binary();
  if (!fs.existsSync(bin)) {
    throw new Error(
      `no trunkline binary at ${bin}: run \`cargo build -p trunkline-cli\` or set TRUNKLINE_BIN`,
    );
  }
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'trunkline-stompjs-'));
  const dataDir = path.join(base, 'data');
  const logPath = path.join(base, 'trunkline.log');
  const args = [
    'serve',
    '--data-dir', dataDir,
    '--http', '127.0.0.1:0',
    '--backend', '127.0.0.1:0',
    '--stomp', '127.0.0.1:0',
  ];
  if (configToml !== undefined) {
    const configPath = path.join(base, 'trunkline.toml');
    fs.writeFileSync(configPath, configToml);
    args.push('--config', configPath);
  }
  // The node reads TRUNKLINE_* / SOAR_* settings from the environment: keep the
  // caller's out so it runs with its shipped defaults (plus the config file).
  const env = Object.fromEntries(
    Object.entries(process.env).filter(
      ([k]) => !k.startsWith('TRUNKLINE_') && !k.startsWith('SOAR_'),
    ),
  );
  env.TRUNKLINE_LOG_LEVEL = 'info';
  const log = fs.openSync(logPath, 'w');
  const proc = spawn(bin, args, { env, stdio: ['ignore', log, log] });
  fs.closeSync(log);
  let exit = null;
  const exited = new Promise(resolve => {
    proc.on('exit', (code, signal) => {
      exit = { code, signal };
      resolve(exit);
    });
    proc.on('error', err => {
      exit = { code: null, signal: null, error: err };
      resolve(exit);
    });
  });

  const node = {
    proc,
    base,
    dataDir,
    logPath,
    logTail: lines => logTail(logPath, lines),
    /** SIGTERM, then SIGKILL after STOP_TIMEOUT_MS. Resolves to how the node ended. */
    async stop() {
      if (exit) return `had already exited (${JSON.stringify(exit)}) before SIGTERM`;
      proc.kill('SIGTERM');
      const outcome = await within(exited, STOP_TIMEOUT_MS, 'timeout');
      if (outcome === 'timeout') {
        proc.kill('SIGKILL');
        await within(exited, 10_000);
        return `did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM and was killed`;
      }
      return outcome.code === 0
        ? 'exited cleanly'
        : `exited with ${JSON.stringify(outcome)} on SIGTERM`;
    },
    /** Removes the temporary directory (call only after stop()). */
    cleanUp() {
      fs.rmSync(base, { recursive: true, force: true });
    },
  };

  try {
    const listenPath = path.join(dataDir, 'listen.json');
    const deadline = Date.now() + START_TIMEOUT_MS;
    let listen;
    while (!listen) {
      if (exit) {
        throw new Error(
          `trunkline exited (${JSON.stringify(exit)}) while starting:\n${logTail(logPath, 200)}`,
        );
      }
      if (Date.now() > deadline) {
        throw new Error(
          `trunkline wrote no ${listenPath} within ${START_TIMEOUT_MS} ms:\n${logTail(logPath, 200)}`,
        );
      }
      try {
        listen = JSON.parse(fs.readFileSync(listenPath, 'utf8'));
      } catch {
        await sleep(50); // not there yet, or being written
      }
    }
    if (listen.pid !== proc.pid) {
      throw new Error(`listen.json names pid ${listen.pid}, not ${proc.pid}`);
    }
    node.listen = listen;
    node.url = `http://${listen.http}`;
    const i = listen.stomp.lastIndexOf(':');
    node.stomp = { host: listen.stomp.slice(0, i), port: Number(listen.stomp.slice(i + 1)) };
    node.admin = JSON.parse(fs.readFileSync(path.join(dataDir, 'admin.json'), 'utf8'));
    const health = await call(node, 'GET', '/healthz');
    if (health.status !== 200) throw new Error(`/healthz answered ${health.status}`);
  } catch (e) {
    await node.stop();
    throw e;
  }
  return node;
}

// ----- HTTP ---------------------------------------------------------------------------

/** One request to the public listener, always with a timeout. Returns {status, body}. */
export async function call(node, method, urlPath, { token, json, params } = {}) {
  const url = new URL(node.url + urlPath);
  for (const [k, v] of Object.entries(params || {})) url.searchParams.set(k, String(v));
  const headers = {};
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(json);
  }
  const res = await fetch(url, {
    method,
    headers,
    body,
    signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
  });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, body: parsed };
}

export async function getToken(node, clientId, secret) {
  const r = await call(node, 'GET', '/token', { params: { client_id: clientId, secret } });
  if (r.status !== 200) throw new Error(`GET /token: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.token;
}

/**
 * Creates a client the NOC way (admin token, POST /client, then GET /token). `fields` go
 * into the request as they are (`write_grants`, `read_topics`, ...).
 */
export async function makeClient(node, adminToken, prefix, subscription, fields = {}) {
  const clientId = `${prefix}-${uid()}`;
  const r = await call(node, 'POST', '/client', {
    token: adminToken,
    json: { client_id: clientId, client_name: `Test ${prefix}`, subscription, ...fields },
  });
  if (r.status !== 201) throw new Error(`POST /client: ${r.status} ${JSON.stringify(r.body)}`);
  const secret = r.body.secret;
  const token = await getToken(node, clientId, secret);
  return { clientId, secret, token };
}

export async function deleteClient(node, adminToken, clientId) {
  const r = await call(node, 'DELETE', `/client/${clientId}`, { token: adminToken });
  if (r.status !== 204 && r.status !== 404) {
    throw new Error(`DELETE /client/${clientId}: ${r.status} ${JSON.stringify(r.body)}`);
  }
}

/** GET /receive (ack=auto: removes what it returns). */
export async function receive(node, token, params = {}) {
  const r = await call(node, 'GET', '/receive', { token, params });
  if (r.status !== 200 || !Array.isArray(r.body)) {
    throw new Error(`GET /receive: ${r.status} ${JSON.stringify(r.body)}`);
  }
  return r.body;
}
