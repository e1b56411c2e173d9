"""Reading a configuration document (SPEC sections 2 and 6): TOML or JSON, validated entry by
entry into a live `Config`.

Every problem is collected with its location (`skus[3] (sku_id=S9).limits.user: ...`): every bad
field of every entry, the checks across fields, duplicate ids and names of entries that are not
configured, so that one `check-config` run lists them all.
"""

from __future__ import annotations

import json
import reprlib
import tomllib
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import msgspec

from domain.config import SECTIONS, SINGLES, Activity, Config, Coupon, Rule, Scope, Settings, Sku, Spu
from domain.lists import ListsDoc, ListSet
from domain.values import Entry

E = TypeVar("E", bound=Entry)


class ConfigError(ValueError):
    """Every problem found in a document, each with its location, and the warnings found with them
    (which alone would not refuse it)."""

    def __init__(self, errors: list[str], warnings: list[str] | None = None) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors
        self.warnings = warnings or []


def _where(err: msgspec.ValidationError) -> tuple[str, str]:
    """Split msgspec's 'message - at `$.a.b`' into ('.a.b', 'message')."""
    text = str(err)
    msg, sep, at = text.rpartition(" - at `$")
    return (at.rstrip("`"), msg) if sep else ("", text)


def convert_entry(raw: Any, kind: type[E], where: str) -> E:
    """One entry, validated; raises ConfigError naming `where` and each of its problems."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as e:
        path, msg = _where(e)
        raise ConfigError(_field_errors(raw, kind, where) or [f"{where}{path}: {msg}"]) from None


def _entry_in(annotation: Any) -> type[Entry] | None:
    """The entry type a field holds (`PriceFuse | None` -> PriceFuse), if it holds one."""
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, Entry):
            return t
    return None


def _choices(annotation: Any) -> tuple[str, ...]:
    """The values an enumerated field allows (`Literal["allow", "deny"]`, `Subject`), if it is one:
    msgspec's 'Invalid enum value' does not say them."""
    for t in (annotation, *get_args(annotation)):
        if get_origin(t) is Literal:
            return get_args(t)
        if isinstance(t, type) and issubclass(t, Enum):
            return tuple(m.value for m in t)
    return ()


def _field_errors(raw: Any, kind: type[Entry], where: str) -> list[str]:
    """Every bad field of an entry, each checked on its own (msgspec stops at an entry's first),
    then the checks across fields (`__post_init__`) over the valid ones, so that one `check-config`
    run names them all. (Those checks need the entry's required fields: they wait for a bad one.)
    An entry that is not a table is left to the caller's error."""
    if not isinstance(raw, dict):
        return []
    fields = {f.encode_name: f for f in msgspec.structs.fields(kind)}
    errors = [f"{where}: Object missing required field `{n}`" for n, f in fields.items() if f.required and n not in raw]
    valid: dict[str, Any] = {}
    for name, value in raw.items():
        f = fields.get(name)
        if f is None:
            errors.append(f"{where}: Object contains unknown field `{name}`")
            continue
        inner = _entry_in(f.type)
        if inner is not None and isinstance(value, dict):
            nested = _field_errors(value, inner, f"{where}.{name}")
            errors.extend(nested)
            if not nested:
                valid[name] = value
            continue
        try:
            msgspec.convert(value, f.type)
            if (parse := kind.PARSED.get(name)) is not None:
                parse(value)
        except msgspec.ValidationError as e:
            path, msg = _where(e)
            choices = _choices(f.type)
            errors.append(
                f"{where}.{name}: {reprlib.repr(value)} is not one of {', '.join(choices)}" if choices else f"{where}.{name}{path}: {msg}"
            )
            continue
        except ValueError as e:
            errors.append(f"{where}.{name}: {e}")
            continue
        valid[name] = value
    if all(n in valid for n, f in fields.items() if f.required):
        try:
            msgspec.convert(valid, kind)
        except msgspec.ValidationError as e:
            path, msg = _where(e)
            errors.append(f"{where}{path}: {msg}")
    return errors


def _raw_id(section: str, raw: Any) -> str | None:
    """An entry's id as written, if it is a string, so that a bad entry is still named and its
    duplicate found (another value could be anything, such as a deeply nested list)."""
    ident = raw.get(SECTIONS[section][1]) if isinstance(raw, dict) else None
    return ident if isinstance(ident, str) else None


def entry_label(section: str, index: int, raw: Any) -> str:
    ident = _raw_id(section, raw)
    if ident is None:
        return f"{section}[{index}]"
    shown = ident if ident.isprintable() else repr(ident)  # no raw control characters in a log
    return f"{section}[{index}] ({SECTIONS[section][1]}={shown})"


