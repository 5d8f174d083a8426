"""Typed settings, logging set-up and the defaults for the local run."""

from config.settings import CelerySettings, RetrySettings, Settings, get_settings

__all__ = ["CelerySettings", "RetrySettings", "Settings", "get_settings"]
