"""Drive a viser (1.1.x) web client in headless Chromium from pytest.

Typical use::

    from browser import browser_page, fill_text, wait_until

    with browser_page(f"http://127.0.0.1:{port}/") as page:  # waits for the websocket
        fill_text(page, "Prompt", "chair")
        wait_until(lambda: seen == ["chair"], 10, "Prompt on_update")

Each page lives in its own browser context (no shared storage), so ``browser_pages(url, 3)``
gives three independent viser clients. The GUI helpers find an element by the label text viser
shows beside it; viser 1.1.1's text-input ``<label for=...>`` does not point at its ``<input>``,
so ``page.get_by_label`` does not work and the row is found by XPath instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

CHROMIUM = "/usr/bin/chromium"
REQUIRE_ENV = "FEATURE_SPLAT_REQUIRE_BROWSER"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
GUI_SEND_GAP_S = 0.06
"""Pause after each GUI action. viser 1.1.1 sends all GUI updates through one 50 ms throttle that
keeps only the newest pending message, so two changes (to any inputs) within 50 ms of a third
lose the middle one. Scene clicks have their own 20 ms throttle."""
CANVAS = 'canvas[data-engine^="three.js"]'
"""The three.js canvas viser renders the scene into (a second, 0x0 overlay canvas also exists)."""

# CSS injected while taking a canvas screenshot: hide every overlay (control panel, notifications,
# ...) but keep the canvas itself visible. `visibility` is inherited but a child may override it.
_ONLY_CANVAS_CSS = (
    f"body * {{ visibility: hidden !important; }} {CANVAS} {{ visibility: visible !important; }}"
)


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def _skip_or_fail(reason: str) -> None:
    if _required():
        pytest.fail(f"{reason}, but {REQUIRE_ENV} is set, so a browser is required", pytrace=False)
    pytest.skip(f"{reason}; browser test skipped")


def chromium_or_skip() -> str:
    """Return the Chromium path, or skip the test when Chromium or playwright is missing.

    When the environment variable FEATURE_SPLAT_REQUIRE_BROWSER is set (and not "0"), as in CI,
    the test fails instead of skipping.
    """
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _skip_or_fail("Python package playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        _skip_or_fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for ``viser.ViserServer(port=...)``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll a server-side ``predicate`` every 20 ms; raise AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what or predicate}")
        time.sleep(0.02)


@contextlib.contextmanager
def browser_pages(
    url: str,
    count: int = 1,
    *,
    width: int = 900,
    height: int = 700,
    timeout_s: float = 30.0,
    connect: bool = True,
    gui_label: str | None = None,
) -> Iterator[list[Page]]:
    """Launch headless Chromium and open ``count`` pages at ``url``, each in its own context.

    Playwright's ``launch()`` gives the browser a fresh temporary profile and deletes it on close
    (it rejects ``--user-data-dir`` in ``args``); HOME and the XDG config/cache dirs point into a
    temp dir of ours, removed on exit. With ``connect`` every page is waited on with
    :func:`wait_for_connection` (``gui_label``: see there). ``timeout_s`` is also the default
    timeout of every Playwright call on these pages. viser switches to its mobile layout at
    widths up to Mantine's ``xs`` breakpoint (576 px), which these helpers were not checked on.
    """
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    tmp = tempfile.mkdtemp(prefix="viser-chromium-")
    env = {**os.environ, "HOME": tmp, "XDG_CONFIG_HOME": tmp, "XDG_CACHE_HOME": tmp}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, env=env
            )
            try:
                pages = []
                for _ in range(count):
                    context = browser.new_context(viewport={"width": width, "height": height})
                    context.set_default_timeout(timeout_s * 1000)
                    page = context.new_page()
                    page.goto(url)
                    pages.append(page)
                if connect:
                    for page in pages:
                        wait_for_connection(page, timeout_s, gui_label)
                yield pages
            finally:
                browser.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def browser_page(
    url: str,
    *,
    width: int = 900,
    height: int = 700,
    timeout_s: float = 30.0,
    connect: bool = True,
    gui_label: str | None = None,
) -> Iterator[Page]:
    """One page at ``url``; arguments as for :func:`browser_pages`."""
    with browser_pages(
        url,
        1,
        width=width,
        height=height,
        timeout_s=timeout_s,
        connect=connect,
        gui_label=gui_label,
    ) as pages:
        yield pages[0]


def wait_for_connection(page: Page, timeout_s: float = 30.0, gui_label: str | None = None) -> None:
    """Wait until the viser client is connected and its three.js canvas has a size.

    Without ``gui_label`` "connected" means the panel title reads "Connected" (it reads
    "Connecting..." while the websocket is down; a ``server.gui.set_panel_label`` text replaces
    it, so pass ``gui_label`` then). With ``gui_label`` wait for that GUI element instead, i.e.
    for the server's ``on_client_connect`` to have added it.
    """
    timeout_ms = timeout_s * 1000
    if gui_label is None:
        status = page.get_by_text("Connected", exact=True).filter(visible=True).first
        status.wait_for(state="visible", timeout=timeout_ms)
    else:
        gui_input(page, gui_label).wait_for(state="visible", timeout=timeout_ms)
    page.wait_for_function(
        f"() => {{ const c = document.querySelector('{CANVAS}'); return c && c.width > 0; }}",
        timeout=timeout_ms,
    )


def _xpath_literal(text: str) -> str:
    if '"' not in text:
        return f'"{text}"'
    if "'" not in text:
        return f"'{text}'"
    return "concat(" + ", '\"', ".join(f'"{part}"' for part in text.split('"')) + ")"


def gui_input(page: Page, label: str) -> Locator:
    """The visible ``<input>`` (``<textarea>`` if multiline) of the labelled viser GUI row:
    text, number, dropdown, ... The label is matched exactly (whitespace-normalised)."""
    row = (
        f"//label[normalize-space(.)={_xpath_literal(label)}]"
        "/ancestor::div[contains(concat(' ', @class, ' '), ' mantine-Flex-root ')][1]"
        "//*[self::input[not(@type='hidden')] or self::textarea]"
    )
    return page.locator(f"xpath={row}").filter(visible=True).first


def fill_text(page: Page, label: str, value: str, *, submit: bool = False) -> None:
    """Replace the text of the labelled viser text input; the server's ``on_update`` fires once.

    viser 1.1.1 sends the value on every change (one message for ``fill``), so neither Enter nor
    blur is needed; filling in the value already shown sends nothing. ``submit`` presses Enter
    too, which submits an enclosing ``gui.add_form``.
    """
    field = gui_input(page, label)
    field.fill(value)
    if submit:
        field.press("Enter")
    page.wait_for_timeout(GUI_SEND_GAP_S * 1000)


def click_button(page: Page, label: str) -> None:
    """Click the visible viser GUI button whose text is ``label``."""
    page.get_by_role("button", name=label, exact=True).filter(visible=True).first.click()
    page.wait_for_timeout(GUI_SEND_GAP_S * 1000)


def select_dropdown(page: Page, label: str, option: str) -> None:
    """Choose ``option`` in the labelled viser dropdown (a Mantine Select)."""
    gui_input(page, label).click()
    page.get_by_role("option", name=option, exact=True).filter(visible=True).first.click()
    page.wait_for_timeout(GUI_SEND_GAP_S * 1000)


def gui_text_value(page: Page, label: str) -> str:
    """The value now shown in the labelled input (e.g. a ``disabled=True`` text used as output)."""
    return gui_input(page, label).input_value()


def wait_for_gui_value(page: Page, label: str, expected: str, timeout_s: float = 10.0) -> None:
    """Wait until the labelled input shows ``expected`` (server-side updates arrive async)."""
    from playwright.sync_api import expect

    expect(gui_input(page, label)).to_have_value(expected, timeout=timeout_s * 1000)


def dismiss_notifications(page: Page) -> None:
    """Close the toasts viser shows top left (e.g. "Software WebGL rendering detected")."""
    buttons = page.locator(".mantine-Notification-closeButton").filter(visible=True)
    for _ in range(buttons.count()):
        buttons.first.click()


def canvas_screenshot(page: Page) -> np.ndarray:
    """The 3D canvas as an HxWx3 uint8 array, with the control panel and toasts hidden."""
    from PIL import Image

    png = page.locator(CANVAS).screenshot(style=_ONLY_CANVAS_CSS, animations="disabled")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def click_canvas(page: Page, fx: float, fy: float) -> None:
    """Click the 3D canvas at fraction (``fx``, ``fy``) of its width and height, (0, 0) top left.

    ``server.scene.on_click`` receives ``screen_pos`` ~= (fx, fy) (pixel centre: +0.5 px).
    Raises if another element (the control panel top right, a toast top left) covers that point,
    since the click would land there instead. Only registered with a scene click callback does
    the client send clicks at all.
    """
    box = page.locator(CANVAS).bounding_box()
    assert box is not None, "viser canvas not found or not visible"
    x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
    hit = page.evaluate(
        f"([x, y]) => document.elementFromPoint(x, y)?.matches('{CANVAS}') ?? false", [x, y]
    )
    if not hit:
        raise AssertionError(
            f"canvas point ({fx:g}, {fy:g}) = ({x:.0f}, {y:.0f}) px is covered by another element "
            "(control panel top right, toasts top left: see dismiss_notifications)"
        )
    page.mouse.click(x, y)
    page.wait_for_timeout(GUI_SEND_GAP_S * 1000)
