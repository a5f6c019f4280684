"""Authorizers a test server is started with (``--ServerApp.authorizer_class``), as
jupyter_server's own tests do: each allows some actions and writes down every question
it is asked, so a test sees which resource and action each request asked for."""

from __future__ import annotations

import os
from typing import Any

from jupyter_server.auth.authorizer import Authorizer


class ActionsAuthorizer(Authorizer):  # type: ignore[misc]
    """Allows the actions listed in ``$BGJOBS_TEST_ALLOW`` (comma-separated) on every
    resource; appends ``RESOURCE ACTION`` to ``$BGJOBS_TEST_ASKED`` for each question."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        with open(os.environ["BGJOBS_TEST_ASKED"], "a", encoding="utf-8") as fh:
            fh.write(f"{resource} {action}\n")
        return action in os.environ.get("BGJOBS_TEST_ALLOW", "").split(",")
