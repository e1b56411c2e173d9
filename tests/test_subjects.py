"""Who an order is for (rules/subjects.py): the region of a receiver's address is folded once per
region and remembered, within bounds that buyers' input cannot push."""

from __future__ import annotations

import pytest

from domain.schema import Address
from rules import subjects
from rules.subjects import region_parts


@pytest.fixture(autouse=True)
def no_regions_yet() -> None:
    subjects._regions.clear()


def test_a_remembered_region_folds_as_a_fresh_one() -> None:
    address = Address(province="浙江省", city="ＨＡＮＧ zhou", district="西湖 区", town="灵隐/街道")
    expected = ("浙江省", "hangzhou", "西湖区", "灵隐街道")
    assert region_parts(address) == expected
    assert len(subjects._regions) == 1
    assert region_parts(address) == expected  # from memory now
    assert subjects._region(address)[1] == (
        "浙江省", "浙江省/hangzhou", "浙江省/hangzhou/西湖区", "浙江省/hangzhou/西湖区/灵隐街道"
    )  # fmt: skip


def test_a_long_region_is_folded_every_time_and_never_kept() -> None:
    town = "ﷺ" * 10  # NFKC makes each of these 18 characters, 15 once their spaces are folded away
    assert len(region_parts(Address(province="Zhejiang", town=town))[-1]) == 150
    long_raw = Address(province="P" * 40, city="C" * 40)
    assert region_parts(long_raw) == ("p" * 40, "c" * 40)
    assert subjects._regions == {}


def test_no_more_regions_are_kept_than_the_bound_the_oldest_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subjects, "REGIONS_CACHED", 3)
    for n in range(5):
        region_parts(Address(province="Zhejiang", town=f"T{n}"))
    assert [levels[3] for levels in subjects._regions] == ["T2", "T3", "T4"]
