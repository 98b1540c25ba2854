// Interop tests: the real third-party JavaScript client @stomp/stompjs, over TCP through
// @stomp/tcp-wrapper, against the real `trunkline` binary's STOMP 1.2 listener.
//
//   cargo build -p trunkline-cli
//   cd tests/interop/stompjs && npm ci && TRUNKLINE_BIN=../../../target/debug/trunkline node --test
//
// The tests start their own node (and a second one with 500 ms heart-beats), found
// through listen.json; clients are made over HTTP with the admin token and log in over
// STOMP with their id and secret. What a stompjs user sees is what is asserted: the
// CONNECTED / ERROR / RECEIPT / MESSAGE frames stompjs hands to its callbacks, and for
// durability the inbox as HTTP /receive shows it.
//
// Every wait is bounded: WAIT_MS for what must happen, QUIET_MS of silence for what must
// not, and a per-test timeout on top.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { Client } from '@stomp/stompjs';
import { TCPWrapper } from '@stomp/tcp-wrapper';

import {
  deleteClient,
  getToken,
  makeClient as makeClientOn,
  receive,
  startNode,
  uid,
} from './trunkline-node.mjs';

// Milliseconds to wait for anything the server must do (a frame, a close).
const WAIT_MS = 10_000;
// Milliseconds of silence taken to mean "nothing more is coming".
const QUIET_MS = 750;
// Per test: generous, but keeps a hang from holding CI.
const TEST_TIMEOUT_MS = 20_000;

// ----- a stompjs connection that records what arrives --------------------------------

/** A TCPWrapper that swallows the heart-beats stompjs sends (a bare "\n"): a client that
 * promises heart-beats and then stays silent. */
class SilentTCPWrapper extends TCPWrapper {
  send(data) {
    if (data === '\n') return;
    super.send(data);
  }
}

/**
 * One stompjs Client (no reconnects) and everything it reported, with bounded waits.
 * Frames are kept as stompjs gives them (IFrame / IMessage).
 */
class StompConn {
  constructor(node, { heartbeat = [0, 0], connectHeaders = {}, silent = false } = {}) {
    this.connected = null;
    this.disconnectReceipt = null;
    this.errors = [];
    this.messages = [];
    this.receipts = [];
    this.closed = false;
    this.heartbeatsReceived = 0;
    this.heartbeatsSent = 0;
    this.heartbeatLost = 0;
    this.socketErrors = [];
    this.log = []; // stompjs's debug lines, the last few shown on failure
    this._waiters = new Set();
    this._ids = 0;

    const Wrapper = silent ? SilentTCPWrapper : TCPWrapper;
    this.client = new Client({
      webSocketFactory: () => new Wrapper(node.stomp.host, node.stomp.port),
      connectHeaders,
      heartbeatOutgoing: heartbeat[0],
      heartbeatIncoming: heartbeat[1],
      reconnectDelay: 0, // never reconnect: a closed connection stays closed
      // (No connectionTimeout: its timer would outlive a refused CONNECT and keep the
      // process alive; the waits below are bounded instead.)
      debug: line => {
        this.log.push(line);
        if (this.log.length > 50) this.log.shift();
        // stompjs logs every heart-beat it sends (and has no callback for it).
        if (line === '>>> PING') this._record(() => this.heartbeatsSent++);
      },
      onConnect: frame => this._record(() => (this.connected = frame)),
      // The RECEIPT of deactivate()'s DISCONNECT.
      onDisconnect: frame => this._record(() => (this.disconnectReceipt = frame)),
      onStompError: frame => this._record(() => this.errors.push(frame)),
      onUnhandledMessage: msg => this._record(() => this.messages.push(msg)),
      onUnhandledReceipt: frame => this._record(() => this.receipts.push(frame.headers['receipt-id'])),
      onWebSocketClose: () => this._record(() => (this.closed = true)),
      onWebSocketError: evt => this._record(() => this.socketErrors.push(evt)),
      onHeartbeatReceived: () => this._record(() => this.heartbeatsReceived++),
      onHeartbeatLost: () => this._record(() => this.heartbeatLost++),
    });
  }

