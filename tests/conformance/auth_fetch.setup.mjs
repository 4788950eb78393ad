// With CONFORMANCE_AUTH_TOKEN set (scripts/run_conformance.py --auth), every
// fetch the suite and its client make carries `Authorization: Bearer <token>`
// unless it already has an Authorization header: the suite runs unchanged
// against a server with access control on. Without the variable: no effect.
const token = process.env.CONFORMANCE_AUTH_TOKEN

if (token) {
  const originalFetch = globalThis.fetch
  globalThis.fetch = (input, init = {}) => {
    const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined))
    if (!headers.has("authorization")) headers.set("authorization", `Bearer ${token}`)
    return originalFetch(input, { ...init, headers })
  }
}
