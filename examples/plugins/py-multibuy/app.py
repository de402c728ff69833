"""An example mercato pricing plugin in Python: a multi-buy discount.

The host calls `Pricing.price(cart)` with this merchant's lines only
(`mercato:pricing@0.2.0`: the cart also carries the shopper's
`discount_codes` and the merchant's `config`, unused here). Money is integer
minor units (Python ints, exact).

- A cart with 3 or more different lines of this merchant: 10 % off each line.
- A cart in a currency the plugin does not price: no discount (it could also
  refuse with `Err("...")`, which the merchant sees as the run's error).
"""

from typing import List

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Cart, Discount, Money, Pricing as Priced

MIN_LINES = 3
PERCENT = 10
CURRENCIES = {"EUR", "USD", "GBP"}


class Pricing(exports.Pricing):
    def price(self, cart: Cart) -> Priced:
        return Priced(discounts=self.discounts(cart), rejected_codes=[])

    def discounts(self, cart: Cart) -> List[Discount]:
        if cart.currency not in CURRENCIES:
            return []
        if len(cart.lines) < MIN_LINES:
            print(f"multibuy: {len(cart.lines)} lines, no discount")
            return []
        discounts = []
        for line in cart.lines:
            if line.unit_price.currency != cart.currency:
                raise Err(f"line {line.sku} is priced in {line.unit_price.currency}")
            amount = line.unit_price.amount * line.quantity * PERCENT // 100
            if amount > 0:
                discounts.append(
                    Discount(
                        sku=line.sku,
                        label=f"{PERCENT}% off {MIN_LINES}+ items",
                        amount=Money(amount=amount, currency=cart.currency),
                        code=None,
                    )
                )
        print(f"multibuy: {len(discounts)} discounts on {len(cart.lines)} lines")
        return discounts
