#!/usr/bin/env node
// Real-browser test of the orchestrator dashboard (orchestrator/web/dashboard.html).
//
//   node tests/browser/dashboard_test.mjs --url http://127.0.0.1:PORT/ [--token T] \
//        [--disconnect] [--until-complete] --screenshot OUT.png [--timeout-ms 60000]
//   node tests/browser/dashboard_test.mjs --mock --screenshot OUT.png
//
// Live mode: opens the page served by a running orchestrator, prints "dashboard_test: page ready"
// once the page is connected and shows the snapshot (start the drill after that line: see
// run_dashboard_test.sh), then waits until some host row goes Updating and later Ready again and
// the UD x FD grid has cells. Every websocket the page opens is recorded: the events over all of
// them must run snapshot+1, +2, ... with no gap and no duplicate. --disconnect: once a host is
// Updating, drop the page's websocket; the page must reconnect with since=<its last seq>.
// --until-complete: also wait for the drill to be Completed on the page, then check that hosts,
// instances and the drill match GET /v1/hosts, /v1/instances and /v1/drills, that every batch is
// done and that the header says "batch n of n".
// Client traffic (live mode): the traffic panel must show what the first snapshot's `traffic`
// field says; on this simulated rack (no load balancer) that is "client traffic not measured:
// REASON". An orchestrator whose snapshot has no `traffic` field leaves the panel at "no report
// from the orchestrator yet"; --require-traffic makes that a failure.
// Mock mode: opens the HTML file directly with a scripted fake WebSocket (snapshot, deltas, two
// disconnects with resume, a resync snapshot, live traffic.stats) and checks what the page shows
// after each part.
// Exit 0 and a one-line summary on success; exit 1 with a reason otherwise (2: bad usage).
import { chromium } from 'playwright-core';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

function usage(msg) {
  if (msg) console.error(`dashboard_test: ${msg}`);
  console.error('usage: dashboard_test.mjs (--url URL [--token T] [--disconnect] [--until-complete] [--require-traffic] | ' +
                '--mock [--html FILE]) [--screenshot OUT.png] [--timeout-ms N] [--chromium PATH]');
  process.exit(2);
}

function parseArgs(argv) {
  const o = { url: '', token: '', screenshot: '', timeoutMs: 60000, mock: false, disconnect: false, complete: false,
              requireTraffic: false,
              html: path.resolve(here, '../../orchestrator/web/dashboard.html'),
              chromium: process.env.FABRICLAB_CHROMIUM || '/usr/bin/chromium' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => { if (i + 1 >= argv.length) usage(`${a} needs a value`); return argv[++i]; };
    if (a === '--url') o.url = val();
    else if (a === '--token') o.token = val();
    else if (a === '--screenshot') o.screenshot = val();
    else if (a === '--timeout-ms') o.timeoutMs = Number(val());
    else if (a === '--mock') o.mock = true;
    else if (a === '--disconnect') o.disconnect = true;
    else if (a === '--until-complete') o.complete = true;
    else if (a === '--require-traffic') o.requireTraffic = true;
    else if (a === '--html') o.html = path.resolve(val());
    else if (a === '--chromium') o.chromium = val();
    else if (a === '-h' || a === '--help') usage();
    else usage(`unknown argument ${a}`);
  }
  if (!o.mock && !o.url) usage('--url or --mock is required');
  if (!Number.isFinite(o.timeoutMs) || o.timeoutMs <= 0) usage('--timeout-ms must be a positive number');
  if (!o.screenshot) o.screenshot = path.resolve(o.mock ? 'dashboard-mock.png' : 'dashboard.png');
  return o;
}

// Installed in the page before its scripts run: records every value each host row's data-state,
// each batch row's data-status and the connection pill's data-conn take, however briefly.
function installTracer() {
  const trace = { hosts: {}, batches: {}, conn: [], traffic: [] };
  window.__trace = trace;
  const push = (a, v) => { if (a[a.length - 1] !== v) a.push(v); };
  const scan = () => {
    for (const e of document.querySelectorAll('[data-host][data-state]')) {
      push(trace.hosts[e.getAttribute('data-host')] ||= [], e.getAttribute('data-state'));
    }
    for (const e of document.querySelectorAll('[data-batch][data-status]')) {
      push(trace.batches[e.getAttribute('data-batch')] ||= [], e.getAttribute('data-status'));
    }
    const c = document.querySelector('[data-conn]');
    if (c) push(trace.conn, c.getAttribute('data-conn'));
    const t = document.querySelector('[data-traffic]');
    if (t) push(trace.traffic, t.getAttribute('data-traffic'));
  };
  new MutationObserver(scan).observe(document, {
    subtree: true, childList: true, attributes: true,
    attributeFilter: ['data-state', 'data-status', 'data-conn', 'data-traffic'],
  });
}

// ------------------------------------------------------------------------------------------------
// Mock mode: the scripted feed.

