"""An activity actor: the budget an activity has spent (confirmed) and holds (unconfirmed)."""

from __future__ import annotations

import msgspec


class ActivityActor(msgspec.Struct, gc=False, array_like=True):
    held: int = 0
    spent: int = 0

    @property
    def used(self) -> int:
        return self.held + self.spent
