"""What the buyer is told (SPEC section 3): a limit only where it may be stated, else a vague line.

Stating a limit tells a scalper exactly how far to go, so the explicit message is used only when
every reason of the refusal may be stated; anything else gets the vague "too many orders" line.
"""

from __future__ import annotations

from domain.config import Config
from domain.types import Code, Decision, Reason

DEFAULTS = {
    "zh": {
        "busy": "当前下单人数太多，请稍后再试",
        "limit": "当前商品限购数量为{limit}，您已超过限购数量",
        "degrade": "当前活动已结束，是否去除优惠继续下单",
    },
    "en": {
        "busy": "Too many orders right now, please try again later",
        "limit": "This item is limited to {limit} per customer",
        "degrade": "This promotion has ended. Continue without the discount?",
    },
}

_ACTIVITY_LIMITS = (Code.ACTIVITY_SKU_LIMIT, Code.ACTIVITY_USER_LIMIT)
_PRODUCT_LIMITS = (Code.SKU_LIMIT, Code.SPU_LIMIT)


def _text(cfg: Config, name: str) -> str:
    override: str | None = getattr(cfg.settings.messages, name)
    return override if override is not None else DEFAULTS[cfg.settings.locale][name]


def may_state(cfg: Config, reason: Reason) -> bool:
    if reason.code in _PRODUCT_LIMITS:
        return True
    if reason.code in _ACTIVITY_LIMITS and reason.activity_id is not None:
        activity = cfg.activities.get(reason.activity_id)
        return activity is not None and activity.disclose_limits
    return False


def buyer_message(cfg: Config, decision: Decision, reasons: list[Reason]) -> str | None:
    if decision is Decision.ALLOW:
        return None
    if decision is Decision.DEGRADE:
        return _text(cfg, "degrade")
    if reasons and all(may_state(cfg, r) for r in reasons):
        return _text(cfg, "limit").replace("{limit}", str(reasons[0].limit))
    return _text(cfg, "busy")
