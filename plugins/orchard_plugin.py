"""Orchard as an Airflow plugin: an "Orchard report" tab on the DAG run page, backed by a FastAPI app.

Airflow imports this file in every process that loads plugins, task processes included, so the app
(FastAPI and Airflow's API security, ~0.7 s of imports) is only built when the api-server asks for it.
The `orchard` package beside this file is a library, not plugins: .airflowignore keeps the plugin
loader out of it.
"""

from __future__ import annotations

import functools
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/orchard"


class OrchardPlugin(AirflowPlugin):
    """The run report as a tab of every DAG run page; the app answers for fruits_pipeline runs."""

    name = "orchard"
    # A class attribute, as AirflowPlugin declares it (a ClassVar would not override its type).
    external_views = [  # ruff: ignore[mutable-class-default]
        {
            "name": "Orchard report",
            # The UI fills in the run's DAG id and run id (URI-encoded).
            "href": URL_PREFIX + "/runs/{DAG_ID}/{RUN_ID}/",
            "destination": "dag_run",
            "url_route": "orchard-report",
        }
    ]

    @functools.cached_property
    def fastapi_apps(self) -> list[Any]:  # type: ignore[override]
        """The report app, mounted by the api-server under /orchard."""
        # Deferred: the api-server only (docstring).
        from orchard.report.app import create_app  # ruff: ignore[import-outside-top-level]

        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Orchard report"}]
