"""Who an order is for: its subjects as actor keys, and the black- and whitelists over them.

Receiver names and addresses are folded (full-width forms, case, white space) and phones reduced
to digits, so that a scalper cannot dodge a limit by writing 'ＺＨＡＮＧ san' or '+86 139-0000-0000'.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.ledger import Ledger
from actors.subject import SubjectActor
from domain.config import Config
from domain.values import fold, fold_phone
from domain.schema import Address, CheckRequest
from domain.types import REGION_DEPTH, SEP, Code, Notice, Reason, Subject, SubjectKey, reason

_USER = "user" + SEP
_DEVICE = "device" + SEP
_IP = "ip" + SEP
_NAME = "receiver_name" + SEP
_PHONE = "receiver_phone" + SEP
_ADDRESS = "receiver_address" + SEP
_REGIONS = tuple((level, level.value + SEP, depth) for level, depth in REGION_DEPTH.items())
REGIONS_CACHED = 1 << 15
REGION_CACHED_LENGTH = 64


def user_key(user_id: str) -> SubjectKey:
    return _USER + user_id


@dataclass(slots=True)
class Subjects:
    """Each present subject's actor key, and the address as its region prefixes."""

    keys: dict[Subject, SubjectKey]
    user_id: str
    device: str | None = None
    phone: str | None = None
    prefixes: tuple[str, ...] = ()  # folded region paths, shortest first


def region_parts(address: Address) -> tuple[str, ...]:
    """province/city/district/town folded (a '/' inside a part dropped: it separates the parts),
    trailing missing levels dropped. A missing level in between is an empty part, so a town
    directly under a city keeps its place."""
    return _region(address)[0]


Region = tuple[tuple[str, ...], tuple[str, ...]]  # the folded parts, and their prefixes
_regions: dict[tuple[str | None, ...], Region] = {}


def _region(address: Address) -> Region:
    """The parts and their prefixes ('zhejiang', 'zhejiang/hangzhou', ...), folded once per region:
    a sale's millions of addresses name a few thousand regions (China has about 40,000 towns),
    and folding four Chinese parts (NFKC) cost 0.9 µs a check. Kept: the last REGIONS_CACHED
    regions of at most REGION_CACHED_LENGTH characters, raw and folded, so that buyers' input
    (parts of up to 256 characters, some of which NFKC expands 18-fold) cannot fill memory."""
    levels = (address.province, address.city, address.district, address.town)
    found = _regions.get(levels)
    if found is None:
        found = _fold_region(levels)
        if sum(len(p) for p in levels if p) <= REGION_CACHED_LENGTH and sum(map(len, found[0])) <= REGION_CACHED_LENGTH:
            if len(_regions) >= REGIONS_CACHED:
                del _regions[next(iter(_regions))]  # the oldest
            _regions[levels] = found
    return found


def _fold_region(levels: tuple[str | None, ...]) -> Region:
    parts = [fold(p).replace("/", "") if p else "" for p in levels]
    while parts and not parts[-1]:
        parts.pop()
    prefixes: list[str] = []
    path = ""
    for part in parts:
        path = path + "/" + part if prefixes else part
        prefixes.append(path)
    return tuple(parts), tuple(prefixes)


def order_subjects(req: CheckRequest) -> Subjects:
    keys: dict[Subject, SubjectKey] = {Subject.USER: _USER + req.user_id}
    out = Subjects(keys, req.user_id, device=req.device_id)
    if req.device_id is not None:
        keys[Subject.DEVICE] = _DEVICE + req.device_id
    if req.ip is not None:
        keys[Subject.IP] = _IP + req.ip
    receiver = req.receiver
    if receiver is None:
        return out
    if receiver.name and (name := fold(receiver.name)):
        keys[Subject.RECEIVER_NAME] = _NAME + name
    if receiver.phone and (phone := fold_phone(receiver.phone)):
        keys[Subject.RECEIVER_PHONE] = _PHONE + phone
        out.phone = phone
    address = receiver.address
    if address is not None:
        parts, prefixes = _region(address)
        out.prefixes = prefixes
        for level, prefix, depth in _REGIONS:
            if depth <= len(parts) and parts[depth - 1]:
                keys[level] = prefix + prefixes[depth - 1]
        detail = fold(address.detail or "")
        if parts or detail:
            keys[Subject.RECEIVER_ADDRESS] = _ADDRESS + (prefixes[-1] if prefixes else "") + SEP + detail
    return out


def auto_blacklisted(cfg: Config, user: SubjectActor) -> bool:
    rule = cfg.auto_blacklist
    if rule.discount_cost is not None and user.discount_total >= rule.discount_cost:
        return True
    return rule.negative_margin and user.margin_total < 0


def blacklist_reasons(cfg: Config, ledger: Ledger, subj: Subjects) -> list[Reason]:
    """BLACKLISTED for the user (listed or auto), device, phone and address (SPEC section 3)."""
    black, white = cfg.blacklist, cfg.whitelist
    out: list[Reason] = []
    user = ledger.find(subj.keys[Subject.USER])
    if black.has("user", subj.user_id):
        out.append(reason(Code.BLACKLISTED, subject="user", value=subj.user_id))
    elif user is not None and auto_blacklisted(cfg, user):
        out.append(reason(Code.BLACKLISTED, subject="user", value=subj.user_id, auto=True))
    if subj.device is not None and black.has("device", subj.device) and not white.has("device", subj.device):
        out.append(reason(Code.BLACKLISTED, subject="device", value=subj.device))
    if subj.phone is not None and black.has("phone", subj.phone) and not white.has("phone", subj.phone):
        out.append(reason(Code.BLACKLISTED, subject="phone", value=subj.phone))
    if subj.prefixes:
        region = black.has_prefix("address", subj.prefixes)
        if region is not None and white.has_prefix("address", subj.prefixes) is None:
            out.append(reason(Code.BLACKLISTED, subject="address", value=region))
    return out


def whitelisted(cfg: Config, user_id: str, reasons: list[Reason]) -> tuple[list[Reason], list[Notice]] | None:
    """For a whitelisted user: the single reason WHITELISTED, and what would have refused them as
    warnings. None for everyone else."""
    if not cfg.whitelist.has("user", user_id):
        return None
    notices = [Notice(code=r.code.value, message="not applied: the user is whitelisted") for r in reasons]
    return [reason(Code.WHITELISTED, subject="user", value=user_id)], notices