  nextReceipt(prefix = 'r') {
    return `${prefix}-${this._ids++}`;
  }

  describe() {
    const errors = this.errors.map(e => ({ headers: e.headers, body: e.body }));
    return (
      `connected=${this.connected !== null} closed=${this.closed} ` +
      `errors=${JSON.stringify(errors)} receipts=${JSON.stringify(this.receipts)} ` +
      `messages=${this.messages.length} socketErrors=${this.socketErrors.length}\n` +
      `stompjs log (last lines):\n  ${this.log.slice(-15).join('\n  ')}`
    );
  }

  _record(change) {
    change();
    for (const w of [...this._waiters]) w();
  }

  /** Resolves to `predicate()` once it is truthy; rejects after `timeoutMs`. */
  wait(predicate, what, timeoutMs = WAIT_MS) {
    return new Promise((resolve, reject) => {
      const check = () => {
        let value;
        try {
          value = predicate();
        } catch (e) {
          done();
          reject(e);
          return;
        }
        if (value) {
          done();
          resolve(value);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`waited ${timeoutMs} ms for ${what}; got ${this.describe()}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this._waiters.delete(check);
      };
      this._waiters.add(check);
      check();
    });
  }

  /** Resolves to true if `predicate()` holds for all of `ms` (checked on every event). */
  stays(predicate, ms) {
    return new Promise(resolve => {
      const check = () => {
        if (!predicate()) {
          done();
          resolve(false);
        }
      };
      const timer = setTimeout(() => {
        done();
        resolve(true);
      }, ms);
      const done = () => {
        clearTimeout(timer);
        this._waiters.delete(check);
      };
      this._waiters.add(check);
      check();
    });
  }

  // -- connecting --

  async _connect(login, passcode) {
    if (login !== undefined) this.client.connectHeaders.login = login;
    if (passcode !== undefined) this.client.connectHeaders.passcode = passcode;
    this.client.activate();
    await this.wait(
      () => this.connected || this.errors.length || this.closed,
      'an answer to CONNECT',
    );
  }

  /** CONNECT that must succeed; returns the CONNECTED frame. */
  async connect(login, passcode) {
    await this._connect(login, passcode);
    assert.ok(this.connected, `CONNECT refused: ${this.describe()}`);
    assert.equal(this.errors.length, 0, this.describe());
    return this.connected;
  }

  /** CONNECT that must be answered by ERROR and a closed connection; returns the ERROR. */
  async connectRefused(login, passcode) {
    await this._connect(login, passcode);
    assert.equal(this.connected, null, 'CONNECT was accepted');
    const error = await this.wait(() => this.errors[0], 'ERROR');
    await this.waitClosed();
    return error;
  }

  async waitClosed() {
    await this.wait(() => this.closed, 'the server to close the connection');
    assert.equal(this.client.connected, false);
  }

  // -- frames, each with a receipt unless told otherwise --

  /** Registers a watcher for `rid` (client.watchForReceipt); returns a promise that
   * resolves when the RECEIPT arrives and rejects on ERROR, close or timeout. */
  watchReceipt(rid) {
    let got = false;
    this.client.watchForReceipt(rid, frame =>
      this._record(() => {
        got = true;
        this.receipts.push(frame.headers['receipt-id']);
      }),
    );
    return this.wait(() => got || this.errors.length || this.closed, `RECEIPT ${rid}`).then(() =>
      assert.ok(got, `no RECEIPT ${rid}: ${this.describe()}`),
    );
  }

  /** SEND (client.publish). With `receipt` (the default) it waits for the RECEIPT unless
   * `wait` is false; returns the receipt id. */
  async send(destination, body, { headers = {}, receipt = true, wait = true, transaction } = {}) {
    headers = { ...headers };
    let rid;
    let receipted;
    if (receipt) {
      rid = headers.receipt = this.nextReceipt();
      receipted = this.watchReceipt(rid);
    }
    if (transaction !== undefined) headers.transaction = transaction;
    const params = { destination, headers };
    if (body instanceof Uint8Array) params.binaryBody = body;
    else params.body = body;
    this.client.publish(params);
    if (receipted && wait) await receipted;
    else receipted?.catch(() => {}); // waited for elsewhere, or not at all
    return rid;
  }

  /** SUBSCRIBE with a receipt; MESSAGEs are recorded in this.messages. */
  async subscribe(destination, id, headers = {}) {
    const rid = this.nextReceipt('sub');
    const receipted = this.watchReceipt(rid);
    this.client.subscribe(destination, msg => this._record(() => this.messages.push(msg)), {
      ...headers,
      id,
      receipt: rid,
    });
    await receipted;
  }

  /** ACK (message.ack()), with a receipt unless told otherwise. */
  async ack(message, { transaction, receipt = true } = {}) {
    const headers = {};
    if (transaction !== undefined) headers.transaction = transaction;
    let receipted;
    if (receipt) receipted = this.watchReceipt((headers.receipt = this.nextReceipt('ack')));
    message.ack(headers);
    await receipted;
  }

  /** NACK (message.nack()) with a receipt. */
  async nack(message) {
    const rid = this.nextReceipt('nack');
    const receipted = this.watchReceipt(rid);
    message.nack({ receipt: rid });
    await receipted;
  }

  // -- what arrived --

  messagesOf(subId) {
    return this.messages.filter(m => subId === undefined || m.headers.subscription === subId);
  }

  /** Waits for at least `n` MESSAGEs (of `subId`); returns all that arrived. */
  async waitMessages(n, subId) {
    await this.wait(
      () => this.messagesOf(subId).length >= n || this.errors.length || this.closed,
      `${n} MESSAGE frames${subId ? ` for subscription ${subId}` : ''}`,
    );
    const got = this.messagesOf(subId);
    assert.ok(got.length >= n, `${got.length} of ${n} messages: ${this.describe()}`);
    return got;
  }

  /** True if no MESSAGE beyond the first `count` arrives within QUIET_MS. */
  noMoreMessages(count, subId) {
    return this.stays(() => this.messagesOf(subId).length <= count, QUIET_MS);
  }

  // -- leaving --

  /** DISCONNECT with a receipt, as stompjs does it (client.deactivate() sends it, waits
   * for the RECEIPT, closes the socket and resolves once it is closed), bounded. */
  async disconnect() {
    assert.ok(this.client.connected, `not connected: ${this.describe()}`);
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`deactivate() did not return within ${WAIT_MS} ms: ${this.describe()}`)),
        WAIT_MS,
      );
    });
    try {
      await Promise.race([this.client.deactivate(), timeout]);
    } finally {
      clearTimeout(timer);
    }
    assert.ok(this.disconnectReceipt, `no DISCONNECT receipt: ${this.describe()}`);
    assert.equal(this.disconnectReceipt.command, 'RECEIPT');
    assert.equal(this.errors.length, 0, this.describe());
    assert.ok(this.closed);
  }

  /** Teardown: leave however possible, never hang. */
  async closeQuietly() {
    let timer;
    try {
      await Promise.race([
        this.client.deactivate({ force: true }),
        new Promise(resolve => (timer = setTimeout(resolve, 2000))),
      ]);
    } catch {
      // already gone
    } finally {
      clearTimeout(timer);
    }
  }
}

const inbox = c => `/queue/${c.clientId}-inbox`;
const bodies = msgs => msgs.map(m => JSON.parse(m.body));

// ----- the node and per-test helpers ---------------------------------------------------

let node;
let adminToken;

/** Per-test: opens StompConns and makes clients; closes / deletes them afterwards. */
function harness(t) {
  const conns = [];
  const clients = [];
  t.after(async () => {
    for (const c of conns) await c.closeQuietly();
    for (const id of clients) await deleteClient(node, adminToken, id);
  });
  return {
    /** A StompConn (to `on`, default the shared node); logged in when `who` is given. */
    async stomp(who, { on = node, ...opts } = {}) {
      const c = new StompConn(on, opts);
      conns.push(c);
      if (who) await c.connect(who.clientId, who.secret);
      return c;
    },
    async client(prefix, subscription, fields = {}) {
      const c = await makeClientOn(node, adminToken, prefix, subscription, fields);
      clients.push(c.clientId);
      return c;
    },
  };
}

before(async () => {
  node = await startNode();
  adminToken = await getToken(node, node.admin.client_id, node.admin.secret);
});

after(async () => {
  if (!node) return;
  const outcome = await node.stop();
  assert.equal(outcome, 'exited cleanly', `trunkline ${outcome}:\n${node.logTail()}`);
  node.cleanUp();
});

const opts = { timeout: TEST_TIMEOUT_MS };

// ----- 1. connecting --------------------------------------------------------------------

describe('connecting', () => {
  test('CONNECT with login and passcode (secret, or a token)', opts, async t => {
    const h = harness(t);
    const c = await h.client('jsc', `jsc.${uid()}`);

    const bySecret = await h.stomp();
    const connected = await bySecret.connect(c.clientId, c.secret);
    assert.equal(connected.command, 'CONNECTED');
    assert.equal(connected.headers.version, '1.2');
    assert.equal(connected.headers['user-name'], c.clientId);
    assert.match(connected.headers.server, /^trunkline\//);
    assert.equal(bySecret.client.connected, true);
    assert.equal(bySecret.client.connectedVersion, '1.2');

    // A bearer token from GET /token as the passcode, with or without the login.
    const byToken = await h.stomp();
    assert.equal((await byToken.connect(c.clientId, c.token)).headers['user-name'], c.clientId);
    const tokenOnly = await h.stomp();
    assert.equal((await tokenOnly.connect(undefined, c.token)).headers['user-name'], c.clientId);

    await bySecret.disconnect();
    await byToken.disconnect();
    await tokenOnly.disconnect();
  });

  test('a wrong passcode gets an ERROR frame and a closed connection', opts, async t => {
    const h = harness(t);
    const c = await h.client('jsbad', `jsbad.${uid()}`);
    const good = await h.stomp(c);

    const refused = await h.stomp();
    const error = await refused.connectRefused(c.clientId, `${c.secret}x`);
    assert.equal(error.command, 'ERROR');
    assert.equal(error.headers.code, 'invalid_credentials', JSON.stringify(error.headers));
    assert.ok(error.headers.message, JSON.stringify(error.headers));
    assert.ok(error.body.length > 0, 'the ERROR body carries the message');
    assert.equal(refused.client.connected, false);
    // stompjs does not reconnect (reconnectDelay 0): it stays closed.
    assert.ok(await refused.stays(() => !refused.connected, QUIET_MS));

    // An unknown client is refused the same way.
    const unknown = await h.stomp();
    const error2 = await unknown.connectRefused(`nobody-${uid()}`, 'secret');
    assert.equal(error2.headers.code, 'invalid_credentials', JSON.stringify(error2.headers));

    // The refusals did not disturb the good connection.
    await good.send(inbox(c), '{"still": "here"}');
    await good.disconnect();
    assert.deepEqual(
      (await receive(node, c.token)).map(m => m.body),
      [{ still: 'here' }],
    );
  });
});

// ----- 2. SEND with receipt -------------------------------------------------------------

describe('sending', () => {
  test('SEND to a topic with a receipt: durable in the subscribed inbox', opts, async t => {
    const h = harness(t);
    const ns = uid();
    const rx = await h.client('jsrx', `js2.${ns}.#`);
    const other = await h.client('jsother', `js2other.${ns}`);
    const tx = await h.client('jstx', `jstx.${ns}`);
    const topic = `js2.${ns}.ah1.mission`;

    const pub = await h.stomp(tx);
    const plan = { plan_ID: 7, target: 'ah1', plan: [{ action: 'move', depth: 10.0 }] };
    // send() waits for the RECEIPT (client.watchForReceipt): durable in rx's inbox now,
    // so HTTP sees it at once.
    await pub.send(`/topic/${topic}`, JSON.stringify(plan), {
      headers: { 'content-type': 'application/json', type: 'mission_plan' },
    });
    // Not JSON, with characters stompjs escapes in header values (STOMP 1.2).
    const text = 'Position report\r\nlat: 50.9\tlon: -1.4\n\u00fc\u00df \u2014 {not json]';
    await pub.send(`/topic/${topic}`, text, {
      headers: { 'content-type': 'text/plain; charset=utf-8', note: 'a:b\\c' },
    });

    const got = await receive(node, rx.token);
    assert.equal(got.length, 2, JSON.stringify(got));
    assert.deepEqual(got[0].body, plan);
    assert.equal(got[0].topic, topic);
    assert.equal(got[0].sender, tx.clientId);
    assert.deepEqual(got[0].headers, { type: 'mission_plan' });
    assert.equal(got[1].body, text);
    assert.equal(got[1].content_type, 'text/plain; charset=utf-8');
    assert.deepEqual(got[1].headers, { note: 'a:b\\c' });

    // Only the subscribed inbox got them.
    assert.deepEqual(await receive(node, other.token), []);
    assert.deepEqual(await receive(node, tx.token), []);
    await pub.disconnect();
  });

  test('MESSAGE frames carry the documented headers; binary bodies arrive byte-exact', opts, async t => {
    const h = harness(t);
    const ns = uid();
    const rx = await h.client('jsmsg', `jsmsg.${ns}`);
    // Putting messages straight into another client's inbox needs a write grant.
    const tx = await h.client('jsmsgtx', `jsmsgtx.${ns}`, { write_grants: [`${rx.clientId}-inbox`] });
    const pub = await h.stomp(tx);
    await pub.send(`/topic/jsmsg.${ns}`, '{"n": 1}', { headers: { type: 'status' } });
    const blob = new Uint8Array(2048).map((_, i) => i % 256); // NUL bytes included
    await pub.send(inbox(rx), blob, { headers: { 'content-type': 'application/octet-stream' } });

    const sub = await h.stomp(rx);
    await sub.subscribe(inbox(rx), 'in');
    const [m, b] = await sub.waitMessages(2);
    assert.equal(m.command, 'MESSAGE');
    assert.deepEqual(JSON.parse(m.body), { n: 1 });
    assert.equal(m.headers.destination, inbox(rx));
    assert.equal(m.headers.subscription, 'in');
    assert.equal(m.headers.topic, `jsmsg.${ns}`);
    assert.equal(m.headers.sender, tx.clientId);
    assert.equal(m.headers.type, 'status');
    assert.ok(m.headers['message-id']);
    // ack: auto, so no `ack` header (STOMP 1.2 requires it only for client acks).
    assert.notEqual(m.headers.redelivered, 'true');

    assert.deepEqual(b.binaryBody, blob);
    assert.equal(b.headers['content-type'], 'application/octet-stream');
    assert.equal(b.headers.sender, tx.clientId);
    assert.ok(await sub.noMoreMessages(2));
    await sub.disconnect();
    await pub.disconnect();
  });
});

// ----- 3. acks, nacks, prefetch ---------------------------------------------------------

describe('queue subscriptions', () => {
  test('client-individual: ACK removes, NACK redelivers (redelivered: true)', opts, async t => {
    const h = harness(t);
    const c = await h.client('jsind', `jsind.${uid()}`);
    const pub = await h.stomp(c);
    for (let i = 0; i < 4; i++) await pub.send(inbox(c), JSON.stringify({ n: i }));

    const s = await h.stomp(c);
    await s.subscribe(inbox(c), 'in', { ack: 'client-individual' });
    const first = await s.waitMessages(4);
    assert.deepEqual(bodies(first), [{ n: 0 }, { n: 1 }, { n: 2 }, { n: 3 }]);
    assert.ok(first.every(m => m.headers.ack));
    assert.ok(first.every(m => m.headers.redelivered !== 'true'));
    assert.ok(await s.noMoreMessages(4));

    await s.ack(first[0]);
    await s.nack(first[1]);
    const again = (await s.waitMessages(5))[4];
    assert.deepEqual(JSON.parse(again.body), { n: 1 });
    assert.equal(again.headers.redelivered, 'true');
    assert.equal(again.headers['message-id'], first[1].headers['message-id']);
    await s.ack(again);
    assert.ok(await s.noMoreMessages(5));

    // 2 and 3 are unacknowledged when the connection ends: the next subscriber gets them.
    await s.disconnect();
    const s2 = await h.stomp(c);
    await s2.subscribe(inbox(c), 'in2', { ack: 'client-individual' });
    const back = await s2.waitMessages(2);
    assert.deepEqual(bodies(back), [{ n: 2 }, { n: 3 }]);
    assert.ok(back.every(m => m.headers.redelivered === 'true'));
    for (const m of back) await s2.ack(m);
    assert.ok(await s2.noMoreMessages(2));
    await s2.disconnect();
    await pub.disconnect();

    // Everything was acknowledged: nothing is left, nothing went to the dead letters.
    assert.deepEqual(await receive(node, c.token), []);
    assert.deepEqual(await receive(node, c.token, { queue: 'dead' }), []);
  });

  test('prefetch-count bounds unacknowledged deliveries', opts, async t => {
    const h = harness(t);
    const c = await h.client('jspre', `jspre.${uid()}`);
    const pub = await h.stomp(c);
    for (let i = 0; i < 5; i++) await pub.send(inbox(c), JSON.stringify({ n: i }));

    const s = await h.stomp(c);
    await s.subscribe(inbox(c), 'in', { ack: 'client-individual', 'prefetch-count': '2' });
    let got = await s.waitMessages(2);
    assert.ok(await s.noMoreMessages(2), `more than 2 unacked: ${s.messages.length}`);
    assert.deepEqual(bodies(got), [{ n: 0 }, { n: 1 }]);

    await s.ack(got[0]);
    got = await s.waitMessages(3);
    assert.ok(await s.noMoreMessages(3), `more than 2 unacked: ${s.messages.length}`);
    assert.deepEqual(JSON.parse(got[2].body), { n: 2 });

    // Acking the rest as they come drains the queue in order.
    for (const m of got.slice(1)) await s.ack(m);
    got = await s.waitMessages(5);
    for (const m of got.slice(3)) await s.ack(m);
    assert.deepEqual(bodies(got), [0, 1, 2, 3, 4].map(n => ({ n })));
    assert.ok(await s.noMoreMessages(5));
    await s.disconnect();
    await pub.disconnect();
    assert.deepEqual(await receive(node, c.token), []);
  });
});

// ----- 4. transactions ------------------------------------------------------------------

describe('transactions', () => {
  test('BEGIN/ABORT discards sends; BEGIN/COMMIT delivers them', opts, async t => {
    const h = harness(t);
    const ns = uid();
    const rx = await h.client('jstxrx', `jstx.${ns}.#`);
    const tx = await h.client('jstxtx', `jstxtx.${ns}`);
    const topic = `/topic/jstx.${ns}.log`;

    const sub = await h.stomp(rx);
    await sub.subscribe(inbox(rx), 'in');
    const pub = await h.stomp(tx);

    // stompjs's begin()/commit()/abort() take no receipt header: a later frame's receipt
    // confirms them (receipts confirm everything before them).
    const t1 = pub.client.begin();
    await pub.send(topic, '{"tx": 1, "n": 1}', { transaction: t1.id, receipt: false });
    await pub.send(topic, '{"tx": 1, "n": 2}', { transaction: t1.id, receipt: false });
    t1.abort();
    // A message after the abort arrives first: the aborted ones were never published.
    await pub.send(topic, '{"marker": 1}');
    assert.deepEqual(bodies(await sub.waitMessages(1)), [{ marker: 1 }]);
    assert.ok(await sub.noMoreMessages(1));

    const t2 = pub.client.begin();
    await pub.send(topic, '{"tx": 2, "n": 1}', { transaction: t2.id, receipt: false });
    await pub.send(topic, '{"tx": 2, "n": 2}', { transaction: t2.id, receipt: false });
    // A receipted SEND outside the transaction goes through; the transaction's do not.
    await pub.send(topic, '{"marker": 2}');
    await sub.waitMessages(2);
    assert.ok(await sub.noMoreMessages(2), 'transactional SENDs delivered before COMMIT');
    t2.commit();
    const got = await sub.waitMessages(4);
    assert.deepEqual(
      bodies(got.slice(2)).sort((a, b) => a.n - b.n),
      [{ tx: 2, n: 1 }, { tx: 2, n: 2 }],
    );
    assert.ok(await sub.noMoreMessages(4));
    await pub.disconnect();
    await sub.disconnect();
  });

  test('an ACK in an aborted transaction does not count; committed, it does', opts, async t => {
    const h = harness(t);
    const c = await h.client('jstxack', `jstxack.${uid()}`);
    const pub = await h.stomp(c);
    await pub.send(inbox(c), '{"n": 1}');

    const s = await h.stomp(c);
    await s.subscribe(inbox(c), 'in', { ack: 'client-individual' });
    const [m] = await s.waitMessages(1);
    const t1 = s.client.begin();
    await s.ack(m, { transaction: t1.id, receipt: false });
    t1.abort();
    await s.disconnect(); // its receipt confirms the ABORT too

    // Still unacknowledged, so it was given back.
    const s2 = await h.stomp(c);
    await s2.subscribe(inbox(c), 'in', { ack: 'client-individual' });
    const [again] = await s2.waitMessages(1);
    assert.equal(again.headers['message-id'], m.headers['message-id']);
    assert.equal(again.headers.redelivered, 'true');
    const t2 = s2.client.begin();
    await s2.ack(again, { transaction: t2.id, receipt: false });
    t2.commit();
    await s2.disconnect(); // returns once the COMMIT is confirmed
    await pub.disconnect();
    assert.deepEqual(await receive(node, c.token), []);
  });
});

// ----- 5. live topic subscriptions ------------------------------------------------------

test('live /topic subscriptions with * and # wildcards', opts, async t => {
  const h = harness(t);
  const ns = uid();
  const pubc = await h.client('jslivepub', `jslivepub.${ns}`);
  // It may read its fleet.# live (read_topics) without it routing into its inbox.
  const watcher = await h.client('jslive', `jslive.${ns}`, { read_topics: [`js${ns}.fleet.#`] });
  const pub = await h.stomp(pubc);
  const p = `js${ns}`; // a first word no other test uses

  // Published before anyone subscribes: no live subscriber sees it.
  await pub.send(`/topic/${p}.fleet.ah1.status`, '{"before": true}');

  const w = await h.stomp(watcher);
  await w.subscribe(`/topic/${p}.fleet.*.status`, 'star');
  await w.subscribe(`/topic/${p}.fleet.#`, 'hash');

  const topics = [
    'fleet.ah1.status', // both
    'fleet.ah1.position', // fleet.# only
    'fleet.status', // fleet.# only: * needs exactly one word
    'fleet', // fleet.# matches zero words
    'fleet.ah1.sub.status', // fleet.# only
    'fleetx.ah1.status', // neither: whole words
    'other.ah1.status', // neither
    'fleet.ah2.status', // both
  ].map(s => `${p}.${s}`);
  for (const [i, topic] of topics.entries()) {
    await pub.send(`/topic/${topic}`, JSON.stringify({ i }));
  }

  const star = [`${p}.fleet.ah1.status`, `${p}.fleet.ah2.status`];
  const hash = topics.filter(s => s === `${p}.fleet` || s.startsWith(`${p}.fleet.`));
  const gotStar = await w.waitMessages(star.length, 'star');
  const gotHash = await w.waitMessages(hash.length, 'hash');
  assert.ok(await w.noMoreMessages(star.length + hash.length));
  for (const [got, expected, subId] of [
    [gotStar, star, 'star'],
    [gotHash, hash, 'hash'],
  ]) {
    assert.deepEqual(got.map(m => m.headers.topic), expected, subId);
    assert.deepEqual(got.map(m => m.headers.destination), expected.map(s => `/topic/${s}`));
    assert.deepEqual(got.map(m => JSON.parse(m.body).i), expected.map(s => topics.indexOf(s)));
    assert.ok(got.every(m => m.headers.sender === pubc.clientId));
    assert.ok(got.every(m => m.headers.subscription === subId));
  }

  // Unsubscribed, a subscription hears nothing more; the other one still does.
  w.client.unsubscribe('star');
  await pub.send(`/topic/${p}.fleet.ah3.status`, '{"after": "unsubscribe"}');
  const all = await w.waitMessages(hash.length + 1, 'hash');
  assert.equal(all.at(-1).headers.topic, `${p}.fleet.ah3.status`);
  assert.ok(await w.noMoreMessages(star.length + hash.length + 1));

  // Live, not stored: the watcher's inbox (subscription jslive.*) got none of it.
  assert.deepEqual(await receive(node, watcher.token), []);
  await w.disconnect();
  await pub.disconnect();
});

// ----- 6. heart-beats -------------------------------------------------------------------

describe('heart-beats (a node offering 500,500)', () => {
  let hbNode;
  before(async () => {
    hbNode = await startNode('[stomp]\nheartbeat_send_ms = 500\nheartbeat_recv_ms = 500\n');
  });
  after(async () => {
    if (!hbNode) return;
    const outcome = await hbNode.stop();
    assert.equal(outcome, 'exited cleanly', `trunkline ${outcome}:\n${hbNode.logTail()}`);
    hbNode.cleanUp();
  });

  test('heart-beats both ways keep an idle connection up', opts, async t => {
    const h = harness(t);
    const s = await h.stomp(undefined, { on: hbNode, heartbeat: [500, 500] });
    const connected = await s.connect(hbNode.admin.client_id, hbNode.admin.secret);
    assert.equal(connected.headers['heart-beat'], '500,500');

    // Idle for 3 s: more than the server's allowance (2 × 500 ms + 1 s) without
    // stompjs's heart-beats, and stompjs drops the connection itself after 1 s
    // (heartbeatToleranceMultiplier 2) without the server's.
    assert.ok(
      await s.stays(() => !s.closed && s.errors.length === 0 && s.heartbeatLost === 0, 3000),
      s.describe(),
    );
    assert.equal(s.client.connected, true);
    assert.ok(s.heartbeatsReceived >= 3, `${s.heartbeatsReceived} received: ${s.describe()}`);
    assert.ok(s.heartbeatsSent >= 3, `${s.heartbeatsSent} sent: ${s.describe()}`);

    // Still usable.
    await s.send(`/queue/${hbNode.admin.client_id}-inbox`, '{"alive": true}');
    await s.disconnect();
  });

  test('a client that promises heart-beats and stays silent gets ERROR heartbeat_timeout', opts, async t => {
    const h = harness(t);
    // CONNECT says heart-beat:500,0; the socket then swallows stompjs's heart-beats.
    const s = await h.stomp(undefined, { on: hbNode, heartbeat: [500, 0], silent: true });
    const connected = await s.connect(hbNode.admin.client_id, hbNode.admin.secret);
    // The server asks for the client's heart-beats (its second value is not 0).
    assert.equal(connected.headers['heart-beat'].split(',')[1], '500');
    const started = Date.now();
    const error = await s.wait(() => s.errors[0], 'ERROR heartbeat_timeout');
    assert.equal(error.headers.code, 'heartbeat_timeout', JSON.stringify(error.headers));
    // Not before twice the interval, and within twice the interval plus a second (and
    // some slack for a loaded machine).
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 900 && elapsed <= 4000, `ERROR after ${elapsed} ms`);
    assert.ok(s.heartbeatsSent >= 1, 'stompjs did try to send heart-beats');
    await s.waitClosed();
  });
});
