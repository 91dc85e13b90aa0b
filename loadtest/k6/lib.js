// Shared configuration and request functions for the sandgate k6 scripts.
//
// Every knob is an environment variable (k6 run -e NAME=value, or exported):
//   TARGET       where to connect, e.g. http://127.0.0.1:8080 or https://proxy.example.com
//                (default http://127.0.0.1:8080)
//   DOMAIN       preview domain; preview hosts are <PORT>-<sandbox>.<DOMAIN> (default preview.localhost)
//   SANDBOX      sandbox id(s), comma-separated; each VU picks one (default sbx-1)
//   PORT         sandbox port for preview traffic (default 3000)
//   TOKEN        credential sent with every request (empty: none, for public sandboxes)
//   AUTH_HEADER  header that carries TOKEN (default X-Daytona-Preview-Token; e.g. Authorization)
//   AUTH_SCHEME  prefix before TOKEN (default empty; e.g. "Bearer " for API keys)
//   HOST_MODE    header (default): connect to TARGET and send the preview host in a Host header,
//                so no DNS entry is needed;  url: put the preview host in the URL itself
//                (<scheme>://<PORT>-<sandbox>.<DOMAIN>[:port of TARGET]) for a real deployment
//   RESOLVE      with HOST_MODE=url: an IP that every *.<DOMAIN> name resolves to inside k6
//                (k6's `hosts` option), e.g. 127.0.0.1 for a local run without DNS entries;
//                k6 does NOT resolve *.localhost to loopback by itself
//   MODE         proxy (default) | direct: talk to a runner directly (TARGET is the runner,
//                paths /sandboxes/<id>/toolbox/proxy/<port>/..., RUNNER_KEY as
//                X-Daytona-Authorization), to measure what the proxy adds
//   RUNNER_KEY   runner API key for MODE=direct
//   POST_SANDBOX sandbox for the 64 KiB POSTs (default: the VU's sandbox). Its app must read
//                request bodies: sandgate's demo runner answers without reading them and then
//                closes the connection, which the proxy reports as 502 (see RESULTS.md)
//   PATH_PREFIX  request path under the sandbox app for GETs (default /hello)
//   VUS, DURATION   load shape (defaults 16 and 10s)
//   MAX_ERROR_RATE  threshold on http_req_failed and failed checks (default 0.01)
//   P95_MS, P99_MS  latency thresholds (defaults 500 and 1000)
import http from 'k6/http';
import ws from 'k6/ws';
import { check } from 'k6';
import { Trend, Counter } from 'k6/metrics';

export const env = {
  target: (__ENV.TARGET || 'http://127.0.0.1:8080').replace(/\/+$/, ''),
  domain: __ENV.DOMAIN || 'preview.localhost',
  sandboxes: (__ENV.SANDBOX || 'sbx-1').split(',').map((s) => s.trim()).filter((s) => s),
  port: __ENV.PORT || '3000',
  token: __ENV.TOKEN || '',
  authHeader: __ENV.AUTH_HEADER || 'X-Daytona-Preview-Token',
  authScheme: __ENV.AUTH_SCHEME || '',
  hostMode: __ENV.HOST_MODE || 'header',
  mode: __ENV.MODE || 'proxy',
  runnerKey: __ENV.RUNNER_KEY || '',
  resolve: __ENV.RESOLVE || '',
  postSandbox: __ENV.POST_SANDBOX || '',
  path: __ENV.PATH_PREFIX || '/hello',
  vus: parseInt(__ENV.VUS || '16', 10),
  duration: __ENV.DURATION || '10s',
  maxErrorRate: parseFloat(__ENV.MAX_ERROR_RATE || '0.01'),
  p95: parseInt(__ENV.P95_MS || '500', 10),
  p99: parseInt(__ENV.P99_MS || '1000', 10),
};

if (env.sandboxes.length === 0) {
  throw new Error('SANDBOX must name at least one sandbox id');
}
if (env.mode !== 'proxy' && env.mode !== 'direct') {
  throw new Error(`MODE must be proxy or direct, not ${env.mode}`);
}

/// Thresholds shared by every script: errors, failed checks, p95/p99 (optionally per tag).
export function thresholds(extra) {
  const t = {
    http_req_failed: [`rate<${env.maxErrorRate}`],
    checks: [`rate>${1 - env.maxErrorRate}`],
    http_req_duration: [`p(95)<${env.p95}`, `p(99)<${env.p99}`],
  };
  return Object.assign(t, extra || {});
}

/// Options every script shares: name resolution for RESOLVE, and p99 in the summary (k6's
/// default summary stops at p95).
export function commonOptions() {
  const o = { summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'] };
  if (env.resolve) {
    o.hosts = { [`*.${env.domain}`]: env.resolve };
  }
  return o;
}

/// The default load shape: VUS virtual users for DURATION, with the shared thresholds.
export function defaultOptions(extraThresholds) {
  return Object.assign(commonOptions(), {
    vus: env.vus,
    duration: env.duration,
    thresholds: thresholds(extraThresholds),
  });
}

/// One sandbox per VU, spread over the SANDBOX list.
export function sandboxForVu() {
  return env.sandboxes[(__VU || 0) % env.sandboxes.length];
}

function targetParts() {
  const m = env.target.match(/^(https?):\/\/([^/:]+|\[[^\]]+\])(?::(\d+))?$/);
  if (!m) {
    throw new Error(`TARGET must look like http(s)://host[:port], not ${env.target}`);
  }
  return { scheme: m[1], host: m[2], port: m[3] };
}

