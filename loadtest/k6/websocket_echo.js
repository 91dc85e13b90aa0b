// WebSocket echo through the proxy: each iteration opens <preview host>/ws, sends WS_MESSAGES
// (default 20) messages one after another, checks every echo and records its round trip in
// ws_echo_rtt. Env vars: see lib.js. The sandbox app must echo on /ws (the demo runner does).
import { env, commonOptions, thresholds, websocketEcho, sandboxForVu } from './lib.js';

export const options = Object.assign(commonOptions(), {
  vus: env.vus,
  duration: env.duration,
  thresholds: Object.assign(thresholds(), {
    ws_echo_failures: ['count<1'],
    ws_echoes: ['count>0'],
    ws_echo_rtt: [`p(95)<${env.p95}`, `p(99)<${env.p99}`],
    ws_connecting: [`p(95)<${env.p95}`, `p(99)<${env.p99}`],
  }),
});
// No HTTP request is made here: drop the HTTP thresholds, which would fail on no data.
delete options.thresholds.http_req_failed;
delete options.thresholds.http_req_duration;

export default function () {
  websocketEcho(sandboxForVu());
}
