"""Unit tests of the plugin's logic, run natively with CPython:

    rm -rf bindings && componentize-py -d ../../../wit/pricing -w plugin bindings bindings
    PYTHONPATH=bindings python3 -m unittest test_app
"""

import unittest

from componentize_py_types import Err
from wit_world.imports.types import Cart, Line, Money

from app import Pricing


def cart(*lines, currency="EUR"):
    return Cart(
        merchant_id="m1",
        currency=currency,
        lines=[
            Line(sku=sku, product_id="p", title=sku.upper(), quantity=q, unit_price=Money(amount=a, currency=currency))
            for sku, q, a in lines
        ],
        discount_codes=[],
        config=None,
    )


class MultibuyTest(unittest.TestCase):
    def test_three_lines_get_ten_percent_each(self):
        out = Pricing().discounts(cart(("a", 3, 1000), ("b", 1, 500), ("c", 2, 500)))
        self.assertEqual([(d.sku, d.amount.amount) for d in out], [("a", 300), ("b", 50), ("c", 100)])
        self.assertTrue(all(d.amount.currency == "EUR" for d in out))

    def test_fewer_lines_get_nothing(self):
        self.assertEqual(Pricing().discounts(cart(("a", 9, 1000), ("b", 9, 1000))), [])

    def test_unknown_currency_gets_nothing(self):
        self.assertEqual(Pricing().discounts(cart(("a", 1, 10), ("b", 1, 10), ("c", 1, 10), currency="JPY")), [])

    def test_price_answers_the_0_2_0_shape(self):
        out = Pricing().price(cart(("a", 3, 1000), ("b", 1, 500), ("c", 2, 500)))
        self.assertEqual(len(out.discounts), 3)
        self.assertEqual(out.rejected_codes, [])

    def test_a_line_in_another_currency_is_an_error(self):
        c = cart(("a", 1, 1000), ("b", 1, 1000), ("c", 1, 1000))
        c.lines[1].unit_price.currency = "USD"
        with self.assertRaises(Err):
            Pricing().discounts(c)


if __name__ == "__main__":
    unittest.main()
