from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from activities.email_models import DealFacts, EmailContext, Party, PricedLine, StepFacts
from activities.rendering import TemplateLibrary, TemplateProblem
from settings import Settings

TEMPLATES = Settings(_env_file=None).templates_dir  # type: ignore[call-arg]
SENDER = {
    "name": "Ana Seller",
    "address": "sales@seller.example.com",
    "company": "Seller & Co",
    "postal_address": "Seller & Co\nHauptstrasse 1\n10115 Berlin",
    "reply_to": "sales@seller.example.com",
}


def context(**step: object) -> dict[str, object]:
    buyer = Party(name="Bea <Buyer>", email="bea@buyer.example.org")
    deal = DealFacts(
        deal_id="D-1",
        company="Smith & Sons",
        kind="rfp",
        stage="Proposal Received",
        currency="EUR",
        owner="rep@seller.example.com",
        lines=[
            PricedLine(
                name="Belt <B2>",
                quantity=Decimal(2),
                unit_price=Decimal("10"),
                line_total=Decimal("20"),
            )
        ],
        list_total=Decimal("20"),
        floor_total=Decimal("18"),
        price=Decimal("20"),
        delivery_date=date(2026, 12, 10),
        order_value=Decimal("20"),
    )
    rendered = EmailContext(
        deal=deal, recipient=buyer, buyer=buyer, step=StepFacts.model_validate(step)
    )
    return {**rendered.model_dump(), "sender": SENDER}


def every_template() -> list[str]:
    return sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir() and not p.name.startswith("_"))


def test_there_is_a_template_for_every_step_the_engine_sends() -> None:
    from workflows import deal, outbound, schedule

    source = "".join(Path(m.__file__).read_text() for m in (deal, outbound, schedule))
    for name in every_template():
        assert f'"{name}"' in source, f"template {name} is never sent"


@pytest.mark.parametrize("name", every_template())
def test_every_template_renders_with_postal_address(name: str) -> None:
    email = TemplateLibrary(TEMPLATES).render(
        name, context(touch=1, reason="budget", outcome="won")
    )
    assert email.subject and "\n" not in email.subject
    assert "10115 Berlin" in email.text
    assert "10115 Berlin" in email.html


def test_html_is_escaped_but_subject_and_text_are_not() -> None:
    email = TemplateLibrary(TEMPLATES).render("proposal", context())
    assert "Smith & Sons" in email.subject
    assert "Belt <B2>" in email.text
    assert "Belt &lt;B2&gt;" in email.html
    assert "Belt <B2>" not in email.html


def test_missing_variable_names_the_template_and_the_variable(tmp_path: Path) -> None:
    (tmp_path / "teaser").mkdir()
    (tmp_path / "teaser" / "subject.txt").write_text("Hi {{ recipient.nickname }}")
    (tmp_path / "teaser" / "body.txt").write_text("x")
    (tmp_path / "teaser" / "body.html").write_text("x")
    with pytest.raises(TemplateProblem, match=r"teaser.*nickname"):
        TemplateLibrary(tmp_path).render("teaser", context())


def test_unknown_template_is_a_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(TemplateProblem, match="not found"):
        TemplateLibrary(tmp_path).render("nothing_here", context())
