// A mix of the traffic kinds at once, as a deployment sees it. VUS is split across scenarios
// (about 60% preview GET, 15% preview POST 64 KiB, 15% toolbox, 10% WebSocket; each gets at
// least one VU), all running for DURATION. Thresholds apply overall and per request kind.
// Env vars: see lib.js.
import { env, commonOptions, thresholds, previewGet, previewPost64k, toolboxVersion, websocketEcho, sandboxForVu } from './lib.js';

function share(fraction) {
  return Math.max(1, Math.round(env.vus * fraction));
}

function scenario(exec, fraction) {
  return { executor: 'constant-vus', exec, vus: share(fraction), duration: env.duration };
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

export function get() {
  previewGet(sandboxForVu());
}

export function post() {
  previewPost64k(sandboxForVu());
}

export function toolbox() {
  toolboxVersion(sandboxForVu());
}

export function websocket() {
  websocketEcho(sandboxForVu());
}
