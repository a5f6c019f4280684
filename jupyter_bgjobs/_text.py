"""Plain text for tables and clocks: how jobs are shown without widgets, in one place."""

from __future__ import annotations

from typing import Any

from ._states import ENDED_ON_ITS_WAY


def text_table(header: tuple[str, ...], body: list[tuple[Any, ...]]) -> str:
    """Rows as aligned plain text: the form of every table shown without widgets."""
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *body]
    )


def count(done: int, total: int, state: str) -> str:
    """A job's progress as its row and its report both say it: ``3/5`` while it runs or
    once it succeeded, ``at 4/5`` for one that ended on its way (the statement it was at,
    as "failed at statement 4/5" says)."""
    if not total:
        return ""
    if state in ENDED_ON_ITS_WAY and done < total:
        return f"at {done + 1}/{total}"
    return f"{done}/{total}"


def usage(resources: dict[str, Any], running: bool) -> str:
    """What a job uses, in a few characters: ``1.2 GB · 180 %`` while it runs (its memory
    now and its CPU, in percent of one core), ``peak 1.4 GB`` once it has ended."""
    from ._usage import size_text

    if not resources:
        return ""
    if running:
        return f"{size_text(resources.get('rss', 0))} · {resources.get('cpu', 0):.0f} %"
    return f"peak {size_text(resources.get('peak', 0))}"


def clock(seconds: float) -> str:
    """Seconds as a clock shows them: ``02:05``, ``1:02:05``."""
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
        if s >= 3600
        else f"{s // 60:02d}:{s % 60:02d}"
    )
