"""Webhooks: the job ``callback`` and fleet-wide subscriptions, delivered by ``funasr-fleet notify``.

- :mod:`.policy`: which URLs and addresses a webhook may go to (pure);
- :mod:`.sender`: one signed POST (Standard Webhooks) to a checked, resolved address;
- :mod:`.relay`: the relay's queues, retries with backoff, and its dead-letter queue.
"""
