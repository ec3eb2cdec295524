"""Server-sent events as the htmx SSE extension reads them: one named event
per message, its data the HTML to swap in."""

from __future__ import annotations

from markupsafe import Markup, escape


def event(name: str, html: str | Markup) -> str:
    # A data line may not hold a newline: each line of the payload is its own
    # `data:` line, and the browser joins them back with "\n".
    lines = str(html).split("\n")
    return f"event: {name}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


def text_event(name: str, text: str) -> str:
    """Plain text (model output) escaped, so it can never become markup."""
    return event(name, escape(text))


# Sent first so a proxy or browser shows the stream at once; also a comment
# line that EventSource ignores.
OPENING = ": stream open\n\n"
