// Toolbox call: GET /toolbox/<sandbox>/version on the proxy's own host, always authenticated.
// The credential goes in AUTH_HEADER (default X-Daytona-Preview-Token) with AUTH_SCHEME before
// it, so bearer API keys can be tested when they land:
//   k6 run -e TOKEN=tok-123 loadtest/k6/toolbox_bearer.js
//   k6 run -e AUTH_HEADER=Authorization -e AUTH_SCHEME='Bearer ' -e TOKEN=<api key> loadtest/k6/toolbox_bearer.js
import { defaultOptions, toolboxVersion, sandboxForVu } from './lib.js';

export const options = defaultOptions();

export default function () {
  toolboxVersion(sandboxForVu());
}
