"""A SKU actor: the units of one SKU held and confirmed across all buyers (for operators and audit)."""

from __future__ import annotations

import msgspec


class SkuActor(msgspec.Struct, gc=False, array_like=True):
    held: int = 0
    confirmed: int = 0