function authHeaders() {
  const h = {};
  if (env.token) {
    h[env.authHeader] = `${env.authScheme}${env.token}`;
  }
  return h;
}

/// URL and headers for a preview request to `path` (starting with /) on `sandbox`.
/// MODE=direct gives the runner's URL for the same request, as the proxy would send it.
export function previewRequest(sandbox, path, wsScheme) {
  const t = targetParts();
  const scheme = wsScheme ? (t.scheme === 'https' ? 'wss' : 'ws') : t.scheme;
  const portSuffix = t.port ? `:${t.port}` : '';
  if (env.mode === 'direct') {
    return {
      url: `${scheme}://${t.host}${portSuffix}/sandboxes/${sandbox}/toolbox/proxy/${env.port}${path}`,
      headers: { 'X-Daytona-Authorization': `Bearer ${env.runnerKey}` },
    };
  }
  const previewHost = `${env.port}-${sandbox}.${env.domain}`;
  if (env.hostMode === 'url') {
    return { url: `${scheme}://${previewHost}${portSuffix}${path}`, headers: authHeaders() };
  }
  // k6 (Go net/http) sends a Host header given in params as the request's Host.
  const headers = authHeaders();
  headers.Host = `${previewHost}${portSuffix}`;
  return { url: `${scheme}://${t.host}${portSuffix}${path}`, headers };
}

/// URL and headers for a toolbox call `GET /toolbox/<sandbox>/<rest>` on the proxy's own host.
export function toolboxRequest(sandbox, rest) {
  if (env.mode === 'direct') {
    return {
      url: `${env.target}/sandboxes/${sandbox}/toolbox${rest}`,
      headers: { 'X-Daytona-Authorization': `Bearer ${env.runnerKey}` },
    };
  }
  return { url: `${env.target}/toolbox/${sandbox}${rest}`, headers: authHeaders() };
}

export function previewGet(sandbox) {
  const r = previewRequest(sandbox, env.path);
  const res = http.get(r.url, { headers: r.headers, tags: { name: 'preview_get' } });
  check(res, {
    'preview GET is 200': (x) => x.status === 200,
    'preview GET has a body': (x) => x.body && x.body.length > 0,
  });
  return res;
}

// 64 KiB of printable bytes, built once per VU.
const BODY_64K = 'x'.repeat(64 * 1024);

export function previewPost64k(sandbox) {
  const r = previewRequest(env.postSandbox || sandbox, env.path);
  const headers = Object.assign({ 'Content-Type': 'application/octet-stream' }, r.headers);
  const res = http.post(r.url, BODY_64K, { headers, tags: { name: 'preview_post_64k' } });
  check(res, { 'preview POST 64 KiB is 200': (x) => x.status === 200 });
  return res;
}

export function toolboxVersion(sandbox) {
  const r = toolboxRequest(sandbox, '/version');
  const res = http.get(r.url, { headers: r.headers, tags: { name: 'toolbox_version' } });
  check(res, {
    'toolbox /version is 200': (x) => x.status === 200,
    'toolbox /version is JSON': (x) => {
      try {
        return typeof x.json() === 'object';
      } catch (_) {
        return false;
      }
    },
  });
  return res;
}

export const wsEchoRtt = new Trend('ws_echo_rtt', true);
export const wsEchoes = new Counter('ws_echoes');
export const wsEchoFailures = new Counter('ws_echo_failures');
const WS_MESSAGES = parseInt(__ENV.WS_MESSAGES || '20', 10);

/// Opens a WebSocket to the sandbox app's `/ws`, sends WS_MESSAGES messages one at a time,
/// checks each echo and its round trip, then closes.
export function websocketEcho(sandbox) {
  const r = previewRequest(sandbox, '/ws', true);
  // Zero samples so the failure thresholds always have data to judge.
  wsEchoFailures.add(0);
  let sent = 0;
  let sentAt = 0;
  let expected = '';
  // Set when this side closes: a close before that (the proxy or the app went away) is a
  // session cut short, counted as a failure.
  let finished = false;
  const res = ws.connect(r.url, { headers: r.headers, tags: { name: 'websocket_echo' } }, (socket) => {
    const sendNext = () => {
      expected = `echo ${__VU}-${__ITER}-${sent}`;
      sentAt = Date.now();
      sent += 1;
      socket.send(expected);
    };
    socket.on('open', sendNext);
    socket.on('message', (data) => {
      if (data === expected) {
        wsEchoRtt.add(Date.now() - sentAt);
        wsEchoes.add(1);
      } else {
        wsEchoFailures.add(1);
      }
      if (sent < WS_MESSAGES) {
        sendNext();
      } else {
        finished = true;
        socket.close();
      }
    });
    socket.on('error', () => {
      finished = true;
      wsEchoFailures.add(1);
    });
    socket.on('close', () => {
      if (!finished) {
        wsEchoFailures.add(1);
      }
    });
    // A stuck echo must not hang the VU.
    socket.setTimeout(() => {
      finished = true;
      wsEchoFailures.add(1);
      socket.close();
    }, 10000);
  });
  check(res, { 'websocket upgrade is 101': (x) => x && x.status === 101 });
  return res;
}
