"""Small pieces every tab uses."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from app.access import Access, owner_of
from app.settings import ServeSettings
from core.errors import LampError

F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """A handler's LampError (bad input, missing artifact, ...) becomes a message in the page, not a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LampError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc

    return wrapper  # type: ignore[return-value]


def warn(message: str) -> str:
    return f"⚠ {message}" if message else ""


def keep_in_url(name: str) -> str:
    """Browser-side: put a component's value into the page's address as `?name=value` (a reload, a bookmark or a
    shared link opens the same thing again); no round trip to the server."""
    return f"""(value) => {{
  const url = new URL(window.location.href);
  if (value) {{ url.searchParams.set("{name}", String(value)); }} else {{ url.searchParams.delete("{name}"); }}
  window.history.replaceState(null, "", url);
  return value;
}}"""


def access_for(settings: ServeSettings, request: gr.Request | None) -> Access:
    """What this request's user may name on this server (its own uploads, the operator's folders)."""
    return Access(owner=owner_of(request), allowed_dirs=settings.allowed_dirs, limits=settings.limits)
