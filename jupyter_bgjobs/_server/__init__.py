"""The Jupyter server extension: the job store over jupyter_server's own REST API and auth.

Enabled by ``pip install`` alone (a config file in ``etc/jupyter/jupyter_server_config.d``
names it). It only reads the store and pushes its changes; starting a script job is the one
thing it does itself (``POST /bgjobs/api/jobs``, a detached job, as ``bgjobs run``).
"""

from __future__ import annotations

from typing import Any


def _load_jupyter_server_extension(server_app: Any) -> None:
    """Add the handlers under ``<base_url>/bgjobs/api/``."""
    from jupyter_server.utils import url_path_join

    from .routes import ROUTES

    web_app = server_app.web_app
    base = url_path_join(web_app.settings["base_url"], "bgjobs", "api")
    web_app.add_handlers(".*$", [(url_path_join(base, route), h) for route, h in ROUTES])
    server_app.log.info("jupyter_bgjobs: the job store is served at %s", base)
