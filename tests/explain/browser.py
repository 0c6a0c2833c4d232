"""Open a page in the system's Chromium (Debian's `chromium`, never a downloaded browser) through
Playwright and report what a reader would see: console errors, sections, images that decoded."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_missing_reason() -> str | None:
    if CHROMIUM is None:
        return "chromium is not installed (apt-get install -y chromium); the browser test needs it"
    try:
        import playwright  # noqa: F401
    except ModuleNotFoundError:
        return "playwright is not installed (pip install playwright; it drives the system chromium)"
    return None


def inspect_page(html_path: Path, screenshot: Path) -> dict:
    """Load `html_path` from disk with network requests refused; return console errors, failed or
    off-page requests, section ids, images with their decoded widths, and save a full-page screenshot."""
    from playwright.sync_api import sync_playwright

    errors, requests = [], []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=FLAGS[1:], viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(html_path.resolve().as_uri(), wait_until="load")
        sections = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
        images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        page.screenshot(path=str(screenshot), full_page=True)
        context.close()
    return {"errors": errors, "requests": requests, "sections": sections, "images": images}
