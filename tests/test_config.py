"""Configuration (SPEC sections 2 and 6): files, durations, exact ratios, validation errors with
their locations, `flashguard check-config`, and SKUs/activities missing from the configuration.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from domain.config import Config
from domain.document import ConfigError, build_config, load_config, read_config
from gateway.cli import demo_config
from tests.conftest import Gateway, MakeGateway, base_config, discount, item, order

SPEC_TOML = """
[settings]
hold_ttl = "15m"
risk_multiplier = "1.0"
unknown = "allow"
release_on_cancel = true
locale = "zh"

[[skus]]
sku_id = "S1"
spu_id = "P1"
category = "phone"
brand = "acme"
cost_price = 500000
original_price = 599900
price_fuse = { base = "cost", ratio = "1.0" }
limits = { user = 2, device = 2, receiver_name = 2, receiver_phone = 2, receiver_address = 2 }

[[spus]]
spu_id = "P1"
limits = { user = 3 }

[[activities]]
activity_id = "A1"
budget = 1000000
starts_at = 1764000000
user_limit = 5
sku_limits = { S1 = 1 }
disclose_limits = true

[[coupons]]
coupon_id = "C1"
activity_id = "A1"
per_user_limit = 1

[[rules]]
rule_id = "R1"
subject = "address:town"
scope = { category = "phone" }
window = "24h"
max_quantity = 20
mode = "enforce"

[lists.blacklist]
user = ["u-bad"]
device = ["d-bad"]
phone = ["13800000000"]
address = ["Zhejiang/Hangzhou/Xihu"]
[lists.whitelist]
user = ["staff-1"]
address = ["Zhejiang/Hangzhou/Xihu/Lingyin"]
discount = ["618-SUPER"]

