"""Credentials never reach a message: every text the CLI prints passes through :func:`redact`."""

from __future__ import annotations

import os
import re

# MLflow 3's own default store; MLFLOW_TRACKING_URI (a team server) wins when set.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def redact(text: str) -> str:
    """``text`` with the credentials of any URI in it (user:password@, token=...) replaced by ***."""
    text = re.sub(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s'\"]+@", r"\1***@", text)
    return re.sub(r"(?i)\b(password|passwd|pwd|token|secret|key|api_key|access_key)=[^&\s'\"]+", r"\1=***", text)


def tracking_uri_shown() -> str:
    """The tracking store's URI as it may be printed (credentials redacted)."""
    return redact(os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