function buildScript() {
  let seq = 0;
  const ev = (type, fields) => ({ seq: ++seq, type, ...fields });
  const H = (id, fd, state = 'Ready', step = 'None', img = 'host-v1') =>
    ({ id, fd, endpoint: `127.0.1.1:${7101 + Number(id.slice(1))}`, state, step, host_image: img, capacity: 4 });
  const I = (name, service, index, ud, fd, host, status = 'Healthy', image = 'v1') =>
    ({ name, service, index, ud, fd, host, status, healthy: status === 'Healthy', image, counter: 10 + index });
  const svc = (name, n, uds, extra = {}) =>
    ({ name, instance_count: n, ud_count: uds, image: 'v1', memory_mib: 128, healthy: n, total: n,
       available: true, uds_down: [], ...extra });
  const batches = [
    { index: 0, hosts: ['h0', 'h3', 'h4'], status: 'pending', started_at: '', finished_at: '' },
    { index: 1, hosts: ['h1', 'h5'], status: 'pending', started_at: '', finished_at: '' },
    { index: 2, hosts: ['h2'], status: 'pending', started_at: '', finished_at: '' },
  ];
  const drill = (state, cur, extra = {}) => ({ id: 'd1', state, kind: 'host-os', target: 'host-v2', current_batch: cur,
    lower_bound: 3, reason: '', started_at: '', finished_at: '', batches: structuredClone(batches), ...extra });
  const hosts = [H('h0', 0), H('h1', 1), H('h2', 2), H('h3', 0), H('h4', 1), H('h5', 2)];
  const instances = [
    I('web-0', 'web', 0, 0, 0, 'h0'), I('web-1', 'web', 1, 1, 1, 'h1'), I('web-2', 'web', 2, 2, 2, 'h2'),
    I('web-3', 'web', 3, 0, 0, 'h3'), I('api-0', 'api', 0, 0, 1, 'h4'), I('api-1', 'api', 1, 1, 2, 'h5'),
    I('api-2', 'api', 2, 2, 2, 'h2'), I('db-0', 'db', 0, 0, 0, 'h3'), I('tmp-0', 'tmp', 0, 0, 1, 'h4'),
  ];
  const services = [svc('web', 4, 3), svc('api', 3, 3), svc('db', 1, 5), svc('tmp', 1, 1)];
  const XSS = '<img src=x onerror="window.__pwned=1">';
  const tstat = (requests, failed, last_error = '', in_flight = 1, rps = 20) => ({ requests, failed, in_flight, rps, last_error });

  // A host's whole update, as the executor reports it.
  const hostWalk = (h, guests, svcName) => {
    const out = [ev('host.state', { host: h, state: 'Updating', step: 'Notifying', host_image: 'host-v1' }),
                 ev('host.state', { host: h, state: 'Updating', step: 'StoppingGuests', host_image: 'host-v1' })];
    for (const g of guests) out.push(ev('instance.state', { instance: { ...g, status: 'Stopping', healthy: false } }),
                                     ev('instance.state', { instance: { ...g, status: 'Stopped', healthy: false } }));
    if (svcName) out.push(ev('service.availability', { service: svcName, healthy: 3, total: 4, available: true, uds_down: [guests[0].ud] }));
    out.push(ev('host.state', { host: h, state: 'Updating', step: 'SwappingImage', host_image: 'host-v1' }),
             ev('host.state', { host: h, state: 'Updating', step: 'Rebooting', host_image: 'host-v2' }),
             ev('host.state', { host: h, state: 'Updating', step: 'StartingGuests', host_image: 'host-v2' }));
    for (const g of guests) out.push(ev('instance.state', { instance: { ...g, status: 'Starting', healthy: false } }),
                                     ev('instance.state', { instance: { ...g, status: 'Healthy', healthy: true, counter: g.counter + 1 } }));
    if (svcName) out.push(ev('service.availability', { service: svcName, healthy: 4, total: 4, available: true, uds_down: [] }));
    out.push(ev('host.state', { host: h, state: 'Updating', step: 'Verifying', host_image: 'host-v2' }),
             ev('host.state', { host: h, state: 'Ready', step: 'None', host_image: 'host-v2' }));
    return out;
  };
  const find = (n) => instances.find((i) => i.name === n);
  const STEP = 110;  // ms between scripted events
  const play = (msgs) => msgs.map((msg) => ({ d: STEP, msg }));

  // Session 1: snapshot, start of the drill, h0's full update, then the connection drops.
  const s1 = [
    ev('snapshot', { state: { hosts, services, instances, drill: drill('Planned', 0),
                              traffic: { measured: true, reason: '', services: {} } } }),
    ev('drill.state', { drill: drill('Running', 0, { started_at: '@d1' }) }),
    ev('traffic.stats', { drill: 'd1', services: { web: tstat(20, 0), api: tstat(20, 0) } }),
    ev('drill.batch', { drill: 'd1', index: 0, status: 'running', hosts: ['h0', 'h3', 'h4'], started_at: '@b0', finished_at: '' }),
    ev('drill.host', { drill: 'd1', host: 'h0', batch: 0, status: 'running', job: 'j1' }),
    ...hostWalk('h0', [find('web-0')], 'web'),
    ev('drill.host', { drill: 'd1', host: 'h0', batch: 0, status: 'done', job: 'j1' }),
    ev('traffic.stats', { drill: 'd1', services: { web: tstat(60, 0), api: tstat(60, 0) } }),
    ev('instance.removed', { name: 'tmp-0' }),
    ev('custom.note', { text: XSS, detail: { nested: [1, 2, 3] } }),
    ev('service.created', { service: svc(XSS, 1, 1, { healthy: 0, total: 1, available: false }) }),
  ];
  const cut1 = seq;
  // Session 2 (since=cut1): an overlapping old event (must be ignored), the rest of batch 0,
  // batch 1 starts, a healing, then the connection drops again.
  const s2 = [
    { seq: 5, type: 'host.state', host: 'h0', state: 'Updating', step: 'Notifying', host_image: 'host-v1' },
    ...hostWalk('h3', [find('web-3'), find('db-0')], 'web'),
    ev('drill.host', { drill: 'd1', host: 'h3', batch: 0, status: 'done', job: 'j2' }),
    ev('traffic.stats', { drill: 'd1', services: { web: tstat(100, 0), api: tstat(100, 2, 'read: Connection reset by peer') } }),
    ...hostWalk('h4', [find('api-0')], null),
    ev('drill.batch', { drill: 'd1', index: 0, status: 'done', hosts: ['h0', 'h3', 'h4'], started_at: '@b0', finished_at: '@b0end' }),
    ev('drill.batch', { drill: 'd1', index: 1, status: 'running', hosts: ['h1', 'h5'], started_at: '@b1', finished_at: '' }),
    ev('drill.state', { drill: drill('Running', 1, { started_at: '@d1' }) }),
    ev('instance.state', { instance: I('tmp-1', 'tmp', 1, 0, 1, 'h4', 'Creating') }),
    ev('service.healed', { service: 'web', instance: 'web-1', from_host: 'h1', to_host: 'h5', fd: 2, relaxed: ['fd-spread'] }),
    ev('host.state', { host: 'h1', state: 'Updating', step: 'Notifying', host_image: 'host-v1' }),
  ];
  const cut2 = seq;
  // Session 3 (since=cut2): the server lost that point, so it sends a resync snapshot (tmp-1 and
  // the odd service are gone, batch 1 done, h2 rebooting), then batch 2 finishes and the drill
  // completes. Events in between were missed on purpose.
  seq += 7;
  const doneB = (b) => ({ ...b, status: 'done', started_at: `@b${b.index}`, finished_at: `@b${b.index}end` });
  const snapHosts = hosts.map((h) => ({ ...h, host_image: 'host-v2' }));
  snapHosts[2] = { ...snapHosts[2], state: 'Updating', step: 'Rebooting' };
  const snapInst = instances.filter((i) => i.name !== 'tmp-0')
    .map((i) => (i.host === 'h2' ? { ...i, status: 'Stopped', healthy: false } : { ...i }));
  const d3 = drill('Running', 2, { started_at: '@d1' });
  d3.batches = [doneB(d3.batches[0]), doneB(d3.batches[1]), { ...d3.batches[2], status: 'running', started_at: '@b2' }];
  const s3 = [
    ev('snapshot', { resync: true, state: { hosts: snapHosts, services: services.filter((s) => s.name !== 'tmp'),
                                            instances: snapInst, drill: d3,
                                            traffic: { measured: true, reason: '', services: {
                                              web: tstat(300, 0), api: tstat(300, 2, 'read: Connection reset by peer') } } } }),
    ev('host.state', { host: 'h2', state: 'Updating', step: 'StartingGuests', host_image: 'host-v2' }),
    ev('instance.state', { instance: { ...find('web-2'), status: 'Healthy' } }),
    ev('instance.state', { instance: { ...find('api-2'), status: 'Healthy' } }),
    ev('host.state', { host: 'h2', state: 'Updating', step: 'Verifying', host_image: 'host-v2' }),
    ev('host.state', { host: 'h2', state: 'Ready', step: 'None', host_image: 'host-v2' }),
    ev('drill.batch', { drill: 'd1', index: 2, status: 'done', hosts: ['h2'], started_at: '@b2', finished_at: '@b2end' }),
    ev('traffic.stats', { drill: 'd1', services: { web: tstat(361, 0, '', 0, 19.5), api: tstat(361, 5, XSS, 0, 20) } }),
    ev('drill.state', { drill: { ...drill('Completed', 2, { started_at: '@d1', finished_at: '@d1end' }),
                                 batches: d3.batches.map(doneB) } }),
  ];
  const sessions = [
    [...play(s1), { d: 150, close: 1006 }],
    [...play(s2), { d: 150, close: 1001 }],
    play(s3),
  ];
  return { sessions, cut1, cut2, finalSeq: seq, xss: XSS };
}

