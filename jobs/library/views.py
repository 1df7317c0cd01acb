"""Progress as a Python caller sees it: a notebook's display updated in place, a terminal's bar, plain lines.

The worker's watcher (on the portal) only keeps the latest snapshot; the caller's own thread shows it, because
a notebook attaches output to the cell of the thread that prints it.
"""

from __future__ import annotations

import html
import sys
import threading
from typing import Any, Literal

from rich.console import Console

from jobs.cli.progress import ProgressView, Snapshot, eta_text, note_of
from jobs.core.states import RequestStatus
from jobs.observation.standing import BatchSummary

__all__ = ["Progress", "ProgressKind", "SnapshotBox", "in_notebook", "progress_for"]

ProgressKind = Literal["auto", "notebook", "terminal", "plain", "none"]


class SnapshotBox:
    """The watcher's view on the portal: it keeps the latest snapshot for the caller to show."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._seen = 0
        self._version = 0
        self.last_summary: BatchSummary | None = None

    def __enter__(self) -> SnapshotBox:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def show(self, snap: Snapshot, final: bool = False) -> None:
        """Keep the snapshot (called on the portal)."""
        with self._lock:
            self._snap, self.last_summary = snap, snap.summary
            self._version += 1

    def take(self) -> Snapshot | None:
        """The snapshot not shown yet, if any (called by the caller's thread)."""
        with self._lock:
            if self._version == self._seen:
                return None
            self._seen = self._version
            return self._snap


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython is only looked at when already imported)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = getattr(ipython, "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _line(snap: Snapshot) -> str:
    summary = snap.summary
    failed = summary.counts.get(RequestStatus.FAILED, 0)
    done, total = snap.done, summary.total
    share = f" ({100 * done / total:.0f}%)" if total else ""
    rate = "" if snap.rate is None else f" · {snap.rate:.2f} req/s"
    return (
        f"{summary.id}: {summary.status} · {done}/{total}{share}{rate} · ETA {eta_text(snap)} · "
        f"${summary.cost:.4f} · {failed} failed"
    )


class Progress:
    """Shows the box's snapshots the chosen way, each time `tick()` is called."""

    def __init__(self, box: SnapshotBox, kind: ProgressKind) -> None:
        if kind == "auto":
            kind = "notebook" if in_notebook() else "terminal" if sys.stderr.isatty() else "plain"
        self.kind = kind
        self.box = box
        self._handle: Any = None
        self._rich: ProgressView | None = None

    def tick(self) -> None:
        """Show the latest snapshot, if there is a new one."""
        snap = self.box.take()
        if snap is None or self.kind == "none":
            return
        if self.kind == "notebook":
            self._notebook(snap)
            return
        if self._rich is None:
            self._rich = ProgressView(Console(stderr=True), snap.summary.id)
            self._rich.__enter__()
        self._rich.show(snap)

    def close(self) -> None:
        """Show the last snapshot and let go of the display."""
        self.tick()
        if self._rich is not None:
            self._rich.__exit__(None, None, None)
            self._rich = None

    def _notebook(self, snap: Snapshot) -> None:
        from IPython import display as ipython_display

        display: Any = ipython_display.display

        summary = snap.summary
        text = _line(snap)
        note = note_of(snap)
        plain = text + (f"\n{note}" if note else "")
        bar = f'<progress value="{snap.done}" max="{max(summary.total, 1)}" style="width:40%"></progress>'
        rich_html = (
            f"<div>{bar} <code>{html.escape(text)}</code>"
            + (f"<br><small>{html.escape(note)}</small>" if note else "")
            + "</div>"
        )
        bundle = {"text/plain": plain, "text/html": rich_html}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)


def progress_for(kind: ProgressKind | bool) -> tuple[SnapshotBox, Progress]:
    """The portal-side box and the caller-side display for a `progress=` argument (True: auto, False: none)."""
    chosen: ProgressKind = "auto" if kind is True else "none" if kind is False else kind
    box = SnapshotBox()
    return box, Progress(box, chosen)
