"""Word of a job's end wherever its user is: one message, by Apprise, to each target the
job (``--notify URL``) or ``configure(notify=[...])`` named: mail, chat, webhooks.

A target's URL often holds a secret (a password, a webhook's token): it is kept like the
gateway's token, never in a record, a log, a repr or a command line. What is said of a
target (in a refusal, or in the job's log when it could not be reached) is its scheme
and host only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._errors import JobSpecError

# The environment variable that hands a detached job's targets to its host (and that the
# host removes before it starts the job's kernel).
TARGETS_ENV = "JUPYTER_BGJOBS_NOTIFY"


def shown(url: str) -> str:
    """A target as it may be shown: its scheme and host, nothing that can be a secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "…"
    except ValueError:
        return "an unreadable URL"
    return f"{parts.scheme}://{host}" if parts.scheme else "a URL without a scheme"


def _apprise() -> Any:
    try:
        import apprise
    except ImportError:
        raise JobSpecError(
            "notifications (--notify URL) need the apprise package: pip install apprise"
        ) from None
    return apprise


def check_targets(arg: str, urls: Any, browser: bool = False) -> list[str]:
    """The notification targets, each one Apprise knows; a ``JobSpecError`` naming the
    one that is not (by its scheme and host) before anything is started. ``browser``: the
    setting, which also takes True or False."""
    if urls is None:
        return []
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, Sequence) or not all(isinstance(u, str) for u in urls):
        either = "True or False (a browser notification) or " if browser else ""
        raise JobSpecError(
            f"{arg} must be {either}a list of notification URLs, for example "
            "['mailto://user:password@example.org', 'json://hooks.example.org/jobs']"
        )
    if not urls:
        return []  # no target: Apprise (a fifth of a second to import) is not needed
    apprise = _apprise()
    for url in urls:
        if not apprise.Apprise().add(url):
            raise JobSpecError(
                f"{arg}: {shown(url)} is no notification target Apprise knows; write it as "
                "Apprise's URLs are written (mailto://, slack://, json://, ...)"
            )
    return list(urls)


def message(name: str, state: str, elapsed: str, peak: str, reason: str) -> tuple[str, str]:
    """The title and body of a job's end: its name, how it ended, how long it ran, the
    most memory it held, and the first line of why it ended."""
    how = state.replace("_", " ")
    body = f"{name} {how} after {elapsed}"
    if peak:
        body += f"; its memory peaked at {peak}"
    first = reason.strip().splitlines()[0] if reason.strip() else ""
    if first:
        body += f"; {first}"
    return f"Background job {name} {how}", body


def send(urls: list[str], title: str, body: str, note: Callable[[str], None]) -> threading.Thread:
    """Send the message to every target, in a thread of its own (the job's end does not
    wait for a mail server); a target that cannot be reached is said through ``note`` (the
    job's log) and changes nothing else. A process that ends right after the job (a
    detached job's host, a kernel shut down) calls ``finish_sending`` first."""

    def deliver() -> None:
        try:
            apprise = _apprise()
        except JobSpecError as exc:
            note(f"[jupyter_bgjobs: no notification sent: {exc}]\n")
            return
        for url in urls:
            sender = apprise.Apprise()
            try:
                sent = sender.add(url) and sender.notify(title=title, body=body)
            except Exception as exc:  # a plugin's fault must not reach the job
                sent = False
                why = f": {type(exc).__name__}"
            else:
                why = ""
            if not sent:
                note(f"[jupyter_bgjobs: the notification to {shown(url)} could not be sent{why}]\n")

    thread = threading.Thread(target=deliver, name="bgjobs-notify")
    thread.start()
    with _lock:
        _sending[:] = [t for t in _sending if t.is_alive()] + [thread]
    return thread


_sending: list[threading.Thread] = []
_lock = threading.Lock()


def finish_sending(timeout: float = 60.0) -> None:
    """Wait (up to ``timeout`` seconds in all) for the messages under way: a process that
    ends right after a job (a detached job's host, a kernel shut down) sends them first,
    while the interpreter can still run them."""
    import time

    deadline = time.monotonic() + timeout
    with _lock:
        pending = list(_sending)
    for thread in pending:
        thread.join(max(0.0, deadline - time.monotonic()))


def tell_end(
    targets: list[str],
    name: str,
    state: str,
    elapsed: float,
    resources: dict[str, Any],
    reason: str,
    log: Path,
) -> None:
    """A job's or a call's end, to ``targets``; one that cannot be reached is a line
    appended to ``log`` (its own file, never through a link), and its outcome stays."""
    import os

    from ._text import clock
    from ._usage import size_text

    def note(text: str) -> None:
        try:
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            with open(fd, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError:  # a full or read-only disk: the note is lost, not the job
            pass

    peak = resources.get("peak")
    title, body = message(name, state, clock(elapsed), size_text(peak) if peak else "", reason)
    send(list(targets), title, body, note)