def build_config(raw: Any) -> Config:
    """A validated live Config from a parsed document, or ConfigError listing every problem of its
    entries. References to other entries are not checked: this also reads stored state (snapshots,
    the journal), a configuration that was in force, which entry-by-entry admin changes may have
    left naming a deleted entry, and a restart must restore it all the same. A document from an
    operator is read by `read_config`."""
    if not isinstance(raw, dict):
        raise ConfigError(["the configuration must be a table/object at the top level"])
    errors: list[str] = []
    cfg = Config()
    for section in raw:
        if section not in SECTIONS and section not in SINGLES:
            errors.append(f"{section}: unknown section (expected one of {', '.join([*SINGLES, *SECTIONS])})")
    for name, kind in SINGLES.items():
        try:
            value = convert_entry(raw.get(name, {}), kind, name)
        except ConfigError as e:
            errors.extend(e.errors)
            continue
        if isinstance(value, ListsDoc):
            cfg.blacklist, cfg.whitelist = ListSet.from_doc(value.blacklist), ListSet.from_doc(value.whitelist)
        else:
            setattr(cfg, name, value)
    for name, (kind, id_field) in SECTIONS.items():
        entries = raw.get(name, [])
        if not isinstance(entries, list):
            errors.append(f"{name}: expected an array of tables/objects")
            continue
        target = cfg.section(name)
        seen: set[str] = set()
        for i, item in enumerate(entries):
            where = entry_label(name, i, item)
            try:
                entry = convert_entry(item, kind, where)
            except ConfigError as e:
                errors.extend(e.errors)
            else:
                target[getattr(entry, id_field)] = entry
            ident = _raw_id(name, item)  # as written: a bad entry's duplicate is found in the same run
            if ident in seen:
                errors.append(f"{where}: duplicate {id_field} {ident!r}")
            if ident is not None:
                seen.add(ident)
    if errors:
        raise ConfigError(errors)
    cfg.changed()
    return cfg


@cache
def _types(kind: type[Entry]) -> dict[str, Any]:
    return {f.encode_name: f.type for f in msgspec.structs.fields(kind)}


def _valid_field(raw: Any, kind: type[Entry], name: str) -> Any:
    """An entry's field if it is present and valid on its own, else None: a reference is checked
    however bad the rest of its entry is."""
    if not isinstance(raw, dict) or name not in raw:
        return None
    try:
        return msgspec.convert(raw[name], _types(kind)[name])
    except msgspec.ValidationError:
        return None


def references(raw: Any) -> tuple[list[str], list[str]]:
    """(errors, warnings): the names in a document of entries it does not configure. Each is judged
    as `settings.unknown` judges an order that names it: with "deny" an error (every such order is
    refused, so the entry naming it cannot work), with "allow" a warning (such orders pass, and the
    entry still applies to them). A rule scope or an SPU that no SKU carries is an error either way:
    an unknown SKU has no category, brand or SPU, so nothing ever counts there. A SKU's spu_id
    without a [[spus]] entry is fine: SPU limits are optional."""
    if not isinstance(raw, dict):
        return [], []

    def entries(section: str) -> list[tuple[str, Any]]:
        items = raw.get(section)
        return [(entry_label(section, i, item), item) for i, item in enumerate(items)] if isinstance(items, list) else []

    skus = [item for _, item in entries("skus")]
    carried = {name: {_valid_field(item, Sku, name) for item in skus} for name in ("sku_id", "spu_id", "category", "brand")}
    activities = {_valid_field(item, Activity, "activity_id") for _, item in entries("activities")}
    deny = _valid_field(raw.get("settings"), Settings, "unknown") == "deny"
    errors: list[str] = []
    warnings: list[str] = []

    def unconfigured(where: str, what: str, ident: str, section: str) -> None:
        missing = f"{where}: {what} {ident!r} is not in [[{section}]]"
        if deny:
            errors.append(f'{missing}, and settings.unknown = "deny" refuses every order that names it')
        else:
            warnings.append(f'{missing} (settings.unknown = "allow" lets the orders that name it pass)')

    for where, item in entries("spus"):
        spu_id = _valid_field(item, Spu, "spu_id")
        if spu_id is not None and spu_id not in carried["spu_id"]:
            errors.append(f"{where}: no SKU has spu_id {spu_id!r}, so its limits never count")
    for where, item in entries("activities"):
        for sku_id in _valid_field(item, Activity, "sku_limits") or {}:
            if sku_id not in carried["sku_id"]:
                unconfigured(f"{where}.sku_limits", "SKU", sku_id, "skus")
    for where, item in entries("coupons"):
        activity_id = _valid_field(item, Coupon, "activity_id")
        if activity_id is not None and activity_id not in activities:
            unconfigured(f"{where}.activity_id", "activity", activity_id, "activities")
    for where, item in entries("rules"):
        scope: Scope | None = _valid_field(item, Rule, "scope")
        if scope is None or scope.named is None or scope.named[1] in carried[scope.named[0]]:
            continue
        name, value = scope.named
        if name == "sku_id":
            unconfigured(f"{where}.scope.sku_id", "SKU", value, "skus")
        else:
            errors.append(f"{where}.scope.{name}: no SKU has {name} {value!r}, so the rule never counts")
    return errors, warnings


def read_config(raw: Any) -> tuple[Config, list[str]]:
    """A live Config from an operator's document (a file, `PUT /v1/admin/config`) and its warnings,
    or ConfigError listing every problem of its entries and of its references at once."""
    ref_errors, warnings = references(raw)
    try:
        cfg = build_config(raw)
    except ConfigError as e:
        raise ConfigError(e.errors + ref_errors, warnings) from None
    if ref_errors:
        raise ConfigError(ref_errors, warnings)
    return cfg, warnings


def parse_document(text: str, suffix: str) -> Any:
    """TOML for `.toml` files, JSON otherwise; a syntax error becomes a ConfigError with its line."""
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        return json.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax: {e}"]) from None
    except json.JSONDecodeError as e:
        raise ConfigError([f"JSON syntax: {e}"]) from None


def read_document(path: Path) -> Any:
    """A file's parsed document. Errors do not repeat the path: every caller prefixes it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([e.strerror or str(e)]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    return parse_document(text, path.suffix.lower())


def load_config(path: Path) -> Config:
    """A configuration file, validated as `read_config` does (warnings left to `check-config`)."""
    return read_config(read_document(path))[0]
