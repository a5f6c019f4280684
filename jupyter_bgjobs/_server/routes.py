"""Where each handler of the server extension answers, under ``<base_url>/bgjobs/api/``."""

from __future__ import annotations

from jupyter_server.base.handlers import APIHandler

from .handlers import _ID, CancelHandler, EventsHandler, JobHandler, JobsHandler, LogHandler
from .resume import ResumeHandler

ROUTES: list[tuple[str, type[APIHandler]]] = [
    ("jobs", JobsHandler),
    (f"jobs/{_ID}", JobHandler),
    (f"jobs/{_ID}/log", LogHandler),
    (f"jobs/{_ID}/cancel", CancelHandler),
    (f"jobs/{_ID}/resume", ResumeHandler),
    ("events", EventsHandler),
]