// Runs in the page (before its scripts): a WebSocket stand-in that plays `script.sessions`, one
// per connection, and records every URL the page connected to.
function installFakeWebSocket(script) {
  const log = { urls: [], delivered: [], closedAt: [] };
  window.__fakeWs = log;
  const stamps = {};
  class FakeWebSocket extends EventTarget {
    constructor(url) {
      super();
      this.url = String(url);
      this.readyState = 0;
      this.protocol = '';
      this.extensions = '';
      this.binaryType = 'blob';
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      const n = log.urls.length;
      log.urls.push(this.url);
      const steps = script.sessions[n];
      let i = 0;
      const fire = (type, props) => {
        const e = new Event(type);
        Object.assign(e, props || {});
        const h = this['on' + type];
        if (typeof h === 'function') h.call(this, e);
        this.dispatchEvent(e);
      };
      if (!steps) {  // no more scripted sessions: refuse, like a server that went away
        setTimeout(() => { this.readyState = 3; fire('error'); fire('close', { code: 1006, reason: '', wasClean: false }); }, 30);
        return;
      }
      const next = () => {
        if (this.readyState !== 1 || i >= steps.length) return;
        const s = steps[i++];
        this._timer = setTimeout(() => {
          if (this.readyState !== 1) return;
          if (s.close) {
            this.readyState = 3;
            log.closedAt.push(log.delivered.length ? log.delivered[log.delivered.length - 1] : null);
            fire('close', { code: s.close, reason: 'scripted drop', wasClean: false });
            return;
          }
          // "@name" strings become the time the script first used that name (batch starts, ends).
          const now = new Date().toISOString();
          const txt = JSON.stringify({ ...s.msg, time: now })
            .replace(/"@(\w+)"/g, (_, k) => JSON.stringify(stamps[k] ||= now));
          log.delivered.push(s.msg.seq);
          fire('message', { data: txt });
          next();
        }, s.d);
      };
      setTimeout(() => { this.readyState = 1; fire('open'); next(); }, 20);
    }
    send() { if (this.readyState !== 1) throw new Error('InvalidStateError'); }
    close(code) {
      if (this.readyState >= 2) return;
      clearTimeout(this._timer);
      this.readyState = 3;
      setTimeout(() => {
        const e = new Event('close'); Object.assign(e, { code: code || 1000, reason: '', wasClean: true });
        if (typeof this.onclose === 'function') this.onclose(e);
        this.dispatchEvent(e);
      }, 0);
    }
  }
  FakeWebSocket.CONNECTING = 0; FakeWebSocket.OPEN = 1; FakeWebSocket.CLOSING = 2; FakeWebSocket.CLOSED = 3;
  window.WebSocket = FakeWebSocket;
}

