// Preview POST with a 64 KiB body: request bodies streamed through the proxy.
// Env vars: see lib.js.
import { defaultOptions, previewPost64k, sandboxForVu } from './lib.js';

export const options = defaultOptions();

export default function () {
  previewPost64k(sandboxForVu());
}
