"""Renders an email step from ``templates/<step>/{subject.txt,body.txt,body.html}``.

Two jinja2 environments share one loader: HTML is autoescaped, subject and text
are not (a company called "Smith & Sons" must read as such in a subject line).
Compiled templates are cached for the life of the worker.

Rendering was a fifth of a send's CPU, so the jinja2 machinery every expression goes
through has a fast path where it can have one without changing a byte: ``deal.company``
on a context dict (jinja2 tries ``getattr`` first, which raises, then the key),
``line.strip()`` (a builtin method: nothing to pass it) and the ``day`` filter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from types import BuiltinMethodType
from typing import Any

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.runtime import Context


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
    return _day(value)


@functools.lru_cache(maxsize=1024)
def _day(value: date | datetime) -> str:
    return f"{value:%A}, {value.day} {value:%B %Y}"


# What ``getattr`` finds on a plain dict: only these names of one are not its keys.
_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Context(Context):
    def call(__self, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # A builtin method (``str.strip``) takes no context: call it as jinja2 would.
        if type(__obj) is BuiltinMethodType:
            kwargs.pop("_block_vars", None)
            kwargs.pop("_loop_vars", None)
            try:
                return __obj(*args, **kwargs)
            except StopIteration:
                return __self.environment.undefined(
                    "value was undefined because a callable raised a StopIteration exception"
                )
        return super().call(__obj, *args, **kwargs)


class _Environment(Environment):
    context_class = _Context

    def getattr(self, obj: Any, attribute: str) -> Any:
        # ``dict.attribute`` fails for every name but dict's own, then jinja2 reads the key.
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


class TemplateLibrary:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        loader = FileSystemLoader(folder)
        self._text = self._environment(loader, autoescape=False)
        self._html = self._environment(loader, autoescape=True)
        # Each step's three templates, once loaded (jinja2 checks its cache a call).
        self._steps: dict[str, tuple[Template, Template, Template]] = {}

    @staticmethod
    def _environment(loader: FileSystemLoader, *, autoescape: bool) -> Environment:
        environment = _Environment(
            loader=loader,
            undefined=StrictUndefined,
            autoescape=autoescape,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        environment.filters["money"] = money
        environment.filters["day"] = day
        return environment

    def _templates(self, step: str) -> tuple[Template, Template, Template]:
        found = self._steps.get(step)
        if found is None:
            found = (
                self._text.get_template(f"{step}/subject.txt"),
                self._text.get_template(f"{step}/body.txt"),
                self._html.get_template(f"{step}/body.html"),
            )
            self._steps[step] = found
        return found

    def render(self, step: str, context: dict[str, Any]) -> RenderedEmail:
        try:
            subject_template, text_template, html_template = self._templates(step)
            subject = subject_template.render(context)
            text = text_template.render(context)
            html = html_template.render(context)
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
