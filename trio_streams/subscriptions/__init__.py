"""Subscriptions (PROTOCOL.md 6–7): the task that decides wakes, leases and deliveries."""
