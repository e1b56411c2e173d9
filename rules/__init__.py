"""The one rule set of both modes, read over an `actors.ledger.Ledger`.

The single node passes its own ledger; cluster mode passes a ledger built from what one round of
reads brought back from Redis. Either way the same code decides.

- `subjects`: who an order is for, folded, and the black- and whitelists over them.
- `checks`: every check of SPEC section 3, read-only; an order's footprint.
- `decide`: allow / degrade / deny from the checks, the answer, and the order it holds.
- `changes`: admin changes as journal records, and applying them.
"""
