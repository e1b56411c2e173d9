"""Durability: msgpack snapshots, the journal, and restore (SPEC section 7)."""
