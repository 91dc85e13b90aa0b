// Preview GET: the most common request. Each VU sends GET <PATH_PREFIX> to its sandbox's
// preview host in a loop. Env vars: see lib.js. Example:
//   k6 run -e TARGET=http://127.0.0.1:8080 -e SANDBOX=sbx-1 -e TOKEN=tok-123 loadtest/k6/preview_get.js
import { defaultOptions, previewGet, sandboxForVu } from './lib.js';

export const options = defaultOptions();

export default function () {
  previewGet(sandboxForVu());
}
