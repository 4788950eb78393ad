// The official conformance suite's verifyWebhookSignature, verbatim but for
// its replay-window clock check (kept) and its input (a JSON object on stdin).
// Run by tests/test_webhooks_deliver.py; prints true or false.
import { createPublicKey, verify } from "node:crypto";

function verifyWebhookSignature(rawBody, signatureHeader, jwks) {
  if (!signatureHeader) return false;
  const match = signatureHeader.match(/^t=(\d+),kid=([^,]+),ed25519=([A-Za-z0-9_-]+)$/);
  if (!match) return false;
  const [, timestamp, kid, signature] = match;
  const key = jwks.keys.find((candidate) => candidate.kid === kid);
  if (!key) return false;
  const now = Math.floor(Date.now() / 1e3);
  if (Math.abs(now - Number(timestamp)) > 300) return false;
  const publicKey = createPublicKey({ key, format: `jwk` });
  return verify(null, Buffer.from(`${timestamp}.${rawBody}`), publicKey, Buffer.from(signature, `base64url`));
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const { rawBody, signature, jwks } = JSON.parse(input);
  console.log(String(verifyWebhookSignature(rawBody, signature, jwks)));
});
