"""flashguard: an order anti-abuse gateway for flash sales.

Components, in the order a request meets them:

- `cli`: `flashguard serve` / `check-config` / `replay`; builds the clock, coordinator and app.
- `app`: the aiohttp application; middlewares for errors, load shedding (429), admin auth and the
  disk guard (503); one cleanup context that restores the state, starts the background tasks
  (expiry sweeper, snapshots), yields, and writes the final snapshot.
- `routes` (checkout), `admin` (operators), `metrics` + `stats`, `console`, `openapi`: decode a
  body, call one coordinator method, await the journal's commit, answer.
- `codec` / `schema`: JSON and MessagePack bodies, validated into typed requests.
- `coordinator`: the check coordinator. Evaluates an order (`checks`, over `subjects`), decides
  allow / degrade / deny, appends the journal record and applies the footprint to the actors,
  all without awaiting.
- `checks`: every check of SPEC section 3, read-only over the actors. `subjects`: who an order is
  for, folded, and the black- and whitelists over them. `messages`: what the buyer is told.
- `config` (the entries and the live configuration), `document` (reading and validating a
  document, every error with its location), `values` (bounds, ids, durations, ratios, folding),
  `lists` (black- and whitelists), `changes` (admin changes as records).
- `decisions`: the decision log; `replay`: a rule change tried on logged traffic.
- `clock`: injected time. `types`: the shared vocabulary. `keys`: the app's typed keys.
- `actors/` (package beside this one): the ledger of subject, activity and SKU actors, orders and
  their footprints, sliding windows and the expiry heap. Restored subjects and settled orders stay
  encoded until first touched.
- `snapshots/`: the journal (its group-commit writer, `journal`, and its files and their reading
  back, `journal_files`), snapshot files, the state document, the store (restore, snapshots) and
  `compact`, the process that writes snapshots.

A check flows one way: HTTP -> codec -> coordinator -> checks (read) -> journal record ->
ledger (write) -> response after the journal's commit. Because the coordinator's step never
awaits, the single event loop is the only writer and no lock guards any state. (The journal's
writer thread shares only its buffer of encoded records, under a lock held for an append.)
"""
