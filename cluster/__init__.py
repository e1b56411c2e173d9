"""Cluster mode's state: counters, windows, holds and orders in Redis or a Redis Cluster.

- `keys`: where each actor's state lives (one hash tag, so one slot, per actor).
- `flashguard.lua`: the Functions library, every change of state, one slot per call.
- `connection`: connecting (one node or a cluster), loading the library, batched calls.
- `partition`: an order cut along its slots: what to read, the ledger view the shared rules read,
  and the guarded ops per slot.
- `coordinator`: check, claim, confirm, cancel and the sweeper, over Redis.
- `config_store`: the configuration document in Redis, and its polling.
"""
