// The mixed scenario of mixed.js at a fixed arrival rate (open model: a slow or dead component
// does not slow the offered load down, as real clients would not), for loadtest/chaos.sh and
// loadtest/soak.sh. RATE iterations/s in all, split as mixed.js splits VUs: 60% preview GET,
// 15% preview POST 64 KiB, 15% toolbox, 10% WebSocket sessions (WS_MESSAGES echoes each);
// every kind gets at least 1/s. All run for DURATION.
//
// Env vars (besides lib.js's):
//   RATE          iterations/s over all kinds (default 100)
//   SANDBOX_POOL  N > 0: each iteration picks one of SANDBOX_PREFIX0 .. SANDBOX_PREFIX(N-1) at
//                 random instead of the VU's SANDBOX (default 0)
//   SANDBOX_PREFIX  (default sbx-)
//   MAX_VUS       VUs k6 may start to keep the rate (default 200)
//   PREALLOCATED  VUs started up front, over all kinds (default: a tenth of each kind's rate).
//                 Each VU keeps its own keep-alive connection: with PREALLOCATED = MAX_VUS the
//                 number of client connections stops changing once every VU has run (soak.sh)
// Thresholds: as mixed.js (MAX_ERROR_RATE etc.); chaos.sh runs with thresholds off.
import { env, commonOptions, thresholds, previewGet, previewPost64k, toolboxVersion, websocketEcho, sandboxForVu } from './lib.js';

const rate = parseInt(__ENV.RATE || '100', 10);
const pool = parseInt(__ENV.SANDBOX_POOL || '0', 10);
const prefix = __ENV.SANDBOX_PREFIX || 'sbx-';
const maxVus = parseInt(__ENV.MAX_VUS || '200', 10);
const preallocated = parseInt(__ENV.PREALLOCATED || '0', 10);

function scenario(exec, fraction) {
  const perSecond = Math.max(1, Math.round(rate * fraction));
  return {
    executor: 'constant-arrival-rate',
    exec,
    rate: perSecond,
    timeUnit: '1s',
    duration: env.duration,
    preAllocatedVUs: Math.max(2, preallocated > 0 ? Math.round(preallocated * fraction) : Math.ceil(perSecond / 10)),
    maxVUs: Math.max(4, Math.round(maxVus * fraction)),
  };
}

const latency = [`p(95)<${env.p95}`, `p(99)<${env.p99}`];

export const options = Object.assign(commonOptions(), {
  scenarios: {
    preview_get: scenario('get', 0.6),
    preview_post: scenario('post', 0.15),
    toolbox: scenario('toolbox', 0.15),
    websocket: scenario('websocket', 0.1),
  },
  thresholds: Object.assign(thresholds(), {
    'http_req_duration{name:preview_get}': latency,
    'http_req_duration{name:preview_post_64k}': latency,
    'http_req_duration{name:toolbox_version}': latency,
    ws_echo_failures: ['count<1'],
    ws_echo_rtt: latency,
  }),
});

function sandbox() {
  if (pool > 0) {
    return `${prefix}${Math.floor(Math.random() * pool)}`;
  }
  return sandboxForVu();
}

export function get() {
  previewGet(sandbox());
}

export function post() {
  previewPost64k(sandbox());
}

export function toolbox() {
  toolboxVersion(sandbox());
}

export function websocket() {
  websocketEcho(sandbox());
}
