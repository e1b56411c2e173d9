"""Admin changes as records: one small tuple per change, applied here by the API and by replay.

Records: ("config", doc) replaces the document; ("put", section, id, entry) and ("delete",
section, id) change one entry; ("settings", settings) replaces the settings; ("list", name, kind,
value, present) adds or removes a list entry. Removing a user from the blacklist also pardons an
auto-blacklisted user: their auto-blacklist totals restart from zero.
"""

from __future__ import annotations

from typing import Any, cast

from actors.ledger import Ledger
from domain.config import SECTIONS, Config, Settings
from domain.document import ConfigError, build_config, convert_entry
from domain.lists import LIST_KINDS, ListKind, ListName
from domain.types import Record, key


def validate_entry(section: str, ident: str, raw: Any) -> Any:
    """An entry from `PUT /v1/admin/{section}/{id}`: the id may be left out of the body."""
    kind, id_field = SECTIONS[section]
    if isinstance(raw, dict):
        raw = {id_field: ident, **raw}
    entry = convert_entry(raw, kind, f"{section}/{ident}")
    if getattr(entry, id_field) != ident:  # compared once valid: a raw value may be anything
        raise ConfigError([f"{section}/{ident}: {id_field} {getattr(entry, id_field)!r} does not match the path"])
    return entry


def _token_kept(settings: Settings, old: Config) -> Settings:
    """Settings without an admin token (as `GET` shows them, or a `null`) keep the one in force:
    sending back what one read must not lock every operator out."""
    if settings.admin_token is None:
        settings.admin_token = old.settings.admin_token
    return settings


def apply_change(cfg: Config, ledger: Ledger, record: Record) -> Config:
    """Apply one admin record; returns the configuration that stands after it."""
    op = record[0]
    if op == "config":
        new = build_config(record[1])
        new.settings = _token_kept(new.settings, cfg)
        return new
    if op == "put":
        _, section, ident, entry = record
        cfg.section(section)[ident] = validate_entry(section, ident, entry)
    elif op == "delete":
        _, section, ident = record
        cfg.section(section).pop(ident, None)
    elif op == "settings":
        cfg.settings = _token_kept(convert_entry(record[1], Settings, "settings"), cfg)
    elif op == "list":
        _, name, kind, value, present = record
        lists = cfg.list_set(_list_name(name))
        if present:
            lists.add(_list_kind(kind), value)
        else:
            lists.remove(_list_kind(kind), value)
            user_id = pardoned(record)
            if user_id is not None:
                ledger.pardon(key("user", user_id))
    else:
        raise ValueError(f"unknown admin record {op!r}")
    cfg.changed()
    return cfg


def pardoned(record: Record) -> str | None:
    """The user a change takes off the blacklist: their auto-blacklist totals restart from zero."""
    if record[0] == "list" and record[1] == "blacklist" and record[2] == "user" and not record[4]:
        return str(record[3])
    return None


def _list_name(name: str) -> ListName:
    if name not in ("blacklist", "whitelist"):
        raise ConfigError([f"lists: unknown list {name!r} (blacklist or whitelist)"])
    return cast(ListName, name)


def _list_kind(kind: str) -> ListKind:
    if kind not in LIST_KINDS:
        raise ConfigError([f"lists: unknown kind {kind!r} ({', '.join(LIST_KINDS)})"])
    return kind
