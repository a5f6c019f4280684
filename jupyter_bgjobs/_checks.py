"""Checks of public arguments: each failure is one ``JobSpecError`` line that names the
argument, what it got, and what it takes, raised before anything is created."""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from ._errors import JobSpecError


def _got(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int of thousands of digits has no repr
        text = "a number of thousands of digits"
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def text(arg: str, value: Any, *, optional: bool = False, example: str = "") -> str | None:
    """A str (or None when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        hint = f", for example {example}" if example else ""
        none = " or None" if optional else ""
        raise JobSpecError(f"{arg} must be a string{none}{hint}, not {_got(value)}")
    return value


def path(arg: str, value: Any, *, optional: bool = False) -> str | None:
    """A str or os.PathLike, as a str."""
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        none = " or None" if optional else ""
        raise JobSpecError(f"{arg} must be a path (a str or pathlib.Path){none}, not {_got(value)}")
    return value


def flag(arg: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise JobSpecError(f"{arg} must be True or False, not {_got(value)}")
    return value


# No count, size or time of ours is larger: past it (10**30 seconds, say), clocks and
# dates overflow.
_LARGEST = 1e12


def number(
    arg: str,
    value: Any,
    *,
    minimum: float = 0.0,
    above: bool = False,
    integer: bool = False,
    unit: str = "",
    text: bool = False,
) -> float:
    """A finite real number (not a bool) >= ``minimum`` (> with ``above``); with
    ``text``, text that reads as one (a magic's option) is taken too."""
    kind = "a whole number" if integer else "a number"
    what = f"{kind}{' of ' + unit if unit else ''}"
    bound = f"{'more than' if above else 'at least'} {minimum:g}"
    allowed = (int, float, str) if text else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise JobSpecError(f"{arg} must be {what}, {bound}, not {_got(value)}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise JobSpecError(f"{arg} must be {what}, {bound}, not {_got(value)}") from None
    if math.isfinite(number) and abs(number) > _LARGEST:
        raise JobSpecError(f"{arg} must be at most {_LARGEST:g}, not {_got(value)}")
    if not math.isfinite(number):
        raise JobSpecError(
            f"{arg} must be a finite number{' of ' + unit if unit else ''}, not {value!r}; "
            "leave it out (None) for no limit"
            if arg in ("timeout", "timelimit")
            else f"{arg} must be a finite number, not {value!r}"
        )
    if (number <= minimum) if above else (number < minimum):
        raise JobSpecError(f"{arg} must be {what}, {bound}, not {value!r}")
    if integer and number != int(number):
        raise JobSpecError(f"{arg} must be a whole number, not {value!r}")
    return number


def timeout(arg: str, value: Any, *, text: bool = False) -> float | None:
    """None (no limit) or a positive, finite number of seconds (``text``: or text that
    reads as one, from a magic's options)."""
    if value is None:
        return None
    return number(arg, value, above=True, unit="seconds", text=text)


def memory(arg: str, value: Any) -> int:
    """0 (no limit), or bytes: a whole number, or text such as ``8G``, ``300MB``,
    ``1.5GiB``."""
    from ._usage import parse_size

    if value is None or value == 0:
        return 0
    if isinstance(value, str):
        size = parse_size(value)
        if size is None or size <= 0:
            raise JobSpecError(
                f"{arg} must be a size such as '8G', '300MB' or '1.5GiB' (or bytes), not {value!r}"
            )
        return size
    return int(number(arg, value, above=True, integer=True, unit="bytes"))


def choice(arg: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise JobSpecError(f"{arg} must be one of {', '.join(choices)}, not {_got(value)}")
    return value


def str_mapping(arg: str, value: Any, *, example: str) -> dict[str, str]:
    """None or a mapping of str to str (values are turned into text)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise JobSpecError(f"{arg} must be a dict, for example {example}, not {_got(value)}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise JobSpecError(f"{arg} keys must be strings, not {_got(key)}")
        if not isinstance(item, str):
            raise JobSpecError(f"{arg}[{key!r}] must be a string, not {_got(item)}")
        out[key] = str(item)
    return out


def callables(arg: str, value: Any) -> dict[str, Callable[[], Any]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and callable(v) for k, v in value.items()
    ):
        raise JobSpecError(
            f"{arg} must be a dict of names to functions, for example {{'stop': fn}}, "
            f"not {_got(value)}"
        )
    return dict(value)


_known_kernels: set[str] = set()


def kernelspec(name: str) -> str:
    """A local kernelspec that exists; else the list of those that do."""
    if name in _known_kernels:  # found once: not looked up again for every job
        return name
    from jupyter_client.kernelspec import KernelSpecManager

    try:
        specs = KernelSpecManager().find_kernel_specs()
    except Exception:  # a broken kernelspec folder must not stop the job here
        return name
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise JobSpecError(
            f"no kernelspec named {name!r}; the installed ones are: {known} "
            "(`jupyter kernelspec list` shows where they live)"
        )
    _known_kernels.add(name)
    return name


def gateway_url(url: str) -> str:
    """A gateway's base URL, checked for the form a gateway's URL has."""
    example = (
        "a URL must look like http://gateway.example.org:8888 "
        "(http or https, a host, an optional port and path)"
    )
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port
    except ValueError as exc:
        raise JobSpecError(f"gateway {url!r} is not a valid URL ({exc}); {example}") from None
    bad = ""
    if parsed.scheme not in ("http", "https"):
        bad = "it is not http:// or https://"
    elif not parsed.hostname:
        bad = "it has no host"
    elif any(c.isspace() for c in url):
        bad = "it contains spaces"
    elif parsed.query or parsed.fragment:
        bad = "it has a query or fragment"
    elif port == 0:
        bad = "port 0 is no port"
    if bad:
        raise JobSpecError(f"gateway {url!r} is not a gateway URL: {bad}; {example}")
    return url.rstrip("/")