[auto_blacklist]
discount_cost = 200000
negative_margin = true
"""


def errors_of(doc: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(doc)
    assert info.value.errors, "a ConfigError lists its errors"
    return info.value.errors


def one_error(doc: Any) -> str:
    errors = errors_of(doc)
    assert len(errors) == 1, errors
    return errors[0]


def assert_spec_example(cfg: Config) -> None:
    s1 = cfg.skus["S1"]
    assert (s1.spu_id, s1.category, s1.brand, s1.cost_price, s1.original_price) == ("P1", "phone", "acme", 500000, 599900)
    assert s1.price_fuse is not None and s1.price_fuse.base == "cost" and s1.price_fuse.ratio == "1.0"
    limits = s1.limits
    assert (limits.user, limits.device, limits.receiver_name, limits.receiver_phone, limits.receiver_address) == (2, 2, 2, 2, 2)
    assert cfg.spus["P1"].limits.user == 3
    a1 = cfg.activities["A1"]
    assert (a1.budget, a1.starts_at, a1.ends_at, a1.user_limit, a1.sku_limits, a1.disclose_limits) == (
        1000000,
        1764000000,
        None,
        5,
        {"S1": 1},
        True,
    )
    assert cfg.coupons["C1"].per_user_limit == 1
    assert cfg.coupons["C1"].activity_id == "A1"
    r1 = cfg.rules["R1"]
    assert (r1.subject.value, r1.scope.category, r1.window_seconds, r1.max_quantity, r1.mode) == (
        "address:town",
        "phone",
        86400,
        20,
        "enforce",
    )
    assert cfg.settings.hold_ttl_seconds == 900
    assert cfg.settings.multiplier == 1
    assert (cfg.settings.unknown, cfg.settings.release_on_cancel, cfg.settings.locale) == ("allow", True, "zh")
    lists = cfg.to_doc()["lists"]
    nonempty = {name: {k: v for k, v in lists[name].items() if v} for name in ("blacklist", "whitelist")}
    assert nonempty["blacklist"] == {
        "user": ["u-bad"],
        "device": ["d-bad"],
        "phone": ["13800000000"],
        "address": ["Zhejiang/Hangzhou/Xihu"],
    }
    assert nonempty["whitelist"] == {
        "user": ["staff-1"],
        "address": ["Zhejiang/Hangzhou/Xihu/Lingyin"],
        "discount": ["618-SUPER"],
    }
    assert (cfg.auto_blacklist.discount_cost, cfg.auto_blacklist.negative_margin) == (200000, True)


# -- loading files -------------------------------------------------------------------------


def test_load_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "flashguard.toml"
    path.write_text(SPEC_TOML, encoding="utf-8")
    assert_spec_example(load_config(path))


def test_load_json_file_means_the_same_as_toml(tmp_path: Path) -> None:
    import tomllib

    toml_path = tmp_path / "c.toml"
    toml_path.write_text(SPEC_TOML, encoding="utf-8")
    json_path = tmp_path / "c.json"
    json_path.write_text(json.dumps(tomllib.loads(SPEC_TOML)), encoding="utf-8")
    from_json = load_config(json_path)
    assert_spec_example(from_json)
    assert from_json.to_doc() == load_config(toml_path).to_doc()


def test_demo_config_loads() -> None:
    cfg = demo_config()
    assert cfg.skus and cfg.activities and cfg.rules
    assert "S1" in cfg.skus
    # What it shows round-trips through validation.
    assert build_config(cfg.to_doc()).to_doc() == cfg.to_doc()


def test_toml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[settings]\nhold_ttl = "15m\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "TOML" in info.value.errors[0]


def test_json_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"settings": {', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "JSON" in info.value.errors[0]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(tmp_path / "absent.toml")


def test_top_level_must_be_a_table() -> None:
    docs: list[Any] = [[], "config", 1, None]
    for doc in docs:
        assert errors_of(doc)


def test_empty_document_is_valid_with_defaults() -> None:
    cfg = build_config({})
    assert cfg.skus == {} and cfg.rules == {}
    assert cfg.settings.hold_ttl_seconds == 900
    assert (cfg.settings.unknown, cfg.settings.release_on_cancel, cfg.settings.locale) == ("allow", True, "zh")


# -- durations and ratios ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("24h", 86400), ("7d", 604800), (45, 45), (1, 1), ("90", 90)],
)
def test_durations(value: Any, seconds: int) -> None:
    cfg = build_config({"settings": {"hold_ttl": value}})
    assert cfg.settings.hold_ttl_seconds == seconds
    rule = {"rule_id": "R1", "subject": "user", "window": value, "max_quantity": 1}
    assert build_config({"rules": [rule]}).rules["R1"].window_seconds == seconds


BAD_DURATIONS: list[Any] = ["15x", "", "1.5h", "15 minutes", 0, "0s", -5, True, 1.5]


@pytest.mark.parametrize("value", BAD_DURATIONS)
def test_bad_durations_are_refused_at_their_entry(value: Any) -> None:
    error = one_error({"settings": {"hold_ttl": value}})
    assert error.startswith("settings"), error
    rule = {"rule_id": "R1", "subject": "user", "window": value, "max_quantity": 1}
    error = one_error({"rules": [rule]})
    assert error.startswith("rules[0] (rule_id=R1)"), error


@pytest.mark.parametrize("value", ["15x", 0])
def test_bad_hold_ttl_error_names_the_field(value: Any) -> None:
    error = one_error({"settings": {"hold_ttl": value}})
    assert error.startswith("settings") and "hold_ttl" in error, error


@pytest.mark.parametrize("value", ["15x", 0])
def test_bad_rule_window_error_names_the_field(value: Any) -> None:
    rule = {"rule_id": "R1", "subject": "user", "window": value, "max_quantity": 1}
    error = one_error({"rules": [rule]})
    assert error.startswith("rules[0] (rule_id=R1)") and "window" in error, error


@pytest.mark.parametrize(
    ("value", "exact"),
    [
        ("1.0", Fraction(1)),
        ("0.95", Fraction(19, 20)),
        (0.1, Fraction(1, 10)),
        (1, Fraction(1)),
        ("0.333", Fraction(333, 1000)),
        ("0.999999999999", Fraction(999999999999, 10**12)),
        ("1.50000000000000000000", Fraction(3, 2)),  # trailing zeros are not places
    ],
)
def test_ratios_are_exact(value: Any, exact: Fraction) -> None:
    cfg = build_config({"settings": {"risk_multiplier": value}})
    assert cfg.settings.multiplier == exact


# The last two: exact fractions of 10 million and 13 digits, which would stall every check.
BAD_RATIOS: list[Any] = ["abc", "-0.5", "NaN", "Infinity", True, "", "1e-10000000", "0.9999999999999"]


@pytest.mark.parametrize("value", BAD_RATIOS)
def test_bad_ratios_are_refused_at_their_entry(value: Any) -> None:
    error = one_error({"settings": {"risk_multiplier": value}})
    assert error.startswith("settings"), error
    sku = {"sku_id": "S1", "cost_price": 10, "price_fuse": {"base": "cost", "ratio": value}}
    error = one_error({"skus": [sku]})
    assert error.startswith("skus[0] (sku_id=S1).price_fuse") and "ratio" in error, error


@pytest.mark.parametrize("value", ["S1\n", "S\t1", "S\x1f1", "S\x7f"])
def test_an_id_with_a_control_character_is_refused(value: str) -> None:
    # A trailing newline too (Python's `$` would let it through): the SKU could never be ordered.
    error = one_error({"skus": [{"sku_id": value}]})
    assert error.startswith(f"skus[0] (sku_id={value!r}).sku_id: Expected `str` matching regex"), error


def test_bad_risk_multiplier_error_names_the_field() -> None:
    error = one_error({"settings": {"risk_multiplier": "abc"}})
    assert error.startswith("settings") and "risk_multiplier" in error, error


@pytest.mark.parametrize("ratio", ["0.1", 0.1])
async def test_price_fuse_floor_is_exact(gw_factory: MakeGateway, ratio: Any) -> None:
    # 30 * 0.1 is 3.0000000000000004 in floating point; exactly it is 3, and paying 3 passes.
    cfg = base_config(skus=[{"sku_id": "S1", "cost_price": 30, "price_fuse": {"base": "cost", "ratio": ratio}}])
    gw = await gw_factory(cfg)
    assert (await gw.check(order(item("S1", 1, 100, discount(97)))))["decision"] == "allow"
    res = await gw.check(order(item("S1", 1, 100, discount(98))))
    assert [r["code"] for r in res["reasons"]] == ["PRICE_FUSE"]


async def test_risk_multiplier_is_exact(gw_factory: MakeGateway) -> None:
    # floor(100 * 0.29) is 29; in floating point 100 * 0.29 is 28.999999999999996.
    cfg = base_config(rules=[{"rule_id": "R1", "subject": "user", "window": "1h", "max_quantity": 100}])
    cfg["settings"]["risk_multiplier"] = "0.29"
    gw = await gw_factory(cfg)
    assert (await gw.check(order(item("S1", 29))))["decision"] == "allow"
    res = await gw.check(order(item("S1", 1)))
    assert [(r["code"], r["limit"], r["used"]) for r in res["reasons"]] == [("RISK_RULE", 29, 29)]


# -- invalid documents ---------------------------------------------------------------------


def test_error_names_the_entry_and_the_field() -> None:
    doc = {"skus": [{"sku_id": "S1"}, {"sku_id": "S2", "limits": {"user": 0}}]}
    error = one_error(doc)
    assert error.startswith("skus[1] (sku_id=S2).limits.user"), error


def test_several_bad_entries_give_several_errors() -> None:
    doc = {
        "skus": [
            {"sku_id": "S1", "limits": {"user": 0}},
            {"sku_id": "S2"},
            {"sku_id": "S3", "cost_price": -1},
        ],
        "activities": [{"activity_id": "A1", "budget": "lots"}],
        "rules": [{"rule_id": "R1", "subject": "planet", "window": "1h", "max_quantity": 1}],
    }
    errors = errors_of(doc)
    assert len(errors) == 4, errors
    assert any(e.startswith("skus[0] (sku_id=S1).limits.user") for e in errors)
    assert any(e.startswith("skus[2] (sku_id=S3).cost_price") for e in errors)
    assert any(e.startswith("activities[0] (activity_id=A1).budget") for e in errors)
    assert any(e.startswith("rules[0] (rule_id=R1).subject") for e in errors)


def test_entry_without_an_id_is_located_by_index() -> None:
    error = one_error({"skus": [{"sku_id": "S1"}, {"limits": {"user": 1}}]})
    assert error.startswith("skus[1]"), error
    assert "sku_id" in error


@pytest.mark.parametrize(
    ("section", "id_field", "extra"),
    [
        ("skus", "sku_id", {}),
        ("spus", "spu_id", {}),
        ("activities", "activity_id", {}),
        ("coupons", "coupon_id", {}),
        ("rules", "rule_id", {"subject": "user", "window": "1h", "max_quantity": 1}),
    ],
)
def test_duplicate_ids(section: str, id_field: str, extra: dict[str, Any]) -> None:
    entries = [{id_field: "X", **extra}, {id_field: "Y", **extra}, {id_field: "X", **extra}]
    error = one_error({section: entries})
    assert error.startswith(f"{section}[2] ({id_field}=X)"), error
    assert "duplicate" in error


def test_unknown_section() -> None:
    doc: dict[str, Any] = {**base_config(), "skuz": []}
    error = one_error(doc)
    assert error.startswith("skuz"), error


@pytest.mark.parametrize(
    ("doc", "where", "field"),
    [
        ({"skus": [{"sku_id": "S1", "quantty": 1}]}, "skus[0] (sku_id=S1)", "quantty"),
        ({"skus": [{"sku_id": "S1", "limits": {"ip": 1}}]}, "skus[0] (sku_id=S1).limits", "ip"),
        ({"settings": {"hold_tll": "15m"}}, "settings", "hold_tll"),
        ({"activities": [{"activity_id": "A1", "budjet": 5}]}, "activities[0] (activity_id=A1)", "budjet"),
        (
            {"rules": [{"rule_id": "R1", "subject": "user", "window": "1h", "max_quantity": 1, "scope": {"colour": "red"}}]},
            "rules[0] (rule_id=R1).scope",
            "colour",
        ),
        ({"lists": {"greylist": {}}}, "lists", "greylist"),
        ({"lists": {"blacklist": {"email": ["x"]}}}, "lists.blacklist", "email"),
        ({"auto_blacklist": {"discount": 5}}, "auto_blacklist", "discount"),
    ],
)
def test_unknown_fields(doc: dict[str, Any], where: str, field: str) -> None:
    error = one_error(doc)
    assert error.startswith(where), error
    assert field in error, error


@pytest.mark.parametrize("window", ["8d", "169h", 604801, "10081m"])
def test_window_over_7d(window: Any) -> None:
    rule = {"rule_id": "R1", "subject": "user", "window": window, "max_quantity": 1}
    error = one_error({"rules": [rule]})
    assert error.startswith("rules[0] (rule_id=R1)"), error
    assert "window" in error and "7d" in error


@pytest.mark.parametrize("window", ["7d", 604800, "168h"])
def test_window_of_exactly_7d_is_fine(window: Any) -> None:
    rule = {"rule_id": "R1", "subject": "user", "window": window, "max_quantity": 1}
    assert build_config({"rules": [rule]}).rules["R1"].window_seconds == 604800


def test_price_fuse_base_needs_its_price() -> None:
    error = one_error({"skus": [{"sku_id": "S1", "original_price": 10, "price_fuse": {"base": "cost", "ratio": "1"}}]})
    assert error.startswith("skus[0] (sku_id=S1)") and "cost_price" in error, error
    error = one_error({"skus": [{"sku_id": "S1", "cost_price": 10, "price_fuse": {"base": "original", "ratio": "1"}}]})
    assert error.startswith("skus[0] (sku_id=S1)") and "original_price" in error, error
    error = one_error({"skus": [{"sku_id": "S1", "cost_price": 10, "price_fuse": {"base": "list", "ratio": "1"}}]})
    assert error.startswith("skus[0] (sku_id=S1).price_fuse.base"), error


@pytest.mark.parametrize(("starts_at", "ends_at"), [(100, 100), (100, 99)])
def test_ends_at_must_be_after_starts_at(starts_at: int, ends_at: int) -> None:
    error = one_error({"activities": [{"activity_id": "A1", "starts_at": starts_at, "ends_at": ends_at}]})
    assert error.startswith("activities[0] (activity_id=A1)"), error
    assert "ends_at" in error


def test_ends_at_one_second_after_starts_at_is_fine() -> None:
    a1 = build_config({"activities": [{"activity_id": "A1", "starts_at": 100, "ends_at": 101}]}).activities["A1"]
    assert a1.active(100) and not a1.active(101) and not a1.active(99)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"sku_id": "S1", "cost_price": 1.0}, "cost_price"),
        ({"sku_id": "S1", "cost_price": True}, "cost_price"),
        ({"sku_id": "S1", "limits": {"user": 1.5}}, "limits.user"),
        ({"sku_id": "x" * 129}, "sku_id"),
        ({"sku_id": ""}, "sku_id"),
    ],
)
def test_money_limits_and_ids_are_strict(entry: dict[str, Any], field: str) -> None:
    error = one_error({"skus": [entry]})
    assert error.startswith("skus[0]") and field in error, error


def test_scope_names_at_most_one_field() -> None:
    rule = {"rule_id": "R1", "subject": "user", "window": "1h", "max_quantity": 1, "scope": {"category": "a", "brand": "b"}}
    error = one_error({"rules": [rule]})
    assert error.startswith("rules[0] (rule_id=R1)") and "scope" in error, error


def test_a_bad_entry_is_checked_for_duplicates_and_across_fields_in_the_same_run() -> None:
    # A duplicate id and a check across fields used to wait until the entry's other fields were
    # fixed: one error per run, in rounds.
    doc = {
        "skus": [
            {"sku_id": "S1"},
            {"sku_id": "S1", "limits": {"user": 0}},
            {"sku_id": "S2", "cost_price": -1, "original_price": 10, "price_fuse": {"base": "cost", "ratio": "1"}},
        ],
        "activities": [{"activity_id": "A1", "budget": "lots", "starts_at": 200, "ends_at": 100}],
        "rules": [{"rule_id": "R1", "subject": "user", "window": "1h", "max_quantity": 1.5, "scope": {"category": "a", "brand": "b"}}],
    }
    assert errors_of(doc) == [
        "skus[1] (sku_id=S1).limits.user: Expected `int` >= 1",
        "skus[1] (sku_id=S1): duplicate sku_id 'S1'",
        "skus[2] (sku_id=S2).cost_price: Expected `int` >= 0",
        "skus[2] (sku_id=S2): price_fuse base 'cost' needs cost_price",
        "activities[0] (activity_id=A1).budget: Expected `int | null`, got `str`",
        "activities[0] (activity_id=A1): ends_at must be after starts_at",
        "rules[0] (rule_id=R1).max_quantity: Expected `int`, got `float`",
        "rules[0] (rule_id=R1).scope: a scope names at most one of category, brand, spu_id, sku_id",
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"settings": {"unknown": "maybe"}}, "settings.unknown: 'maybe' is not one of allow, deny"),
        ({"settings": {"unknown": 1}}, "settings.unknown: 1 is not one of allow, deny"),
        ({"settings": {"locale": "fr"}}, "settings.locale: 'fr' is not one of zh, en"),
        (
            {"skus": [{"sku_id": "S1", "cost_price": 1, "price_fuse": {"base": "list", "ratio": "1"}}]},
            "skus[0] (sku_id=S1).price_fuse.base: 'list' is not one of cost, original",
        ),
        (
            {"rules": [{"rule_id": "R1", "subject": "user", "window": "1h", "max_quantity": 1, "mode": "loud"}]},
            "rules[0] (rule_id=R1).mode: 'loud' is not one of enforce, shadow",
        ),
        (
            {"rules": [{"rule_id": "R1", "subject": "town", "window": "1h", "max_quantity": 1}]},
            "rules[0] (rule_id=R1).subject: 'town' is not one of user, device, ip, receiver_name, receiver_phone, "
            "receiver_address, address:province, address:city, address:district, address:town",
        ),
    ],
)
def test_an_enum_error_lists_the_allowed_values(entry: dict[str, Any], message: str) -> None:
    assert one_error(entry) == message


# -- references ----------------------------------------------------------------------------


def referring(unknown: str, **sections: Any) -> dict[str, Any]:
    """base_config (SKU S1 of SPU P1, category phone, brand acme; activity A1) with `unknown`."""
    doc = base_config(**sections)
    doc["settings"]["unknown"] = unknown
    return doc


def rule(**scope: str) -> dict[str, Any]:
    return {"rule_id": "R1", "subject": "user", "window": "1h", "max_quantity": 1, "scope": scope}


# Names of SKUs and activities that are not configured: warnings with unknown = "allow" (orders
# naming them pass, the entry still applies to them), errors with "deny" (every such order is refused).
UNCONFIGURED = [
    ({"coupons": [{"coupon_id": "C1", "activity_id": "A9"}]}, "coupons[0] (coupon_id=C1).activity_id: activity 'A9' is not in [[activities]]"),
    (
        {"activities": [{"activity_id": "A1", "sku_limits": {"S1": 1, "S9": 1}}]},
        "activities[0] (activity_id=A1).sku_limits: SKU 'S9' is not in [[skus]]",
    ),
    ({"rules": [rule(sku_id="S9")]}, "rules[0] (rule_id=R1).scope.sku_id: SKU 'S9' is not in [[skus]]"),
]


@pytest.mark.parametrize(("sections", "where"), UNCONFIGURED)
def test_a_name_that_is_not_configured_is_a_warning_when_unknown_is_allow(sections: dict[str, Any], where: str) -> None:
    cfg, warnings = read_config(referring("allow", **sections))
    assert warnings == [f'{where} (settings.unknown = "allow" lets the orders that name it pass)']
    assert cfg.skus["S1"]


@pytest.mark.parametrize(("sections", "where"), UNCONFIGURED)
def test_a_name_that_is_not_configured_is_an_error_when_unknown_is_deny(sections: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as info:
        read_config(referring("deny", **sections))
    assert info.value.errors == [f'{where}, and settings.unknown = "deny" refuses every order that names it']


# Nothing can ever count in these, whatever settings.unknown: an unknown SKU has no category,
# brand or SPU.
NO_SKU_CARRIES = [
    ({"rules": [rule(category="phnoe")]}, "rules[0] (rule_id=R1).scope.category: no SKU has category 'phnoe', so the rule never counts"),
    ({"rules": [rule(brand="acne")]}, "rules[0] (rule_id=R1).scope.brand: no SKU has brand 'acne', so the rule never counts"),
    ({"rules": [rule(spu_id="P9")]}, "rules[0] (rule_id=R1).scope.spu_id: no SKU has spu_id 'P9', so the rule never counts"),
    ({"spus": [{"spu_id": "P9", "limits": {"user": 1}}]}, "spus[0] (spu_id=P9): no SKU has spu_id 'P9', so its limits never count"),
]


@pytest.mark.parametrize("unknown", ["allow", "deny"])
@pytest.mark.parametrize(("sections", "error"), NO_SKU_CARRIES)
def test_a_scope_or_spu_that_no_sku_carries_is_an_error(sections: dict[str, Any], error: str, unknown: str) -> None:
    with pytest.raises(ConfigError) as info:
        read_config(referring(unknown, **sections))
    assert info.value.errors == [error]


@pytest.mark.parametrize("unknown", ["allow", "deny"])
def test_references_to_what_is_configured_are_fine(unknown: str) -> None:
    # S1's spu_id P1 has no [[spus]] entry: SPU limits are optional, and rules may scope on it.
    doc = referring(
        unknown,
        activities=[{"activity_id": "A1", "sku_limits": {"S1": 1}}],
        coupons=[{"coupon_id": "C1", "activity_id": "A1"}, {"coupon_id": "C2"}],
        rules=[rule(sku_id="S1"), {**rule(category="phone"), "rule_id": "R2"}, {**rule(brand="acme"), "rule_id": "R3"},
               {**rule(spu_id="P1"), "rule_id": "R4"}, {**rule(), "rule_id": "R5"}],
    )
    assert read_config(doc)[1] == []


def test_references_are_checked_in_the_same_run_as_the_entries() -> None:
    # The coupon's own bad field does not hide its reference, nor a bad [settings] field the
    # "deny" that makes the reference an error.
    doc = referring("deny", coupons=[{"coupon_id": "C1", "activity_id": "A9", "per_user_limit": 0}])
    doc["settings"]["hold_ttl"] = "soon"
    with pytest.raises(ConfigError) as info:
        read_config(doc)
    assert [e.split(":")[0] for e in info.value.errors] == [
        "settings.hold_ttl",
        "coupons[0] (coupon_id=C1).per_user_limit",
        "coupons[0] (coupon_id=C1).activity_id",
    ]


def test_stored_state_is_read_without_checking_references() -> None:
    # Snapshots and the journal hold a configuration that was in force; entry-by-entry admin
    # changes (DELETE /v1/admin/activities/A1) may leave it naming what is gone, and a restart
    # must still restore it.
    doc = referring("deny", activities=[], coupons=[{"coupon_id": "C1", "activity_id": "A1"}])
    assert build_config(doc).coupons["C1"].activity_id == "A1"


def test_a_file_with_a_reference_error_is_refused_by_the_server_too(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(referring("allow", rules=[rule(category="phnoe")])), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)  # what `serve --config` and `replay --config` read
    assert info.value.errors == ["rules[0] (rule_id=R1).scope.category: no SKU has category 'phnoe', so the rule never counts"]


# -- the command line ----------------------------------------------------------------------


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.toml"
    path.write_text(SPEC_TOML, encoding="utf-8")
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr()
    assert "ok" in out.out
    assert out.err == ""


def test_check_config_ok_for_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.json"
    path.write_text(json.dumps(base_config()), encoding="utf-8")
    assert main(["check-config", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_config_prints_each_error_with_its_location(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        """
