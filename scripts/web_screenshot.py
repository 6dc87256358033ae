"""The README's picture of the web page: a search of one mark, in headless Chromium.

    python scripts/web_screenshot.py --server 127.0.0.1:50051 --image samples/queries/q00021.png \
        --out docs/web.png
"""
from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from client.api import SearchClient  # noqa: E402
from client.web.serve import make_server  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", required=True)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("docs/web.png"))
    args = p.parse_args(argv)
    with SearchClient(args.server) as client:
        server = make_server(client, "127.0.0.1", 0)
        threading.Thread(target=server.run, daemon=True).start()
        while server.url is None:
            time.sleep(0.05)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(server.url)
            page.set_input_files("#image", str(args.image))
            page.locator("#k").fill(str(args.k))
            page.get_by_role("button", name="Search", exact=True).click()
            expect(page.locator("#verdict")).to_be_visible()
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        server.should_exit = True
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
