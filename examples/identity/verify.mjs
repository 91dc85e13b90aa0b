// Verifies sandgate's X-Sandgate-Identity header with Node's built-in crypto (Node >= 18, no deps).
//
//     node verify.mjs JWKS_URL TOKEN AUDIENCE   # prints the claims, or exits 1
//
// AUDIENCE is "<sandboxId>:<port>" of the app checking it: a token for another sandbox or port
// is refused. Cache the JWKS in a real app (it is served with Cache-Control: max-age=300).
import { createPublicKey, verify } from "node:crypto";

export async function verifyIdentity(token, jwksUrl, audience, issuer = "sandgate") {
  const [h, p, s] = token.split(".");
  const header = JSON.parse(Buffer.from(h, "base64url"));
  const { keys } = await (await fetch(jwksUrl)).json();
  const jwk = keys.find((k) => k.kid === header.kid && k.alg === header.alg);
  if (!jwk || !["EdDSA", "ES256"].includes(header.alg)) throw new Error("unknown key");
  const key = { key: createPublicKey({ key: jwk, format: "jwk" }), dsaEncoding: "ieee-p1363" };
  const hash = header.alg === "ES256" ? "sha256" : null;
  const claims = JSON.parse(Buffer.from(p, "base64url"));
  if (!verify(hash, Buffer.from(`${h}.${p}`), key, Buffer.from(s, "base64url"))) throw new Error("bad signature");
  if (claims.aud !== audience || claims.iss !== issuer || !(claims.exp > Date.now() / 1000)) throw new Error("wrong audience, issuer or expired");
  return claims;
}

const [jwksUrl, token, audience] = process.argv.slice(2);
if (audience) {
  verifyIdentity(token, jwksUrl, audience).then(
    (claims) => console.log(JSON.stringify(claims)),
    (e) => { console.error(`rejected: ${e.message}`); process.exit(1); },
  );
}
