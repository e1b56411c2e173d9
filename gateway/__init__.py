"""flashguard: an order anti-abuse gateway for flash sales.

Components, in the order a request meets them:

- `cli`: `flashguard serve` / `check-config`; builds the clock, the coordinator and the app.
- `app`: the aiohttp application; middlewares for errors, load shedding (429) and admin auth;
  one cleanup context that starts the expiry sweeper and stops it.
- `routes` (checkout) and `admin` (operators): decode a body, call one coordinator method, await
  the journal's commit, answer.
- `codec` / `schema`: JSON and MessagePack bodies, validated into typed requests.
- `coordinator`: the check coordinator. Evaluates an order (`checks`), decides allow / degrade /
  deny, applies the footprint to the actors and appends a journal record, all without awaiting.
- `checks`: every check of SPEC section 3, read-only over the actors.
- `config` / `changes`: the configuration document, its validation, and admin changes as records.
- `messages`: what the buyer is told. `clock`: injected time. `types`: the shared vocabulary.
- `actors/` (package beside this one): the ledger of subject, activity and SKU actors, orders and
  the expiry heap.
- `snapshots/`: durability (snapshots, journal, restore).

A check flows one way: HTTP -> codec -> coordinator -> checks (read) -> ledger (write) ->
journal -> response. Because the coordinator's step never awaits, the single event loop is the
only writer and no lock exists anywhere.
"""
