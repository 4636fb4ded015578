"""The filters a journey template may use: ``money``, ``date``, ``datetime`` and safe builtins.

Lives here: the filter table (``FILTERS``/``FILTER_NAMES``), the currency table, and the
name of the reserved render variable that carries the render's timezone to the date
filters. Must not live here: environments, template compilation or rendering
(``rules.templates``), I/O, and any mutable module state: the timezone travels with each
render, so concurrent renders never share it.

Formatting is locale-independent: ``,`` groups thousands and ``.`` separates decimals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from jinja2 import pass_context, pass_eval_context
from jinja2.filters import FILTERS as JINJA_FILTERS
from jinja2.nodes import EvalContext
from jinja2.runtime import Context

from .expressions import MAX_STRING_LENGTH, LimitExceededError
from .functions import load_zone, to_aware_datetime

__all__ = ["CURRENCIES", "FILTERS", "FILTER_NAMES", "RENDER_TIMEZONE_VARIABLE"]

RENDER_TIMEZONE_VARIABLE: Final = "_journeys_render_timezone"
"""Render variable holding the IANA timezone; templates cannot name it (it starts with '_')."""


class Currency(NamedTuple):
    """How amounts in one currency are written: ``symbol`` first, ``digits`` after the point."""

    symbol: str
    digits: int


CURRENCIES: Final[Mapping[str, Currency]] = MappingProxyType(
    {
        "USD": Currency("$", 2),
        "EUR": Currency("€", 2),
        "GBP": Currency("£", 2),
        "JPY": Currency("¥", 0),
        "KRW": Currency("₩", 0),
        "INR": Currency("₹", 2),
        "CNY": Currency("CN¥", 2),
        "CAD": Currency("CA$", 2),
        "AUD": Currency("A$", 2),
        "NZD": Currency("NZ$", 2),
        "HKD": Currency("HK$", 2),
        "SGD": Currency("S$", 2),
        "TWD": Currency("NT$", 2),
        "CHF": Currency("CHF ", 2),
        "BRL": Currency("R$", 2),
        "MXN": Currency("MX$", 2),
        "ILS": Currency("₪", 2),
        "PHP": Currency("₱", 2),
        "THB": Currency("฿", 2),
        "VND": Currency("₫", 0),
    }
)
"""Known currencies; any other code is written after the amount with 2 digits: ``12.50 XYZ``."""


def _decimal(amount: object) -> Decimal:
    if isinstance(amount, bool) or not isinstance(amount, int | float | Decimal | str):
        raise TypeError(f"money needs a number, got {type(amount).__name__}")
    try:
        exact = isinstance(amount, int | Decimal)
        value = Decimal(amount) if exact else Decimal(str(amount).strip())
    except InvalidOperation:
        raise ValueError(f"money needs a number, got {str(amount)[:40]!r}") from None
    if not value.is_finite():
        raise ValueError(f"money needs a finite number, got {amount!r}")
    return value


def format_money(amount: object, currency: object = "USD") -> str:
    """``12500 | money("KRW")`` -> ``₩12,500``; ``-1234.5 | money`` -> ``-$1,234.50``.

    Rounds half away from zero to the currency's minor unit. A ``None`` currency means
    USD; an unknown code is written after the amount: ``12.50 XYZ``.
    """
    code = "USD" if currency is None else str(currency).strip().upper()
    value = _decimal(amount)
    known = CURRENCIES.get(code)
    digits = known.digits if known else 2
    with localcontext() as decimal_context:
        decimal_context.prec = max(28, len(value.as_tuple().digits) + digits + 2)
        rounded = value.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    sign = "-" if rounded < 0 else ""
    body = f"{abs(rounded):,.{digits}f}"
    return f"{sign}{known.symbol}{body}" if known else f"{sign}{body} {code}"


def _calendar_value(value: object, timezone: str, who: str) -> date | datetime:
    """A date stays as written; anything with a time is moved into ``timezone``."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and len(value.strip()) == 10:
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    moment = to_aware_datetime(value, who)
    if moment is None:
        raise TypeError(f"{who} needs a date or time, got None")
    return moment.astimezone(load_zone(timezone))


def _render_timezone(context: Context) -> str:
    timezone = context.get(RENDER_TIMEZONE_VARIABLE)
    return timezone if isinstance(timezone, str) else "UTC"


@pass_context
def format_date(context: Context, value: object, fmt: str = "%Y-%m-%d") -> str:
    """``{{ vars.new_due | date("%d %b %Y") }}``: a date, datetime, ISO string or epoch seconds.

    Times are converted to the render's timezone first; naive ones are taken as UTC.
    """
    return _calendar_value(value, _render_timezone(context), "date").strftime(str(fmt))


@pass_context
def format_datetime(context: Context, value: object, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """Like ``date`` with a time-of-day default format, in the render's timezone."""
    return _calendar_value(value, _render_timezone(context), "datetime").strftime(str(fmt))


_do_replace = JINJA_FILTERS["replace"]


@pass_eval_context
def capped_replace(
    eval_ctx: EvalContext, value: object, old: object, new: object, count: int | None = None
) -> Any:
    """Jinja's ``replace``, refusing to grow a string past the size cap.

    ``replace('', 'x' * 1000)`` inserts between every character, so without a cap one
    filter could turn a 10 kB string into 10 MB.
    """
    text, old_text, new_text = str(value), str(old), str(new)
    occurrences = text.count(old_text)
    if count is not None and count >= 0:
        occurrences = min(occurrences, count)
    size = len(text) + occurrences * (len(new_text) - len(old_text))
    if size > max(len(text), MAX_STRING_LENGTH):
        raise LimitExceededError(f"string result too long (max {MAX_STRING_LENGTH} chars)")
    return _do_replace(eval_ctx, value, old, new, count)


_SAFE_JINJA_FILTERS: Final = (
    "abs",
    "capitalize",
    "default",
    "e",
    "escape",
    "first",
    "float",
    "int",
    "join",
    "last",
    "length",
    "lower",
    "round",
    "title",
    "trim",
    "truncate",
    "upper",
)

FILTERS: Final[Mapping[str, Callable[..., Any]]] = MappingProxyType(
    {
        **{name: JINJA_FILTERS[name] for name in _SAFE_JINJA_FILTERS},
        "replace": capped_replace,
        "money": format_money,
        "date": format_date,
        "datetime": format_datetime,
    }
)
"""Every filter a template can use; the environments get exactly these."""

FILTER_NAMES: Final[frozenset[str]] = frozenset(FILTERS)
"""Names of the usable filters: money, date, datetime and a safe subset of Jinja's builtins."""
