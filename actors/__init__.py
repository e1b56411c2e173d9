"""Actors: the state flashguard counts, one plain object per SKU, activity and subject.

`ledger.Ledger` owns them all, keyed by id, and is the only code that changes them; `expiry` is
the one heap of deadlines (holds, window sweeps); `orders` holds orders and their footprints.
"""
