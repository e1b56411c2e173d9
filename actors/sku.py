"""A SKU actor: the units of one SKU held and confirmed across all buyers (for operators and audit)."""

from __future__ import annotations


class SkuActor:
    __slots__ = ("sku_id", "held", "confirmed")

    def __init__(self, sku_id: str) -> None:
        self.sku_id = sku_id
        self.held = 0
        self.confirmed = 0