// ------------------------------------------------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The first host whose traced states include Updating and, after it, Ready.
function cycledHost(trace) {
  for (const [id, states] of Object.entries(trace.hosts || {})) {
    const u = states.indexOf('Updating');
    if (u >= 0 && states.indexOf('Ready', u + 1) > u) return id;
  }
  return null;
}

async function snapshotPage(page) {
  return page.evaluate(() => {
    const fl = window.fabriclab;
    return {
      trace: window.__trace || {},
      cells: document.querySelectorAll('[data-instance]').length,
      hostRows: document.querySelectorAll('[data-host]').length,
      lastSeq: fl ? fl.lastSeq : null,
      connected: fl ? fl.connected : null,
      drill: fl && fl.state.drill ? { id: fl.state.drill.id, state: fl.state.drill.state } : null,
      sockets: window.__wsLog ? window.__wsLog.sockets.length : 0,
    };
  });
}

// Runs in the page (live mode, before its scripts): wraps the real WebSocket so the test can see
// every connection's URL and the seq of every message it carried, and can drop the current one.
function installSocketRecorder() {
  const Native = window.WebSocket;
  const log = { sockets: [] };
  const objs = [];
  window.__wsLog = log;
  window.__wsDrop = () => {
    const s = objs[objs.length - 1];
    if (!s || s.readyState !== Native.OPEN) return false;
    s.close(4000, 'dashboard_test: dropped');
    return true;
  };
  function Recorded(url, protocols) {
    const s = protocols === undefined ? new Native(url) : new Native(url, protocols);
    const rec = { url: String(url), open: false, close: null, msgs: [] };
    log.sockets.push(rec);
    objs.push(s);
    s.addEventListener('open', () => { rec.open = true; });
    s.addEventListener('message', (e) => {
      let m = null;
      try { m = JSON.parse(e.data); } catch (err) { /* recorded as unparsable */ }
      const snapTraffic = m && m.type === 'snapshot' && m.state && typeof m.state === 'object' ? m.state.traffic : undefined;
      rec.msgs.push(m ? { seq: m.seq, type: m.type, resync: m.resync === true, traffic: snapTraffic }
                      : { seq: null, type: 'unparsable' });
    });
    s.addEventListener('close', (e) => { rec.close = e.code; });
    return s;
  }
  Recorded.prototype = Native.prototype;
  Object.assign(Recorded, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  window.WebSocket = Recorded;
}

// Checks the recorded connections: the first one starts with a snapshot, every later one asks
// for since=<the last seq the page had>, and the events over all of them are exactly
// snapshot+1, snapshot+2, ... (nothing missed, nothing applied twice). Returns problems.
function checkResume(sockets) {
  const out = [];
  if (!sockets.length) return ['no websocket was opened'];
  let expect = null;  // the next seq due
  sockets.forEach((s, k) => {
    const since = new URL(s.url).searchParams.get('since');
    if (k === 0 && since !== null) out.push(`first connection should not resume: ${s.url}`);
    if (k > 0 && expect !== null && since !== String(expect - 1)) {
      out.push(`connection ${k + 1} should resume with since=${expect - 1}: ${s.url}`);
    }
    for (const m of s.msgs) {
      if (m.type === 'snapshot') {
        if (k > 0 && !m.resync) out.push(`connection ${k + 1} got a snapshot without resync`);
        expect = m.seq + 1;
        continue;
      }
      if (expect === null) { out.push(`connection ${k + 1}: event seq ${m.seq} (${m.type}) before any snapshot`); expect = m.seq + 1; continue; }
      if (m.seq !== expect) out.push(`connection ${k + 1}: seq ${m.seq} (${m.type}) where ${expect} was due`);
      expect = m.seq + 1;
    }
  });
  return out.slice(0, 6);
}

// GET on the orchestrator's REST API (the page's own origin), with the token if one was given.
async function restGet(opts, p) {
  const u = new URL(p, opts.url);
  const r = await fetch(u, { headers: opts.token ? { Authorization: `Bearer ${opts.token}` } : {} });
  if (r.status !== 200) throw new Error(`GET ${p}: HTTP ${r.status}`);
  return r.json();
}

// What the page shows, against what the orchestrator says, once the drill is over.
async function compareWithServer(page, opts) {
  const [hosts, insts, drills] = await Promise.all([restGet(opts, '/v1/hosts'), restGet(opts, '/v1/instances'),
                                                    restGet(opts, '/v1/drills')]);
  const view = await page.evaluate(() => ({
    hosts: Array.from(document.querySelectorAll('[data-host]')).map((r) => ({
      id: r.getAttribute('data-host'), state: r.getAttribute('data-state'), image: r.children[4].textContent })),
    insts: Array.from(document.querySelectorAll('[data-instance]')).map((c) => ({
      name: c.getAttribute('data-instance'), status: c.getAttribute('data-status'),
      ud: c.closest('td').getAttribute('data-ud'), fd: c.closest('td').getAttribute('data-fd') })),
    drill: window.fabriclab.state.drill,
    progress: document.getElementById('d-progress').textContent,
    batches: Array.from(document.querySelectorAll('[data-batch]')).map((b) => b.getAttribute('data-status')),
  }));
  const diff = [];
  const hs = (Array.isArray(hosts) ? hosts : hosts.hosts || []);
  const is = (Array.isArray(insts) ? insts : insts.instances || []);
  const ds = (Array.isArray(drills) ? drills : drills.drills || []);
  const key = (a) => JSON.stringify(a);
  const srvHosts = hs.map((h) => ({ id: h.id, state: h.state, image: h.host_image || '—' })).sort((a, b) => a.id.localeCompare(b.id));
  const pageHosts = [...view.hosts].sort((a, b) => a.id.localeCompare(b.id));
  if (key(srvHosts) !== key(pageHosts)) diff.push(`hosts: page ${key(pageHosts)} server ${key(srvHosts)}`);
  const srvInst = is.map((i) => ({ name: i.name, status: i.status, ud: String(i.ud), fd: String(i.fd) })).sort((a, b) => a.name.localeCompare(b.name));
  const pageInst = [...view.insts].sort((a, b) => a.name.localeCompare(b.name));
  if (key(srvInst) !== key(pageInst)) diff.push(`instances: page ${key(pageInst)} server ${key(srvInst)}`);
  const last = ds.length ? ds[ds.length - 1] : null;
  const d = view.drill;
  if (!d || !last || d.id !== last.id || d.state !== last.state) {
    diff.push(`drill: page ${d ? `${d.id} ${d.state}` : 'none'} server ${last ? `${last.id} ${last.state}` : 'none'}`);
  }
  const n = d ? d.batches.length : 0;
  if (!n || !view.progress.startsWith(`batch ${n} of ${n}`)) diff.push(`header progress "${view.progress}" should say batch ${n} of ${n}`);
  if (!view.batches.length || view.batches.some((b) => b !== 'done')) diff.push(`batches ${view.batches.join('/')} should all be done`);
  if (srvHosts.some((h) => h.state !== 'Ready')) diff.push(`server hosts not all Ready: ${key(srvHosts)}`);
  return { diff, hosts: srvHosts.length, instances: srvInst.length, batches: n, progress: view.progress,
           images: [...new Set(srvHosts.map((h) => h.image))].join(',') };
}

async function runLive(page, opts, fail) {
  const u = new URL(opts.url);
  if (opts.token) u.searchParams.set('token', opts.token);
  await page.addInitScript(installSocketRecorder);
  try {
    await page.goto(u.toString(), { waitUntil: 'load', timeout: opts.timeoutMs });
  } catch (e) {
    fail(`cannot open ${u} (is the orchestrator serving the dashboard there?): ${e && e.message || e}`);
    return null;
  }
  const deadline = Date.now() + opts.timeoutMs;
  const timedOut = (what, s) => {
    const seen = Object.entries(s.trace.hosts || {}).map(([h, v]) => `${h}:${v.join('>')}`).join(' ');
    fail(`timed out after ${opts.timeoutMs} ms ${what}: ${s.cells} instance cells; connected=${s.connected} ` +
         `lastSeq=${s.lastSeq}; drill ${s.drill ? `${s.drill.id} ${s.drill.state}` : 'none'}; host states seen: ${seen || 'none'}`);
    return null;
  };
  // Connected and the first snapshot applied: tell the harness it may start the drill now.
  let s;
  for (;;) {
    s = await snapshotPage(page);
    if (s.connected && s.lastSeq !== null && s.hostRows > 0) break;
    if (Date.now() > deadline) return timedOut('waiting for the page to connect and show the snapshot', s);
    await sleep(100);
  }
  console.log(`dashboard_test: page ready (lastSeq=${s.lastSeq}, ${s.hostRows} hosts, ${s.cells} instance cells)`);

  let dropped = null;  // {seq, sockets} when the test closed the page's websocket
  let host = null;
  for (;;) {
    s = await snapshotPage(page);
    host = cycledHost(s.trace);
    if (opts.disconnect && !dropped && Object.values(s.trace.hosts || {}).some((v) => v.includes('Updating'))) {
      // Mid-walk: drop the connection; the page must come back with since=<its last seq>.
      const r = await page.evaluate(() => ({ ok: window.__wsDrop(), seq: window.fabriclab.lastSeq,
                                             n: window.__wsLog.sockets.length }));
      if (r.ok) {
        dropped = { seq: r.seq, sockets: r.n };
        console.log(`dashboard_test: dropped the page's websocket at seq ${r.seq}`);
      }
    }
    const resumed = !dropped || s.sockets > dropped.sockets && s.connected;
    const complete = !opts.complete || (s.drill && s.drill.state === 'Completed');
    if (host && s.cells > 0 && resumed && complete) break;
    if (s.drill && ['Failed', 'Aborted'].includes(s.drill.state)) {
      fail(`the drill ${s.drill.id} ended ${s.drill.state} (see the orchestrator log)`);
      return null;
    }
    if (Date.now() > deadline) {
      return timedOut(!host ? '(no host went Updating and back to Ready)' : !resumed ? '(the page did not reconnect after the drop)'
                             : !complete ? '(the drill did not reach Completed on the page)' : '', s);
    }
    await sleep(150);
  }
  const parts = [`host ${host} ${s.trace.hosts[host].join('->')}`, `${s.cells} instance cells`, `${s.hostRows} hosts`];
  const sockets = await page.evaluate(() => window.__wsLog.sockets);
  const problems = checkResume(sockets);
  if (dropped) {
    const since = sockets[dropped.sockets] ? new URL(sockets[dropped.sockets].url).searchParams.get('since') : null;
    if (since !== String(dropped.seq)) problems.push(`after the drop at seq ${dropped.seq} the page reconnected with since=${since}`);
    const replayed = sockets.slice(dropped.sockets).reduce((a, k) => a + k.msgs.length, 0);
    parts.push(`resumed with since=${since} (${replayed} events on the new connection)`);
  }
  // Client traffic: the panel says what the last snapshot said (no load balancer here).
  {
    const snaps = sockets.flatMap((k) => k.msgs).filter((m) => m.type === 'snapshot');
    const said = snaps.length ? snaps[snaps.length - 1].traffic : undefined;
    let view;
    const until = Date.now() + 5000;
    for (;;) {
      view = await page.evaluate(() => ({ state: document.getElementById('sec-traffic').getAttribute('data-traffic'),
                                          status: document.getElementById('traffic-status').textContent }));
      const settled = said === undefined ? view.state === 'unknown' : view.state === 'not-measured';
      if (settled || Date.now() > until) break;
      await sleep(200);
    }
    if (said === undefined) {
      if (opts.requireTraffic) problems.push('the snapshot has no `traffic` field (the controller must publish {measured, reason, services})');
      else if (view.state !== 'unknown') problems.push(`without a snapshot traffic field the panel should be unknown, is ${view.state}: "${view.status}"`);
      parts.push('traffic panel: no snapshot traffic field (unknown)');
    } else if (!said || typeof said !== 'object' || said.measured !== false || typeof said.reason !== 'string' || !said.reason) {
      problems.push(`a rack without a load balancer should report traffic {measured: false, reason: "..."}, the snapshot says ${JSON.stringify(said)}`);
    } else if (view.state !== 'not-measured' || view.status !== `client traffic not measured: ${said.reason}`) {
      problems.push(`traffic panel should say "client traffic not measured: ${said.reason}", shows ${view.state}: "${view.status}"`);
    } else {
      parts.push(`traffic panel: "${view.status}"`);
    }
  }
  if (opts.complete) {
    // The walk is over: the page must agree with the REST API (events may still be in flight).
    let cmp;
    const until = Date.now() + 10000;
    for (;;) {
      cmp = await compareWithServer(page, opts);
      if (!cmp.diff.length || Date.now() > until) break;
      await sleep(250);
    }
    problems.push(...cmp.diff);
    parts.push(`drill ${s.drill.id} Completed, "${cmp.progress}", page = server for ${cmp.hosts} hosts (${cmp.images}) and ` +
               `${cmp.instances} instances`);
  }
  if (problems.length) { fail(problems.join('\n  ')); return null; }
  return `${parts.join(', ')}, ${sockets.length} connection(s), lastSeq=${s.lastSeq}`;
}

async function runMock(page, opts, fail) {
  const script = buildScript();
  await page.addInitScript(installFakeWebSocket, script);
  const fileUrl = pathToFileURL(opts.html);
  fileUrl.searchParams.set('token', 's3cret');
  await page.goto(fileUrl.toString(), { waitUntil: 'load' });
  const deadline = Date.now() + opts.timeoutMs;
  let done = false;
  while (Date.now() < deadline) {
    done = await page.evaluate((f) => {
      const fl = window.fabriclab;
      return !!(fl && fl.lastSeq === f && fl.state.drill && fl.state.drill.state === 'Completed');
    }, script.finalSeq);
    if (done) break;
    await sleep(100);
  }
  await sleep(300);  // let the last render and the timeline frame land
  const r = await page.evaluate(() => {
    const q = (s) => document.querySelector(s);
    const cell = (name) => {
      const c = q(`[data-instance="${name}"]`);
      const td = c && c.closest('td');
      return c ? { status: c.getAttribute('data-status'), ud: td && td.getAttribute('data-ud'), fd: td && td.getAttribute('data-fd'),
                   text: c.textContent } : null;
    };
    const fl = window.fabriclab;
    return {
      fake: window.__fakeWs, trace: window.__trace, pwned: window.__pwned === 1,
      imgs: document.querySelectorAll('img').length,
      lastSeq: fl.lastSeq, connected: fl.connected, drill: fl.state.drill,
      cells: document.querySelectorAll('[data-instance]').length, instances: fl.state.instances.length,
      web0: cell('web-0'), web3: cell('web-3'), api2: cell('api-2'), tmp0: cell('tmp-0'), tmp1: cell('tmp-1'),
      h0: q('[data-host="h0"]') && { state: q('[data-host="h0"]').getAttribute('data-state'), text: q('[data-host="h0"]').textContent },
      h2img: q('[data-host="h2"]') && q('[data-host="h2"]').children[4].textContent,
      batches: Array.from(document.querySelectorAll('[data-batch]')).map((b) => b.getAttribute('data-status')),
      services: Array.from(document.querySelectorAll('[data-service]')).map((s) => s.getAttribute('data-service')),
      unknownLogged: !!q('#log [data-type="custom.note"]'),
      unknownText: q('#log [data-type="custom.note"]') ? q('#log [data-type="custom.note"]').textContent : '',
      logTop: q('#log .ev') && q('#log .ev').getAttribute('data-seq'),
      header: q('header').textContent.replace(/\s+/g, ' '),
      conn: q('[data-conn]').getAttribute('data-conn'),
      traffic: q('#sec-traffic') && q('#sec-traffic').getAttribute('data-traffic'),
      trafficStatus: q('#traffic-status') && q('#traffic-status').textContent,
      trafficRows: Array.from(document.querySelectorAll('[data-traffic-service]')).map((tr) => ({
        name: tr.getAttribute('data-traffic-service'), failed: tr.getAttribute('data-failed'),
        cells: Array.from(tr.children).map((c) => c.textContent) })),
      trafficLogged: Array.from(document.querySelectorAll('#log [data-type="traffic.stats"]')).map((e) => e.getAttribute('data-seq')),
    };
  });
  const problems = [];
  const check = (ok, what) => { if (!ok) problems.push(what); };
  check(done, `drill did not reach Completed at seq ${script.finalSeq} (lastSeq=${r.lastSeq}, drill=${r.drill && r.drill.state})`);
  const host = cycledHost(r.trace);
  check(host === 'h0', `h0 not seen Ready->Updating->Ready (trace: ${JSON.stringify(r.trace.hosts)})`);
  const h0 = r.trace.hosts.h0 || [];
  check(h0[0] === 'Ready' && h0.includes('Updating'), `h0 trace should start Ready then Updating: ${h0.join('>')}`);
  for (const b of ['0', '1', '2']) {
    const t = (r.trace.batches[b] || []);
    check(t[t.length - 1] === 'done', `batch ${b} not done at the end: ${t.join('>')}`);
  }
  const b0 = r.trace.batches['0'] || [];
  check(b0.includes('pending') && b0.includes('running') && b0.indexOf('running') < b0.indexOf('done'),
        `batch 0 should go pending->running->done: ${b0.join('>')}`);
  // Connections and resume.
  const urls = r.fake.urls;
  check(urls.length === 3, `expected 3 connections (initial + 2 resumes), got ${urls.length}: ${urls.join(' ')}`);
  check(urls.every((u) => /^wss?:\/\/[^/]+\/v1\/events\?/.test(u) && u.includes('access_token=s3cret')),
        `every connection should be /v1/events with access_token=s3cret: ${urls.join(' ')}`);
  check(urls[0] && !urls[0].includes('since='), `first connection should not resume: ${urls[0]}`);
  check(r.fake.closedAt[0] === script.cut1 && urls[1] && new URL(urls[1]).searchParams.get('since') === String(script.cut1),
        `after the 1st drop (last seq ${r.fake.closedAt[0]}) expected since=${script.cut1}: ${urls[1]}`);
  check(urls[2] && new URL(urls[2]).searchParams.get('since') === String(script.cut2),
        `after the 2nd drop expected since=${script.cut2}: ${urls[2]}`);
  check(r.trace.conn.includes('reconnecting') && r.trace.conn.indexOf('connected') < r.trace.conn.lastIndexOf('reconnecting'),
        `connection status should show connected then reconnecting: ${r.trace.conn.join('>')}`);
  check(r.conn === 'connected' && r.connected === true, `should be connected at the end: ${r.conn}`);
  check(h0.lastIndexOf('Updating') < h0.lastIndexOf('Ready') && r.h0 && r.h0.state === 'Ready',
        `a replayed old event (seq 5, h0 Updating) must be ignored: h0 is ${r.h0 && r.h0.state}, trace ${h0.join('>')}`);
  // Resync snapshot replaced the state.
  check(!r.tmp1 && !r.services.includes(script.xss), `resync snapshot should drop tmp-1 and the odd service: ${r.services}`);
  check(r.h2img === 'host-v2', `h2 host image after the drill should be host-v2, got ${r.h2img}`);
  // Grid.
  check(r.cells > 0 && r.cells === r.instances, `grid cells ${r.cells} != instances ${r.instances}`);
  check(r.web0 && r.web0.ud === '0' && r.web0.fd === '0' && r.web0.status === 'Healthy' && r.web0.text.includes('h0'),
        `web-0 should be Healthy in UD0/FD0 showing h0: ${JSON.stringify(r.web0)}`);
  check(r.api2 && r.api2.ud === '2' && r.api2.fd === '2', `api-2 should be in UD2/FD2: ${JSON.stringify(r.api2)}`);
  check(!r.tmp0, 'tmp-0 was removed (instance.removed) but is still in the grid');
  // Header, log, escaping.
  check(/d1/.test(r.header) && /host-os/.test(r.header) && /host-v2/.test(r.header) && /Completed/.test(r.header) &&
        /batch 3 of 3 \(lower bound 3\)/.test(r.header), `header lacks drill fields/progress: ${r.header}`);
  check(r.unknownLogged && r.unknownText.includes('<img'), 'unknown event type custom.note not shown (escaped) in the log');
  check(!r.pwned && r.imgs === 0, 'markup from event data was interpreted as HTML');
  check(r.logTop === String(script.finalSeq), `log should be newest first (top seq ${r.logTop})`);
  // Client traffic: the last traffic.stats, per service, with the failures marked and the last
  // error shown as text; only the stats that brought more failures are logged.
  check(r.traffic === 'measured' && r.trace.traffic[0] === 'unknown' && !r.trace.traffic.includes('not-measured'),
        `traffic panel should go unknown -> measured: ${r.trace.traffic.join('>')} (now ${r.traffic})`);
  const tw = r.trafficRows.find((x) => x.name === 'web'), ta = r.trafficRows.find((x) => x.name === 'api');
  check(r.trafficRows.length === 2 && tw && ta && tw.failed === '0' && ta.failed === '5',
        `traffic rows should be api (5 failed) and web (0 failed): ${JSON.stringify(r.trafficRows)}`);
  check(ta && ta.cells[1] === '361' && ta.cells[3] === '98.61 %' && ta.cells[5] === '20' && ta.cells[6] === script.xss,
        `api traffic row should show 361 requests, 98.61 %, 20 req/s and the last error as text: ${JSON.stringify(ta)}`);
  check(tw && tw.cells[5] === '19.5' && tw.cells[6] === '—', `web traffic row: ${JSON.stringify(tw)}`);
  check(r.trafficLogged.length === 2, `only the traffic.stats with new failures should be logged: ${r.trafficLogged}`);
  // A rack without a load balancer: a second page whose one snapshot says traffic was not
  // measured and why (markup in the reason must stay text).
  const reason = 'loopback network: the rack has <b>no</b> guest network';
  const nm = await page.context().browser().newPage();
  await nm.addInitScript(installFakeWebSocket, { sessions: [[{ d: 20, msg: { seq: 1, type: 'snapshot', state: {
    hosts: [{ id: 'h0', fd: 0, state: 'Ready', step: 'None', host_image: 'v1' }], services: [], instances: [],
    traffic: { measured: false, reason, services: {} } } } }]] });
  await nm.goto(pathToFileURL(opts.html).toString(), { waitUntil: 'load' });
  let shown = null;
  for (const until = Date.now() + 10000; Date.now() < until; await sleep(100)) {
    shown = await nm.evaluate(() => ({ state: document.getElementById('sec-traffic').getAttribute('data-traffic'),
                                       status: document.getElementById('traffic-status').textContent,
                                       bold: document.querySelectorAll('#sec-traffic b').length,
                                       rows: document.querySelectorAll('[data-traffic-service]').length }));
    if (shown.state !== 'unknown') break;
  }
  check(shown && shown.state === 'not-measured' && shown.status === `client traffic not measured: ${reason}` &&
        shown.bold === 0 && shown.rows === 0, `not measured: the panel should say why, as text: ${JSON.stringify(shown)}`);
  await nm.close();
  if (problems.length) { fail(problems.join('\n  ')); return null; }
  return `mock: h0 ${h0.join('->')}, batches ${r.batches.join('/')}, ${r.cells} cells, traffic ${r.traffic} ` +
         `(api ${ta.failed} failed; unmeasured rack: "${shown && shown.status}"), resumed with ` +
         `since=${script.cut1} and since=${script.cut2}, resync applied, lastSeq=${r.lastSeq}`;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!existsSync(opts.chromium)) {
    console.error(`dashboard_test: FAIL: no browser at ${opts.chromium} (run testbed/setup.sh)`);
    process.exit(1);
  }
  if (opts.mock && !existsSync(opts.html)) {
    console.error(`dashboard_test: FAIL: ${opts.html} not found`);
    process.exit(1);
  }
  let browser;
  let failure = null;
  // Playwright's messages carry ANSI colours and a multi-line call log: keep the first lines, plain.
  const fail = (msg) => {
    if (failure) return;
    failure = String(msg).replace(/\x1b\[[0-9;]*m/g, '').split('\n').filter((l) => l.trim()).slice(0, 12).join('\n  ');
  };
  let summary = null;
  try {
    browser = await chromium.launch({ executablePath: opts.chromium, headless: true, args: ['--no-sandbox'] });
    const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e && e.message || e)));
    page.on('console', (m) => { if (m.type() === 'error' && opts.mock) pageErrors.push(`console: ${m.text()}`); });
    await page.addInitScript(installTracer);
    try {
      summary = opts.mock ? await runMock(page, opts, fail) : await runLive(page, opts, fail);
    } catch (e) {
      fail(`${e && e.message || e}`);
    }
    if (pageErrors.length) fail(`page errors: ${pageErrors.slice(0, 5).join(' | ')}`);
    try {
      await page.screenshot({ path: opts.screenshot, fullPage: true });
    } catch (e) {
      fail(`screenshot failed: ${e && e.message || e}`);
    }
  } catch (e) {
    fail(`browser: ${e && e.message || e}`);
  } finally {
    if (browser) await browser.close().catch(() => {});
  }
  if (failure) {
    console.error(`dashboard_test: FAIL: ${failure}`);
    console.error(`dashboard_test: screenshot: ${existsSync(opts.screenshot) ? opts.screenshot : 'none'}`);
    process.exit(1);
  }
  console.log(`dashboard_test: PASS: ${summary}; screenshot ${opts.screenshot}`);
  process.exit(0);
}

main();
