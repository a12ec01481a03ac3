"""The screenshots of docs/tracking.md: TensorBoard (scalars, HParams) and the MLflow UI showing a
batch, taken with Playwright driving Debian's Chromium (as tests/test_serve_browser.py does).

Start the two servers on a batch trained with `--log tensorboard --log mlflow` first:

    tensorboard --logdir runs/GROUP --host 127.0.0.1 --port 6006
    mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///runs/mlflow.db ...
    python scripts/tracking_screenshots.py --tensorboard http://127.0.0.1:6006 \
        --mlflow http://127.0.0.1:5000 --experiment 1 --out docs

The clicks follow the UIs of TensorBoard 2.21 and MLflow 3.17.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 760}
HPARAMS_SHOWN = ("layers.1.nodes", "learning_rate", "seed", "backend", "state")
COLOURS = 128  # a palette PNG: these UIs are flat colours, and docs/ keeps images small


def tensorboard(page: Page, url: str, out: Path) -> None:
    page.goto(f"{url}/#timeseries")
    page.wait_for_timeout(5000)
    page.get_by_role("button", name="Close side pane").click()  # the settings
    page.fill("input[placeholder='Filter tags (regex)']", "^(loss|accuracy)")
    page.keyboard.press("Escape")  # the filter's suggestions
    page.wait_for_timeout(2500)
    save(page, out / "tensorboard-batch.png")
    page.goto(f"{url}/#hparams")
    page.wait_for_timeout(5000)
    boxes = page.locator("paper-checkbox")  # hparams, then metrics, then session states
    names = [boxes.nth(i).inner_text().strip() for i in range(boxes.count())]
    for name in names:  # not final/..., not "Success"; the panel redraws after each click
        if name and "/" not in name and name[0].islower():
            box = boxes.filter(has_text=re.compile(f"^\\s*{re.escape(name)}\\s*$")).first
            if (box.get_attribute("aria-checked") == "true") != (name in HPARAMS_SHOWN):
                box.evaluate("box => box.click()")
                page.wait_for_timeout(100)
    page.wait_for_timeout(1500)
    save(page, out / "tensorboard-hparams.png")


def mlflow(page: Page, url: str, experiment: str, out: Path) -> None:
    page.goto(f"{url}/#/experiments/{experiment}/runs")
    page.wait_for_timeout(6000)
    page.get_by_role("button", name="Close").click()  # the assistant's panel
    page.get_by_role("button", name="Toggle sidebar").click()
    page.locator("button[data-component-id*=runnamecellrenderer]").first.click()  # expand
    page.locator("input[name=runs-view-mode][value=CHART]").dispatch_event("click")  # charts
    page.wait_for_timeout(3000)
    save(page, out / "mlflow-batch.png")


def save(page: Page, path: Path) -> None:
    page.screenshot(path=str(path))
    Image.open(path).convert("RGB").quantize(COLOURS).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensorboard", required=True, help="TensorBoard's URL")
    parser.add_argument("--mlflow", required=True, help="the MLflow server's URL")
    parser.add_argument("--experiment", default="1", help="the MLflow experiment's id")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        tensorboard(page, args.tensorboard, args.out)
        mlflow(page, args.mlflow, args.experiment, args.out)
        browser.close()


if __name__ == "__main__":
    main()
