"""Renders an email step from ``templates/<step>/{subject.txt,body.txt,body.html}``.

Two jinja2 environments share one loader: HTML is autoescaped, subject and text
are not (a company called "Smith & Sons" must read as such in a subject line).
Compiled templates are cached by jinja2 for the life of the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)


class TemplateProblem(Exception):
    """A template that cannot render: missing, broken, or asking for an unknown variable."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def money(value: Decimal | int | float | None, currency: str) -> str:
    if value is None:
        return "-"
    return f"{currency} {Decimal(value):,.2f}"


def day(value: date | datetime | None) -> str:
    if value is None:
        return "-"
    return f"{value:%A}, {value.day} {value:%B %Y}"


class TemplateLibrary:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        loader = FileSystemLoader(folder)
        self._text = self._environment(loader, autoescape=False)
        self._html = self._environment(loader, autoescape=True)

    @staticmethod
    def _environment(loader: FileSystemLoader, *, autoescape: bool) -> Environment:
        environment = Environment(
            loader=loader,
            undefined=StrictUndefined,
            autoescape=autoescape,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        environment.filters["money"] = money
        environment.filters["day"] = day
        return environment

    def render(self, step: str, context: dict[str, Any]) -> RenderedEmail:
        try:
            subject = self._text.get_template(f"{step}/subject.txt").render(context)
            text = self._text.get_template(f"{step}/body.txt").render(context)
            html = self._html.get_template(f"{step}/body.html").render(context)
        except TemplateNotFound as error:
            raise TemplateProblem(
                f"template {error.name!r} not found under {self.folder}"
            ) from None
        except UndefinedError as error:
            raise TemplateProblem(f"template {step!r}: {error.message}") from None
        except TemplateSyntaxError as error:
            raise TemplateProblem(
                f"template {error.name or step!r} line {error.lineno}: {error.message}"
            ) from None
        return RenderedEmail(subject=" ".join(subject.split()), text=text, html=html)
