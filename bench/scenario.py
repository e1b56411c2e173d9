"""A flash-sale scenario shared by the benchmarks: a catalogue, a configuration with every rule kind,
a population of honest buyers and scalper rings, and the check bodies they send.

Deterministic for a seed, so two runs (or two systems in one run) see the same orders.
"""

from __future__ import annotations

import random
from itertools import accumulate
from dataclasses import dataclass
from typing import Any

PROVINCES = ["Zhejiang", "Jiangsu", "Guangdong", "Sichuan", "Henan", "Hubei", "Hunan", "Fujian"]


REGION_LIMITS = {"address:town": 30, "address:district": 300, "address:city": 3000}


@dataclass(slots=True)
class Scenario:
    users: int = 100_000
    skus: int = 200
    rings: int = 50  # scalper rings
    ring_size: int = 40  # accounts per ring
    rules: int = 10
    seed: int = 7

    def config(self) -> dict[str, Any]:
        """Every rule kind: SKU and SPU limits on all subjects, activity limits and budget, price
        fuses, risk rules over users, devices, IPs, receivers and regions, lists, auto-blacklist."""
        skus = []
        for i in range(self.skus):
            cost = 10_000 + (i * 7919) % 500_000
            skus.append(
                {
                    "sku_id": f"S{i}",
                    "spu_id": f"P{i // 4}",
                    "category": ["phone", "laptop", "tablet", "audio"][i % 4],
                    "brand": ["acme", "globex", "initech"][i % 3],
                    "cost_price": cost,
                    "original_price": cost * 13 // 10,
                    "price_fuse": {"base": "cost", "ratio": "0.85"},
                    "limits": {"user": 3, "device": 4, "receiver_name": 4, "receiver_phone": 4, "receiver_address": 5},
                }
            )
        spus = [{"spu_id": f"P{j}", "limits": {"user": 6, "device": 8}} for j in range(self.skus // 4)]
        subjects = ["user", "device", "ip", "receiver_phone", "receiver_name", "receiver_address",
                    "address:town", "address:district", "address:city", "user"]
        scopes: list[dict[str, str]] = [{}, {"category": "phone"}, {"brand": "acme"}, {"spu_id": "P0"}, {"sku_id": "S0"}]
        windows = ["1h", "24h", "7d", "15m", "1h"]
        rules = [
            {
                "rule_id": f"R{k}",
                "subject": subjects[k % len(subjects)],
                "scope": scopes[k % len(scopes)],
                "window": windows[k % len(windows)],
                "max_quantity": REGION_LIMITS.get(subjects[k % len(subjects)], 12),
                "mode": "shadow" if k % 5 == 4 else "enforce",
            }
            for k in range(self.rules)
        ]
        return {
            "settings": {"hold_ttl": "15m", "risk_multiplier": "1.0", "locale": "en"},
            "skus": skus,
            "spus": spus,
            "activities": [
                {"activity_id": "A1", "budget": 10**13, "user_limit": 8, "sku_limits": {f"S{i}": 2 for i in range(20)}},
                {"activity_id": "A2", "budget": 10**13, "user_limit": 10},
            ],
            "coupons": [{"coupon_id": "C1", "activity_id": "A1", "per_user_limit": 1}],
            "rules": rules,
            "lists": {"blacklist": {"user": ["u-bad"], "device": ["d-bad"], "address": ["Henan/C4"]},
                      "whitelist": {"user": ["staff-1"], "discount": ["618-SUPER"]}},
            "auto_blacklist": {"discount_cost": 10**9, "negative_margin": False},
        }

    def bodies(self, n: int, prefix: str = "o") -> list[dict[str, Any]]:
        """`n` check bodies: Zipf-popular SKUs, 1-3 items, two discounts each; 1 in 5 from a ring."""
        rnd = random.Random(self.seed)
        cum_weights = list(accumulate(1 / (k + 1) for k in range(self.skus)))  # Zipf; cumulative once
        population = range(self.skus)
        out = []
        for k in range(n):
            ring = self.rings > 0 and rnd.random() < 0.2
            if ring:
                r = rnd.randrange(self.rings)
                user = f"ring{r}-{rnd.randrange(self.ring_size)}"
                device = f"ring-dev{r}-{rnd.randrange(4)}"
                phone = f"188{r:04d}{rnd.randrange(3):04d}"
                name = f"Ring Name {r} {rnd.randrange(5)}"
                address = {"province": "Zhejiang", "city": "C1", "district": "D1", "town": f"ring-town-{r}", "detail": "1 Farm Rd"}
            else:
                u = rnd.randrange(self.users)
                user = f"u{u}"
                device = f"dev{u}"
                phone = f"139{u:08d}"
                name = f"Buyer {u}"
                address = {  # honest buyers spread over 8 provinces, 400 cities, 4000 districts, 20000 towns
                    "province": PROVINCES[u % 8], "city": f"C{u % 400}", "district": f"D{u % 4000}",
                    "town": f"T{u % 20000}", "detail": f"{u} Main St",
                }
            items = []
            for sku in set(rnd.choices(population, cum_weights=cum_weights, k=rnd.randint(1, 3))):
                cost = 10_000 + (sku * 7919) % 500_000
                price = cost * 13 // 10
                items.append(
                    {
                        "sku_id": f"S{sku}",
                        "quantity": 1,
                        "unit_price": price,
                        "discounts": [
                            {"id": "A1", "kind": "activity", "activity_id": "A1", "amount": price // 10},
                            {"id": "C1", "kind": "coupon", "activity_id": "A1", "amount": price // 20},
                        ],
                    }
                )
            out.append(
                {
                    "order_id": f"{prefix}-{k}",
                    "user_id": user,
                    "device_id": device,
                    "ip": f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}" if not ring else f"10.99.{r}.1",
                    "receiver": {"name": name, "phone": phone, "address": address},
                    "items": items,
                }
            )
        return out
