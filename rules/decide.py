"""The decision of SPEC section 3, over whatever holds the counters: allow, degrade or deny, the
answer to send, and the footprint to hold.

Both ways of running decide here: the single node over its live ledger, cluster mode over a ledger
of just the order's actors as Redis held them a moment ago (then it holds the footprint only if
every guard still passes in Redis). Nothing here changes a count.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from actors.ledger import Ledger
from actors.orders import Footprint, Order
from rules.checks import Evaluation, evaluate, unknown_entry
from domain.config import Config
from domain.messages import buyer_message
from domain.schema import CheckRequest, CheckResponse, ClaimRequest, Hold, OrderView
from rules.subjects import Subjects, blacklist_reasons, user_key, whitelisted
from domain.types import DEGRADABLE, Code, Decision, Notice, OrderState, Reason, Subject, counter_key, reason
from domain.values import fold_phone


@dataclass(slots=True)
class Verdict:
    response: CheckResponse
    footprint: Footprint | None  # what the order holds (None: denied)
    whitelisted: bool

    def order(self, req: CheckRequest, digest: bytes, now: int) -> Order:
        """The order this verdict makes: held with its footprint, or denied."""
        response = self.response
        return Order(
            order_id=req.order_id,
            digest=digest,
            user_id=req.user_id,
            state=OrderState.DENIED if self.footprint is None else OrderState.HELD,
            created_at=now,
            expires_at=response.hold.expires_at if response.hold is not None else None,
            footprint=self.footprint,
            response=_response_encoder.encode(response),
            updated_at=now,
        )


def decide(req: CheckRequest, subj: Subjects, cfg: Config, ledger: Ledger, now: int) -> Verdict:
    ev = evaluate(req, subj, cfg, ledger, now, set())
    decision, final, reasons = _outcome(req, subj, cfg, ledger, ev, now)
    response = CheckResponse(
        order_id=req.order_id,
        decision=decision,
        reasons=reasons,
        shadow=final.shadow,
        warnings=final.notices,
        message=buyer_message(cfg, decision, reasons),
    )
    if decision is Decision.DENY:
        return Verdict(response, None, False)
    response.hold = Hold(now + cfg.settings.hold_ttl_seconds)
    response.payable = final.payable
    if final is not ev:  # an apportioned coupon sits on several items: list each id once
        response.stripped = list(dict.fromkeys(req.items[i].discounts[j].id for i, j in sorted(ev.strip)))
    return Verdict(response, final.footprint, final.whitelisted)


def _outcome(
    req: CheckRequest, subj: Subjects, cfg: Config, ledger: Ledger, ev: Evaluation, now: int
) -> tuple[Decision, Evaluation, list[Reason]]:
    """allow / degrade / deny, the evaluation that stands, and the reasons to report."""
    if ev.whitelisted or not ev.reasons:
        return Decision.ALLOW, ev, ev.reasons
    if req.on_refusal == "degrade" and all(r.code in DEGRADABLE for r in ev.reasons):
        again = evaluate(req, subj, cfg, ledger, now, ev.strip)
        if not again.reasons:
            return Decision.DEGRADE, again, ev.reasons
        return Decision.DENY, ev, ev.reasons + [r for r in again.reasons if r not in ev.reasons]
    return Decision.DENY, ev, ev.reasons


def claim_subjects(req: ClaimRequest) -> Subjects:
    subj = Subjects({Subject.USER: user_key(req.user_id)}, req.user_id, device=req.device_id)
    if req.phone:
        subj.phone = fold_phone(req.phone) or None
    return subj


def decide_claim(req: ClaimRequest, cfg: Config, ledger: Ledger) -> tuple[CheckResponse, bool]:
    """Coupon claim pre-check: refuse blacklisted users and claims past `per_user_limit`. Returns
    the answer and whether the user is whitelisted (then nothing guards the claim's count)."""
    subj = claim_subjects(req)
    reasons = blacklist_reasons(cfg, ledger, subj)
    notices: list[Notice] = []
    coupon = cfg.coupons.get(req.coupon_id)
    if coupon is None:
        unknown_entry(cfg, reasons, notices, Code.UNKNOWN_COUPON, coupon_id=req.coupon_id)
    elif coupon.per_user_limit is not None:
        user = ledger.find(subj.keys[Subject.USER])
        used = user.used(counter_key("coupon", req.coupon_id)) if user is not None else 0
        if used + 1 > coupon.per_user_limit:
            reasons.append(
                reason(
                    Code.COUPON_CLAIM_LIMIT,
                    coupon_id=req.coupon_id,
                    subject="user",
                    limit=coupon.per_user_limit,
                    used=used,
                    requested=1,
                )
            )
    override = whitelisted(cfg, req.user_id, reasons)
    if override is not None:
        reasons, bypassed = override
        notices.extend(bypassed)
    decision = Decision.DENY if reasons and override is None else Decision.ALLOW
    response = CheckResponse(
        order_id=None,
        decision=decision,
        reasons=reasons,
        shadow=[],
        warnings=notices,
        message=buyer_message(cfg, decision, reasons),
    )
    return response, override is not None


_response_encoder = msgspec.msgpack.Encoder()
_response_decoder = msgspec.msgpack.Decoder(CheckResponse)


def decode_response(encoded: bytes) -> CheckResponse:
    return _response_decoder.decode(encoded)


def order_view(order: Order, now: int) -> OrderView:
    """The order as a read shows it: a hold past its expiry reads as expired even before the
    sweeper (or the next change) records it, so a read never has to write."""
    response = decode_response(order.response)
    state = order.state
    if state is OrderState.HELD and order.expires_at is not None and now >= order.expires_at:
        state = OrderState.EXPIRED
    return OrderView(
        order_id=order.order_id,
        state=state,
        decision=response.decision,
        user_id=order.user_id,
        created_at=order.created_at,
        updated_at=order.updated_at,
        expires_at=order.expires_at,
        payable=response.payable,
        stripped=response.stripped,
        reasons=response.reasons,
    )
