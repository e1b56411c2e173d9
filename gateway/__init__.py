"""flashguard: an order anti-abuse gateway for flash sales.

Packages, each importing only those below it:

- `gateway` (this one): HTTP, the command line and operations.
- `snapshots`: the single node's journal, snapshots and restore.
- `cluster`: cluster mode's state in Redis (connection, keys, partition, coordinator, the
  configuration store, the Functions library `flashguard.lua`).
- `node`: the single node's coordinator.
- `rules`: the one rule set of both modes (checks, subjects, decide, changes).
- `actors`: the ledger of subject, activity and SKU actors, windows, orders (with the ids of
  retired ones, and the archive that settled orders restore into), the expiry heap.
- `domain`: types, configuration, schema, values, lists, messages, errors, clock.

This package, in the order a request meets it:

- `cli`: `flashguard serve` / `check-config` / `replay`; builds the coordinator of the mode asked
  for and the app; `workers` forks `--workers N` cluster-mode processes onto one socket.
- `app`: the aiohttp application; one middleware (`guard`: errors, `RedisDown` as 503, load
  shedding as 429, admin auth and, on the single node, the disk guard as 503); one cleanup context that lets
  the service restore or connect, starts the background tasks, yields, and lets it stop.
- `routes` (checkout), `admin` (operators), `metrics` + `stats`, `console`, `openapi`: decode a
  body, await one call of the service, queue the decision's log line and figures (`decisions`
  counts and encodes them once per event-loop tick), answer.
- `codec`: JSON and MessagePack bodies, validated into `domain.schema`'s typed requests.
- `service`: the one interface those call, over either mode (`NodeService`, `ClusterService`);
  `batch` runs the single node's state changes of one loop turn back to back under one commit.
- `decisions`: the decision log; `replay`: a rule change tried on logged traffic.
- `keys`: the app's typed keys.

A check on the single node: HTTP -> codec -> service -> `batch` (the loop turn's checks, confirms,
cancels and claims, in the order they came) -> `node.coordinator` (the `rules` read the ledger and
decide; the journal record is appended; the footprint is applied to the `actors`) -> the batch
awaits one journal commit for all of them -> answer. The coordinator's step never awaits, so the
single event loop is the only writer and no lock guards any state. (The journal's writer thread
shares only its buffer of encoded records, under a lock held for an append.)

A check in cluster mode: HTTP -> codec -> service -> `cluster.coordinator`: one round of reads
(every actor the order touches, each in its own slot) and the order id's claim; the same `rules`
decide over a ledger built from what was read; one round reserves in every slot, guarded by what
the decision relied on (a refused guard gives everything back and decides again); one round
holds the reservations and commits the order record -> answer. A gateway keeps no state, so any
number of them serve one Redis.
"""
