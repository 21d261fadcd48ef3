from decimal import Decimal

from workflows.models import LineItem
from workflows.pricing import discount_refusal, floor_total, list_total, max_discount_percent

ITEMS = [
    LineItem(name="Press", quantity=Decimal(2), list_price=Decimal("1000")),
    LineItem(
        name="Tooling", quantity=Decimal(1), list_price=Decimal("500"), floor_price=Decimal("480")
    ),
]


def test_floor_keeps_the_reserved_margin_unless_a_line_names_its_own() -> None:
    assert list_total(ITEMS) == Decimal("2500.00")
    # Press: 10% margin reserved -> 900 floor each; Tooling: its own floor of 480.
    assert floor_total(ITEMS, Decimal(10)) == Decimal("2280.00")


def test_largest_discount_stays_on_the_floor() -> None:
    most = max_discount_percent(ITEMS, Decimal(10))
    assert most == Decimal("8.80")
    assert discount_refusal(ITEMS, Decimal(10), most) is None
    refusal = discount_refusal(ITEMS, Decimal(10), Decimal("8.81"))
    assert refusal is not None and "below the floor of 2280.00" in refusal


def test_discount_without_line_items_is_refused() -> None:
    refusal = discount_refusal([], Decimal(10), Decimal(1))
    assert refusal is not None and "no line items" in refusal
