"""Reading a configuration document (SPEC sections 2 and 6): TOML or JSON, validated entry by
entry into a live `Config`.

Every problem is collected with its location (`skus[3] (sku_id=S9).limits.user: ...`), every bad
entry and every bad field of an entry, so that one `check-config` run lists them all.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, TypeVar, get_args

import msgspec

from gateway.config import SECTIONS, SINGLES, Config
from gateway.lists import ListsDoc, ListSet
from gateway.values import Entry

E = TypeVar("E", bound=Entry)


class ConfigError(ValueError):
    """Every problem found in a document, each with its location."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _where(err: msgspec.ValidationError) -> tuple[str, str]:
    """Split msgspec's 'message - at `$.a.b`' into ('.a.b', 'message')."""
    text = str(err)
    msg, sep, at = text.rpartition(" - at `$")
    return (at.rstrip("`"), msg) if sep else ("", text)


def convert_entry(raw: Any, kind: type[E], where: str) -> E:
    """One entry, validated; raises ConfigError naming `where` and each bad field."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as e:
        path, msg = _where(e)
        raise ConfigError(_field_errors(raw, kind, where) or [f"{where}{path}: {msg}"]) from None


def _struct_in(annotation: Any) -> type[msgspec.Struct] | None:
    """The entry type a field holds (`PriceFuse | None` -> PriceFuse), if it holds one."""
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, msgspec.Struct):
            return t
    return None


def _field_errors(raw: Any, kind: type[msgspec.Struct], where: str) -> list[str]:
    """Every bad field of an entry, each checked on its own (msgspec stops at an entry's first), so
    that one `check-config` run names them all. Checks across fields (`__post_init__`) run once
    the fields are valid; an entry that is not a table is left to the caller's error."""
    if not isinstance(raw, dict):
        return []
    fields = {f.encode_name: f for f in msgspec.structs.fields(kind)}
    errors = [f"{where}: Object missing required field `{n}`" for n, f in fields.items() if f.required and n not in raw]
    for name, value in raw.items():
        f = fields.get(name)
        if f is None:
            errors.append(f"{where}: Object contains unknown field `{name}`")
            continue
        inner = _struct_in(f.type)
        if inner is not None and (nested := _field_errors(value, inner, f"{where}.{name}")):
            errors.extend(nested)
            continue
        try:
            msgspec.convert(value, f.type)
            if (parse := getattr(kind, "PARSED", {}).get(name)) is not None:
                parse(value)
        except msgspec.ValidationError as e:
            path, msg = _where(e)
            errors.append(f"{where}.{name}{path}: {msg}")
        except ValueError as e:
            errors.append(f"{where}.{name}: {e}")
    return errors


def entry_label(section: str, index: int, raw: Any) -> str:
    id_field = SECTIONS[section][1]
    ident = raw.get(id_field) if isinstance(raw, dict) else None
    if not isinstance(ident, str):
        return f"{section}[{index}]"
    return f"{section}[{index}] ({id_field}={ident if ident.isprintable() else repr(ident)})"  # no raw control characters in a log


def build_config(raw: Any) -> Config:
    """A validated live Config from a parsed document, or ConfigError listing every problem."""
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
        for i, item in enumerate(entries):
            where = entry_label(name, i, item)
            try:
                entry = convert_entry(item, kind, where)
            except ConfigError as e:
                errors.extend(e.errors)
                continue
            ident = getattr(entry, id_field)
            if ident in target:
                errors.append(f"{where}: duplicate {id_field} {ident!r}")
            target[ident] = entry
    if errors:
        raise ConfigError(errors)
    cfg.changed()
    return cfg


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


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: {e.strerror}"]) from None
    return build_config(parse_document(text, path.suffix.lower()))


def demo_config() -> Config:
    """The embedded demo configuration that `flashguard serve` runs on when given no --config."""
    return load_config(Path(__file__).with_name("demo.toml"))