[[skus]]
sku_id = "S1"

[[skus]]
sku_id = "S2"
limits = { user = 0 }

[[activities]]
activity_id = "A1"
starts_at = 200
ends_at = 100

[[rules]]
rule_id = "R1"
subject = "user"
window = "30d"
max_quantity = 1
""",
        encoding="utf-8",
    )
    assert main(["check-config", str(path)]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "skus[1] (sku_id=S2).limits.user" in text
    assert "activities[0] (activity_id=A1)" in text
    assert "rules[0] (rule_id=R1)" in text
    assert "ok" not in out.out


def test_check_config_names_every_bad_field_of_an_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One run names them all, so the operator does not fix a file one error per run.
    path = tmp_path / "bad.toml"
    path.write_text(
        """
[[skus]]
sku_id = "S1"
cost_price = 100
limits = { user = 0, device = 2, receiver_name = "two" }
price_fuse = { base = "cost", ratio = "abc" }
colour = "red"

[[rules]]
subject = "town"
window = "1h"
max_quantity = 1.5

[[rules]]
rule_id = "R2"
subject = "user"
window = "8d"
max_quantity = -1

[settings]
hold_ttl = "soon"
risk_multiplier = "abc"
""",
        encoding="utf-8",
    )
    assert main(["check-config", str(path)]) == 1
    errors = [line.removeprefix(f"{path}: ") for line in capsys.readouterr().err.splitlines()]
    assert errors == [
        "settings.hold_ttl: bad duration 'soon': use whole seconds or '30s', '15m', '1h', '7d'",
        "settings.risk_multiplier: bad ratio 'abc': use a decimal such as '0.95'",
        "skus[0] (sku_id=S1).limits.user: Expected `int` >= 1",
        "skus[0] (sku_id=S1).limits.receiver_name: Expected `int | null`, got `str`",
        "skus[0] (sku_id=S1).price_fuse.ratio: bad ratio 'abc': use a decimal such as '0.95'",
        "skus[0] (sku_id=S1): Object contains unknown field `colour`",
        "rules[0]: Object missing required field `rule_id`",
        "rules[0].subject: 'town' is not one of user, device, ip, receiver_name, receiver_phone, receiver_address, "
        "address:province, address:city, address:district, address:town",
        "rules[0].max_quantity: Expected `int`, got `float`",
        "rules[1] (rule_id=R2).window: '8d' is longer than 7d",
        "rules[1] (rule_id=R2).max_quantity: Expected `int` >= 0",
        "11 error(s)",
    ]


def test_check_config_on_a_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[[skus]\nsku_id = 1\n", encoding="utf-8")
    assert main(["check-config", str(path)]) == 1
    out = capsys.readouterr()
    assert "TOML" in out.out + out.err


def test_check_config_on_a_missing_file_names_it_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    assert main(["check-config", str(path)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [f"{path}: No such file or directory", f"{path}: 1 error(s)"]


def test_check_config_on_a_file_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"[settings]\nlocale = '\xff'\n")
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err.splitlines()[0] == f"{path}: not UTF-8 text (invalid start byte at byte 21)"


def test_check_config_passes_with_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "warn.json"
    path.write_text(json.dumps(referring("allow", coupons=[{"coupon_id": "C1", "activity_id": "A9"}])), encoding="utf-8")
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr()
    assert out.err.splitlines() == [
        f"{path}: warning: coupons[0] (coupon_id=C1).activity_id: activity 'A9' is not in [[activities]] "
        '(settings.unknown = "allow" lets the orders that name it pass)'
    ]
    assert out.out == f"{path}: ok (1 skus, 0 spus, 1 activities, 1 coupons, 0 rules) (1 warning(s))\n"


def test_check_config_reports_everything_in_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The report of issue 16: 13 errors, then 2, then 1. Field errors, a duplicate, a check across
    # fields, references and warnings now come together.
    path = tmp_path / "bad.toml"
    path.write_text(
        """
