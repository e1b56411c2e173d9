"""Single node: the coordinator that owns the whole state in one process's memory.

`coordinator.Coordinator` evaluates an order with `rules`, appends its journal record and applies
the footprint to the `actors`, all in one step that never awaits: the event loop is the only
writer, so no lock guards any state. `snapshots` restores it and writes it out.
"""
