"""An activity actor: the budget an activity has spent (confirmed) and holds (unconfirmed)."""

from __future__ import annotations


class ActivityActor:
    __slots__ = ("activity_id", "held", "spent")

    def __init__(self, activity_id: str) -> None:
        self.activity_id = activity_id
        self.held = 0
        self.spent = 0

    @property
    def used(self) -> int:
        return self.held + self.spent