[settings]
unknown = "maybe"

[[skus]]
sku_id = "S1"
category = "phone"

[[skus]]
sku_id = "S1"
limits = { user = 0 }

[[activities]]
activity_id = "A1"
budget = -5
starts_at = 200
ends_at = 100
sku_limits = { S9 = 1 }

[[coupons]]
coupon_id = "C1"
activity_id = "A9"

[[rules]]
rule_id = "R1"
subject = "user"
window = "1h"
max_quantity = 1
scope = { category = "phnoe" }
""",
        encoding="utf-8",
    )
    assert main(["check-config", str(path)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert [line.removeprefix(f"{path}: ") for line in out.err.splitlines()] == [
        "settings.unknown: 'maybe' is not one of allow, deny",
        "skus[1] (sku_id=S1).limits.user: Expected `int` >= 1",
        "skus[1] (sku_id=S1): duplicate sku_id 'S1'",
        "activities[0] (activity_id=A1).budget: Expected `int` >= 0",
        "activities[0] (activity_id=A1): ends_at must be after starts_at",
        "rules[0] (rule_id=R1).scope.category: no SKU has category 'phnoe', so the rule never counts",
        "warning: activities[0] (activity_id=A1).sku_limits: SKU 'S9' is not in [[skus]] "
        '(settings.unknown = "allow" lets the orders that name it pass)',
        "warning: coupons[0] (coupon_id=C1).activity_id: activity 'A9' is not in [[activities]] "
        '(settings.unknown = "allow" lets the orders that name it pass)',
        "6 error(s)",
    ]


# -- unknown SKUs and activities -----------------------------------------------------------


def with_unknown(mode: str) -> dict[str, Any]:
    cfg = base_config(skus=[{"sku_id": "S1", "spu_id": "P1", "limits": {"user": 1}}])
    cfg["settings"]["unknown"] = mode
    return cfg


async def test_unknown_sku_allowed_with_a_warning(gw_factory: MakeGateway) -> None:
    gw: Gateway = await gw_factory(with_unknown("allow"))
    res = await gw.check(order(item("S9", 3)))
    assert res["decision"] == "allow"
    assert res["reasons"] == []
    assert [(w["code"], w.get("sku_id")) for w in res["warnings"]] == [("UNKNOWN_SKU", "S9")]
    assert res["hold"] is not None


async def test_unknown_sku_does_not_hide_a_known_skus_limit(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(with_unknown("allow"))
    res = await gw.check(order(item("S1", 2), item("S9", 1)))
    assert res["decision"] == "deny"
    assert [(r["code"], r["sku_id"]) for r in res["reasons"]] == [("SKU_LIMIT", "S1")]
    assert [w["code"] for w in res["warnings"]] == ["UNKNOWN_SKU"]


async def test_unknown_activity_allowed_with_a_warning(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(with_unknown("allow"))
    res = await gw.check(order(item("S1", 1, 1000, discount(100, activity="A9"))))
    assert res["decision"] == "allow"
    assert res["reasons"] == []
    assert [(w["code"], w.get("activity_id")) for w in res["warnings"]] == [("UNKNOWN_ACTIVITY", "A9")]
    assert res["payable"] == 900


async def test_unknown_sku_denied_and_not_degradable(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(with_unknown("deny"))
    for on_refusal in ("deny", "degrade"):
        res = await gw.check(order(item("S9", 1, 1000, discount(100)), on_refusal=on_refusal))
        assert res["decision"] == "deny", on_refusal
        assert [(r["code"], r["sku_id"], r["degradable"]) for r in res["reasons"]] == [("UNKNOWN_SKU", "S9", False)]
        assert res["hold"] is None
    assert (await gw.user("u1"))["counters"]["sku"] == {}
    assert (await gw.activity("A1"))["held"] == 0


async def test_unknown_activity_denied_but_degradable(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(with_unknown("deny"))
    body = order(item("S1", 1, 1000, discount(100, activity="A9")))
    res = await gw.check(body)
    assert res["decision"] == "deny"
    assert [(r["code"], r["activity_id"], r["degradable"]) for r in res["reasons"]] == [("UNKNOWN_ACTIVITY", "A9", True)]
    assert res["hold"] is None
    degraded = await gw.check(order(item("S1", 1, 1000, discount(100, activity="A9")), on_refusal="degrade"))
    assert degraded["decision"] == "degrade"
    assert degraded["stripped"] == ["A9"]
    assert degraded["payable"] == 1000
    assert degraded["hold"] is not None
    assert degraded["message"] == "This promotion has ended. Continue without the discount?"


async def test_known_sku_and_activity_are_unaffected_by_unknown_deny(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(with_unknown("deny"))
    res = await gw.check(order(item("S1", 1, 1000, discount(100))))
    assert res["decision"] == "allow"
    assert res["warnings"] == []


async def test_put_config_refuses_what_check_config_calls_an_error(gw: Gateway) -> None:
    before = await gw.admin("GET", "config")
    doc = base_config(rules=[{"rule_id": "R1", "subject": "user", "window": "1h", "max_quantity": 1, "scope": {"category": "phnoe"}}])
    err = await gw.admin("PUT", "config", doc, status=400)
    assert err["error"]["code"] == "invalid_config" and "scope.category" in err["error"]["message"], err
    assert await gw.admin("GET", "config") == before
    await gw.admin("PUT", "config", base_config(coupons=[{"coupon_id": "C1", "activity_id": "A9"}]))  # a warning: accepted
