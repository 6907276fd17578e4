"""Small pieces every tab uses."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from app.access import Access, owner_of
from app.settings import ServeSettings
from core.errors import LampError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("app")
UNEXPECTED = "Something went wrong on the server ({kind}); it is in the server's log. Try again, or reload the page."


def friendly(fn: F) -> F:
    """A handler's LampError (bad input, missing artifact, ...) becomes its message in the page; any other error
    a short line in the page and the whole traceback in the server's log, never a raw exception text."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except LampError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc
        except Exception as exc:
            log.exception("handler %s failed", getattr(fn, "__qualname__", fn))
            raise gr.Error(UNEXPECTED.format(kind=type(exc).__name__), print_exception=False) from exc

    return wrapper  # type: ignore[return-value]


def guard_handlers(ui: gr.Blocks) -> int:
    """Every plain (not generator, not async) event handler of the page wrapped by `friendly`; returns how many.
    The wrapper keeps the handler's signature (gr.Request parameters are found through it)."""
    count = 0
    for block_fn in ui.fns.values():
        fn = block_fn.fn
        if fn is None or inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn) \
                or inspect.isasyncgenfunction(fn) or getattr(fn, "_lamp_guarded", False):
            continue
        guarded = friendly(fn)
        guarded._lamp_guarded = True  # type: ignore[attr-defined]
        block_fn.fn = guarded
        count += 1
    return count


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
