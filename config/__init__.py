"""Typed settings, logging set-up and the defaults for the local run.

Importing it switches off every library's downloads and telemetry in this
process (``config.offline``), before any of those libraries is imported.
"""

from config.offline import enforce_offline

enforce_offline()

from config.settings import CelerySettings, RetrySettings, Settings, get_settings  # noqa: E402

__all__ = ["CelerySettings", "RetrySettings", "Settings", "get_settings"]
