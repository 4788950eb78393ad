"""Webhook I/O and crypto for subscriptions (PROTOCOL.md 6.5, 7.1, 12.8–12.10).

Owns: the Ed25519 signing keys and their JWKS (keys.py), the wake-scoped
callback tokens (tokens.py), the SSRF rules for webhook URLs (urls.py), one
bounded, signed delivery (deliver.py) and the retry delays (backoff.py).
Never: decides when to deliver or what a result means for a subscription
(the subscriptions core does), or touches the write-ahead log.
"""
