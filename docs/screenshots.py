"""Make the web UI's screenshots in docs/images/ (web-*.png): a small stored session, the real
server, Debian's Chromium through Playwright.

    python docs/screenshots.py            # from the repository, with the test extra installed
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))


def png(width: int, height: int) -> bytes:
    """A small gradient PNG (a stand-in for a captured image)."""
    import struct

    rows = b"".join(b"\0" + b"".join(bytes((x * 255 // width, y * 255 // height, 200)) for x in range(width))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def record(data: Path) -> None:
    """A session much like a morning's debugging of a shop's API."""
    import flowtap
    from flowtap.testing import make_flow

    os.environ["FLOWTAP_DATA_DIR"] = str(data)
    for name, host, count in (("login-flow", "auth.shop.example", 14),
                              ("nightly-sync", "sync.shop.example", 240)):
        earlier = flowtap.Capture({"session": {"name": name}}, load_entrypoints=False)
        earlier.start()
        for n in range(count):
            earlier.emit(make_flow(url=f"https://{host}/v2/items/{n}", method="POST" if n % 4 else "GET"))
        earlier.stop()
    capture = flowtap.Capture({"session": {"name": "checkout-bug"}}, load_entrypoints=False)
    capture.start()
    emit = capture.emit

    def paced(flow: flowtap.Flow) -> None:  # events are timed as the store gets them: let it catch up
        emit(flow)
        capture.dispatcher.sync(5)
        time.sleep(0.02)

    capture.emit = paced  # type: ignore[method-assign]
    api = "https://api.shop.example"
    cart = json.dumps({"id": "c-1042", "items": [{"sku": "TEA-01", "qty": 2, "price": 4.5},
                                                  {"sku": "MUG-07", "qty": 1, "price": 12.0}],
                       "total": 21.0, "currency": "EUR", "coupon": None}).encode()
    headers = [("Content-Type", "application/json"), ("Set-Cookie", "sid=8f2c1e; Path=/; HttpOnly; Secure"),
               ("Cache-Control", "no-store"), ("Vary", "Accept-Encoding"), ("Vary", "Cookie")]
    capture.emit(make_flow(url="https://shop.example/", response_body=b"<!doctype html><title>Shop</title>",
                           response_headers=[("Content-Type", "text/html; charset=utf-8")]))
    capture.emit(make_flow(url="https://shop.example/static/app.js", response_body=b"console.log(1)",
                           response_headers=[("Content-Type", "text/javascript")]))
    capture.emit(make_flow(url="https://cdn.shop.example/img/tea.png", response_body=png(96, 64),
                           response_headers=[("Content-Type", "image/png")]))
    capture.emit(make_flow(url=f"{api}/v1/session", method="POST", request_body='{"user": "ann"}',
                           response_body=b'{"ok": true}', response_headers=headers, duration=0.12))
    for n in range(3):
        capture.emit(make_flow(url=f"{api}/v1/products?page={n + 1}", response_body=b'{"products": []}'))
    capture.session.mark("opened the cart")
    capture.emit(make_flow(url=f"{api}/v1/cart", response_body=cart, response_headers=headers,
                           request_headers=[("Host", "api.shop.example"), ("Accept", "application/json"),
                                            ("Cookie", "sid=8f2c1e; theme=dark")], duration=0.08))
    capture.emit(make_flow(url=f"{api}/v1/cart/coupon", method="PUT", request_body='{"code": "TEA10"}',
                           status=422, response_body=b'{"error": "coupon expired"}'))
    capture.session.pause()
    capture.session.resume()
    capture.emit(make_flow(url=f"{api}/v1/checkout", method="POST", request_body='{"cart": "c-1042"}',
                           status=None, error="server disconnected before sending a response"))
    capture.emit(make_flow(url=f"{api}/v1/receipt.pdf", response_body=b"%PDF-1.7\n\x00\x01\x02\xff" * 20,
                           response_headers=[("Content-Type", "application/pdf")]))
    capture.stop()


def main() -> int:
    from playwright.sync_api import sync_playwright

    import flowtap
    from flowtap.config import Config
    from flowtap_web.server import WebServer

    from chromium import chromium_binary

    images = HERE / "images"
    images.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ftdocs-") as tmp:
        data = Path(tmp)
        record(data)
        with flowtap.open_store(data / "flowtap.db") as store:
            session = store.session("checkout-bug")
            rows = {row.path: row.id for row in store.rows(session=session)}
        server = WebServer(data / "flowtap.db", Config())
        url = server.start()
        base = url.split("/?")[0]
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium_binary())
                page = browser.new_page(viewport={"width": 1360, "height": 720})
                page.goto(url)
                page.wait_for_selector("#sessions a.open >> nth=2")
                page.screenshot(path=images / "web-sessions.png",
                                clip={"x": 0, "y": 0, "width": 1360, "height": 260})
                page.goto(f"{base}/#/s/{session.id}/f/{rows['/v1/cart']}")
                page.wait_for_selector("#response-body .json")
                page.screenshot(path=images / "web-session.png")
                page.goto(f"{base}/#/s/{session.id}/f/{rows['/img/tea.png']}")
                page.wait_for_selector("#response-body img.preview")
                page.wait_for_timeout(300)  # decoded
                page.fill("#filter", "~d api.shop.example & !~c 200")
                page.press("#filter", "Enter")
                page.wait_for_selector("#flows .row.flow >> nth=1")
                page.wait_for_timeout(500)
                page.screenshot(path=images / "web-filter.png")
                page.goto(f"{base}/#/s/{session.id}")
                page.click("#cookies")
                page.wait_for_selector("#detail .domain")
                page.screenshot(path=images / "web-cookies.png")
                browser.close()
        finally:
            server.stop()
    for shot in sorted(images.glob("web-*.png")):
        print(shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

