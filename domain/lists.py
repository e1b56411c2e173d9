"""Black- and whitelists: entries kept as the operator wrote them, matched in folded form
(phones by digits, addresses as region-path prefixes, part by part).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from domain.values import PRINTABLE, Entry, Id, fold_path, fold_phone

ListKind = Literal["user", "device", "phone", "address", "discount"]
LIST_KINDS: tuple[ListKind, ...] = ("user", "device", "phone", "address", "discount")
ListName = Literal["blacklist", "whitelist"]


AddressPath = Annotated[str, msgspec.Meta(min_length=1, max_length=512, pattern=PRINTABLE)]


class ListEntries(Entry):
    user: list[Id] = msgspec.field(default_factory=list)
    device: list[Id] = msgspec.field(default_factory=list)
    phone: list[Id] = msgspec.field(default_factory=list)
    address: list[AddressPath] = msgspec.field(default_factory=list)
    discount: list[Id] = msgspec.field(default_factory=list)


LIST_VALUE: dict[str, Any] = {"user": Id, "device": Id, "phone": Id, "address": AddressPath, "discount": Id}


class ListsDoc(Entry):
    blacklist: ListEntries = msgspec.field(default_factory=ListEntries)
    whitelist: ListEntries = msgspec.field(default_factory=ListEntries)


def normalize_list_value(kind: ListKind, value: str) -> str:
    """The form a list entry is matched in: phones by digits, addresses by folded path."""
    if kind == "phone":
        return fold_phone(value)
    if kind == "address":
        return fold_path(value)
    return value


@dataclass(slots=True)
class ListSet:
    """One list (black or white): per kind, normalized value -> the value as the operator wrote it."""

    entries: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in LIST_KINDS})

    def add(self, kind: ListKind, value: str) -> None:
        self.entries[kind][normalize_list_value(kind, value)] = value

    def remove(self, kind: ListKind, value: str) -> bool:
        return self.entries[kind].pop(normalize_list_value(kind, value), None) is not None

    def has(self, kind: str, normalized: str) -> bool:
        return normalized in self.entries[kind]

    def has_prefix(self, kind: str, prefixes: tuple[str, ...]) -> str | None:
        """The first listed region path that is a prefix of the address (given as its prefixes)."""
        listed = self.entries[kind]
        for p in prefixes:
            if p in listed:
                return listed[p]
        return None

    def to_doc(self) -> ListEntries:
        return ListEntries(**{k: sorted(v.values()) for k, v in self.entries.items()})

    @classmethod
    def from_doc(cls, doc: ListEntries) -> ListSet:
        out = cls()
        for kind in LIST_KINDS:
            for value in getattr(doc, kind):
                out.add(kind, value)
        return out
