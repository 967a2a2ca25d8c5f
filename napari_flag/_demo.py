"""``napari-flag demo``: a HER2ST section in napari with every widget docked,
ready to press Predict with the bundled model.

The window is laid out for a 1080p screen: it fills the screen, the docks sit
in two tab groups on the right (Predict | Train over Gene maps | Metrics |
Moran's I | Export, Gene maps in front) and every dock scrolls instead of
forcing the window's height, so the canvas keeps most of the width.
"""
from __future__ import annotations

import os
import sys

__all__ = ["run_demo", "DEMO_WIDGETS", "qt_problem", "docked_widget", "layout_demo"]

#: (display name in napari.yaml, short tab title, tabify with the previous dock)
DEMO_WIDGETS = (
    ("Predict expression", "Predict", False),
    ("Train FLAG", "Train", True),
    ("Gene maps", "Gene maps", False),
    ("Metrics", "Metrics", True),
    ("Moran's I", "Moran's I", True),
    ("Regions", "Regions", True),
    ("Export", "Export", True),
)
#: the tab in front of each group
FRONT = ("Predict expression", "Gene maps")
#: width of the right-hand docks: room for the tab titles and the forms, less on small screens
DOCK_WIDTH = (380, 430)


def _innermost(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


#: Qt's own diagnostics, most specific first (Qt prints them, then aborts); Qt
#: names libxcb-cursor0 whenever xcb fails, so that hint is checked separately
_QT_HINTS = (
    "could not connect to display",
    "xcb-cursor0 or libxcb-cursor0 is needed",
    "Could not find the Qt platform plugin",
    "Could not load the Qt platform plugin",
    "This application failed to start",
)


def _missing_xcb_cursor() -> bool:
    from ctypes.util import find_library

    return sys.platform.startswith("linux") and find_library("xcb-cursor") is None


def qt_problem(probe: bool = True) -> str | None:
    """Why napari cannot open a window here, in one line; ``None`` when it can.

    The Qt binding is imported here; the platform plugin is tried in a child
    process (``probe``), because a missing system library or display makes Qt
    abort the process with its reason on stderr rather than raise.
    """
    try:
        from qtpy import QtWidgets  # noqa: F401
    except Exception as exc:  # ImportError from qtpy or from the binding's own libraries
        inner = _innermost(exc)
        return f"no usable Qt binding ({_first_line(str(inner)) or type(inner).__name__}); pip install PyQt6"
    from qtpy.QtWidgets import QApplication

    if not probe or QApplication.instance() is not None:
        return None
    import subprocess

    code = "from qtpy.QtWidgets import QApplication; QApplication([])"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None  # cannot tell: let napari try
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    for hint in _QT_HINTS:
        if "xcb-cursor" in hint and not _missing_xcb_cursor():
            continue
        for ln in lines:
            if hint.lower() in ln.lower():
                msg = ln.split(": ", 1)[1].strip() if ln.startswith("qt.qpa") and ": " in ln else ln
                if "xcb-cursor" in hint:
                    msg += " (apt-get install libxcb-cursor0)"
                elif "display" in hint:
                    msg += " (no display: run on a desktop or under xvfb-run)"
                return f"Qt cannot open a window: {msg}"
    return f"Qt cannot open a window: {lines[-1] if lines else f'exit status {proc.returncode}'}"


def prefer_pyqt6() -> None:
    """Use PyQt6 when installed and nothing chose a binding yet: napari deprecates
    PyQt5 and says so in a notification that covers the canvas."""
    if "QT_API" in os.environ or "qtpy" in sys.modules:
        return
    from importlib.util import find_spec

    if find_spec("PyQt6") is not None:
        os.environ["QT_API"] = "pyqt6"


def _dock(viewer, name: str):
    from qtpy.QtWidgets import QDockWidget

    for title, dock in viewer.window._wrapped_dock_widgets.items():
        if title.startswith(name) and isinstance(dock, QDockWidget):
            return dock
    raise KeyError(name)


def docked_widget(viewer, name: str):
    """The napari-flag widget docked as ``name`` (e.g. ``"Gene maps"``)."""
    return _dock(viewer, name).inner_widget()


def _scrollable(dock) -> None:
    """Put the dock's widget in a scroll area, so its height never sets the window's.

    ``viewer.window.dock_widgets`` still hands out the widget itself (napari
    looks for ``_magic_widget`` on the dock's child).
    """
    from qtpy.QtWidgets import QFrame, QScrollArea

    inner = dock.widget()
    if isinstance(inner, QScrollArea):
        return
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setMinimumHeight(120)
    dock.setWidget(scroll)
    scroll.setWidget(inner)
    scroll._magic_widget = getattr(inner, "_magic_widget", inner)


def layout_demo(viewer, screen=None) -> None:
    """Fit the window to ``screen`` (its available area; default: the window's
    screen) and share the height between the two dock groups."""
    from qtpy.QtCore import Qt

    win = viewer.window._qt_window
    win.layout().invalidate()
    scr = screen or win.screen()
    avail = scr.availableGeometry()
    win.setGeometry(avail)
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()  # docks are sized against the final window size
    docks = [_dock(viewer, n) for n in FRONT]
    width = max(DOCK_WIDTH[0], min(DOCK_WIDTH[1], int(0.24 * avail.width())))
    win.resizeDocks(docks, [width] * len(docks), Qt.Orientation.Horizontal)
    want = docks[0].widget().widget().sizeHint().height() + 80  # the Predict form and its status line
    top = min(max(want, 260), int(avail.height() * 0.45))
    win.resizeDocks(docks, [top, max(avail.height() - top, 300)], Qt.Orientation.Vertical)
    for name in FRONT:
        d = _dock(viewer, name)
        d.show()
        d.raise_()


def run_demo(sample: str = "her2st:C2", viewer=None, run: bool = True):
    """Open ``sample`` (dataset id or path) from the dataset cache and dock the widgets.

    Returns the viewer.  A slide that cannot be read (not cached, no network)
    is reported as a notification; the widgets are docked anyway.  ``run=False``
    returns without entering the Qt event loop (scripts, tests).
    """
    import napari
    from napari.layers import Layer

    from ._reader import read_slides
    from .widgets.lookup import focus_on_spots, show_scale_bar

    v = viewer if viewer is not None else napari.Viewer(title=f"napari-flag — {sample}")
    for t in read_slides(sample):
        if t[0] is not None:
            v.add_layer(Layer.create(*t))
    prev = None
    for name, title, tab in DEMO_WIDGETS:
        dock = v.window.add_plugin_dock_widget("napari-flag", name)[0]
        dock.setWindowTitle(title)  # the tab's label; the full name stays in the Window menu
        _scrollable(dock)  # while still shown: a hidden tab would keep its old minimum height
        if tab and prev is not None:
            v.window._qt_window.tabifyDockWidget(prev, dock)
        prev = dock
    layout_demo(v)
    show_scale_bar(v)
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()  # the canvas takes its laid-out size before the view is fitted
    focus_on_spots(v)
    if run:
        napari.run()
    return v
