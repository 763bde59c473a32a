"""The README's screenshots, taken as a user sees the UIs: after `flower-pipeline demo`, in headless Chromium.

Starts `dg dev` and `mlflow ui` on the project's instance and data, drives Chromium over its DevTools protocol
(dismissing Dagster's first-visit dialog as a person would) and writes docs/ui-*.png.

    apt-get install chromium && .venv/bin/flower-pipeline demo && .venv/bin/python docs/screenshots.py
"""

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import websockets

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAGSTER, MLFLOW, DEVTOOLS = 3456, 5456, 9333
PAGES = {
    "ui-lineage.png": f"http://127.0.0.1:{DAGSTER}/assets/registered_generator?view=lineage&lineageScope=upstream"
                      "&lineageDepth=6",
    "ui-evaluation.png": f"http://127.0.0.1:{DAGSTER}/assets/generator_evaluation?partition=arch1%7Csynthetic-color-32",
    "ui-registry.png": f"http://127.0.0.1:{MLFLOW}/#/models",
}
# First-visit dialogs and side panels, closed as a person would: Dagster's "Skip", MLflow's close buttons.
SKIP_DIALOG = """[...document.querySelectorAll('button')].filter(b => b.textContent.trim() === 'Skip'
                  || /close/i.test(b.getAttribute('aria-label') || '')).forEach(b => b.click())"""


def wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"error: {url} did not answer in {seconds:.0f} s") from None
            time.sleep(1)


async def shoot(pages: dict[str, str]) -> None:
    new_tab = urllib.request.Request(f"http://127.0.0.1:{DEVTOOLS}/json/new?about:blank", method="PUT")
    target = json.load(urllib.request.urlopen(new_tab, timeout=10))
    async with websockets.connect(target["webSocketDebuggerUrl"], max_size=64 << 20) as page:
        ids = iter(range(1, 10_000))

        async def call(method: str, **params: object) -> dict:
            number = next(ids)
            await page.send(json.dumps({"id": number, "method": method, "params": params}))
            while True:
                message = json.loads(await page.recv())
                if message.get("id") == number:
                    return message.get("result", {})

        await call("Emulation.setDeviceMetricsOverride", width=1500, height=950, deviceScaleFactor=1, mobile=False)
        for name, url in pages.items():
            await call("Page.navigate", url=url)
            await asyncio.sleep(8)  # the UIs load their data after the page
            await call("Runtime.evaluate", expression=SKIP_DIALOG)
            await asyncio.sleep(2)
            shot = await call("Page.captureScreenshot", format="png")
            image = cv2.imdecode(np.frombuffer(base64.b64decode(shot["data"]), np.uint8), cv2.IMREAD_COLOR)
            small = cv2.resize(image, (1000, round(image.shape[0] * 1000 / image.shape[1])),
                               interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(ROOT / "docs" / name), small, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            print(f"docs/{name}")


def main() -> None:
    env = {**os.environ, "DAGSTER_HOME": os.environ.get("DAGSTER_HOME", str(ROOT / "dagster_home")),
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    data = ROOT / "data"
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        servers = [
            subprocess.Popen([str(BIN / "dg"), "dev", "-p", str(DAGSTER)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
            subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{data / 'mlflow.db'}",
                              "-p", str(MLFLOW)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True),
            subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                              f"--remote-debugging-port={DEVTOOLS}", f"--user-data-dir={profile}", "about:blank"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
        ]
        try:
            for url in (f"http://127.0.0.1:{DAGSTER}/server_info", f"http://127.0.0.1:{MLFLOW}/health",
                        f"http://127.0.0.1:{DEVTOOLS}/json/version"):
                wait_for(url)
            asyncio.run(shoot(PAGES))
        finally:
            for server in servers:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)


if __name__ == "__main__":
    main()
