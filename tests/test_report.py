"""`report`: one static HTML page, checked as text and in a real headless browser (Debian's chromium,
driven over the DevTools protocol): it loads with no console error and no network request, and a class
filter changes the visible images."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from offline_seg.cli import main


@pytest.fixture(scope="module")
def report(prelabel_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = CliRunner().invoke(main, ["report", str(prelabel_run), "--gt", str(prelabel_run.parent / "gt"),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_report_is_self_contained(report):
    text = report.read_text()
    # nothing to fetch: every src is a data URI, no link but the empty icon, a CSP that forbids the rest
    assert re.findall(r'\bsrc="([^"]*)"', text) and all(s.startswith("data:image/jpeg;base64,")
                                                        for s in re.findall(r'\bsrc="([^"]*)"', text))
    assert re.findall(r"<link [^>]*>", text) == ['<link rel="icon" href="data:,">']
    assert "default-src 'none'" in text and "<script src" not in text
    assert report.stat().st_size < 2_000_000  # thumbnails, not the full images
    for part in ("plane", "walk", "Per-class IoU", "Confusion matrix", "broken", "cannot identify image",
                 "<th>segmenter</th>", "mIoU"):
        assert part in text, part


def test_report_without_ground_truth_sorts_by_score(prelabel_run, tmp_path):
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(prelabel_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert '<option value="score-desc">' in text and "iou-asc" not in text
    assert "Give <code>--gt DIR</code>" in text


def _miou(text: str) -> str:
    return re.search(r"mIoU ([0-9.]+|n/a) % over", text).group(1)


def test_report_scores_the_run_as_eval_does(tiny_weights, tmp_path):
    """Two of three ground-truth images were run: the report scores the third as all-background, as `eval`
    does (before, it left it out), and with the same options both agree again."""
    import numpy as np
    from PIL import Image

    source = tmp_path / "in"
    source.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(source / f"{name}.png")
    gt = tmp_path / "gt"
    gt.mkdir()
    for name in ("a", "b", "never_run"):  # VOC ids: dog on the left half, background on the right
        ids = np.zeros((30, 40), np.uint8)
        ids[:, :20] = 12
        Image.fromarray(ids, mode="L").save(gt / f"{name}.png")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(source), "--weights", str(tiny_weights), "--out", str(out),
                                       "--labels", "dog", "--points", "0"])
    assert result.exit_code == 0, result.output
    scores = {}
    for options in ([], ["--skip-missing"]):
        evaluated = CliRunner().invoke(main, ["eval", "--pred", str(out), "--gt", str(gt), "--out",
                                              str(tmp_path / "eval"), *options])
        assert evaluated.exit_code == 1 and "missing prediction: never_run" in evaluated.output
        page = tmp_path / "report.html"
        reported = CliRunner().invoke(main, ["report", str(out), "--gt", str(gt), "--out", str(page), *options])
        assert reported.exit_code == 0, reported.output
        text = page.read_text()
        assert _miou(text) == _miou(reported.output) == _miou(evaluated.output), (text, evaluated.output)
        assert "1 ground-truth image(s) without a prediction" in text and "(paper protocol)" in text
        scores[tuple(options)] = _miou(text)
    # the missing image does change the number: the check above can tell the two rules apart
    assert scores[()] != scores[("--skip-missing",)]


def test_eval_report_and_ablation_table_agree_under_both_cityscapes_protocols(tiny_weights, tmp_path):
    """One scoring function behind all three: for each protocol and missing-image policy, the `run
    --ablation` table, `report` and `eval` print the same mIoU of the same row, and say the protocol."""
    import numpy as np
    from PIL import Image

    source = tmp_path / "in"
    source.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(source / f"{name}_leftImg8bit.png")
    gt = tmp_path / "gt"
    gt.mkdir()
    for name in ("a", "b", "never_run"):  # labelIds: car on the left half, 0 "unlabeled" on the right
        ids = np.zeros((30, 40), np.uint8)
        ids[:, :20] = 26
        Image.fromarray(ids, mode="L").save(gt / f"{name}_gtFine_labelIds.png")
    out = tmp_path / "run"
    numbers = {}
    for protocol in ("paper", "standard"):
        for policy in ([], ["--skip-missing"]):
            options = ["--protocol", protocol, "--gt-suffix", "_gtFine_labelIds", "--pred-suffix", "_leftImg8bit",
                       *policy]
            ran = CliRunner().invoke(main, ["run", str(source), "--weights", str(tiny_weights), "--out", str(out),
                                            "--preset", "cityscapes", "--labels", "car", "--ablation", "no-points",
                                            "--gt", str(gt), *options])
            assert ran.exit_code == 0, ran.output
            note = "paper protocol" if protocol == "paper" else "standard protocol, background not scored"
            assert f"| mIoU % (ours, {note}) |" in ran.output
            row = next(line for line in ran.output.splitlines() if line.startswith("| no-points |"))
            table = row.split("|")[3].split("(")[0].strip()
            evaluated = CliRunner().invoke(main, ["eval", "--pred", str(out / "no-points"), "--gt", str(gt),
                                                  "--preset", "cityscapes", "--out", str(tmp_path / "eval"), *options])
            assert "missing prediction: never_run" in evaluated.output and f"({note})" in evaluated.output
            page = tmp_path / "report.html"
            reported = CliRunner().invoke(main, ["report", str(out / "no-points"), "--gt", str(gt), "--out",
                                                 str(page), *options])
            assert reported.exit_code == 0, reported.output
            assert table == _miou(evaluated.output) == _miou(page.read_text()), (row, evaluated.output)
            numbers[protocol, bool(policy)] = table
    assert len(set(numbers.values())) == 4, numbers  # each option changes the number: the checks can fail


# --- the browser ----------------------------------------------------------------------------------
def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "chromium is missing; `apt-get install chromium` (scripts/setup.sh does it as root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class DevTools:
    """The few DevTools-protocol calls the test needs, over one page's websocket."""

    def __init__(self, url: str):
        import websocket

        self.socket = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        call_id = next(self.ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(json.loads(self.socket.recv()))
        raise TimeoutError(method)

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre."""
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)


@pytest.fixture
def browser(tmp_path):
    chromium = _chromium()
    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--window-size=1280,1600", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()) and time.monotonic() < deadline:
            assert process.poll() is None, "chromium exited"
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        tools.socket.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_report_in_headless_chromium(report, browser, tmp_path):
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable")
    url = report.resolve().as_uri()
    browser.call("Page.navigate", url=url)
    browser.wait_for("Page.loadEventFired")

    errors = [e for e in browser.events
              if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert not errors, errors
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert requests and all(r == url or r.startswith("data:") for r in requests), requests

    shot = tmp_path / "report.png"
    shot.write_bytes(__import__("base64").b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))
    keep = os.environ.get("OFFLINE_SEG_SCREENSHOT")  # to look at it: OFFLINE_SEG_SCREENSHOT=/tmp/report.png
    if keep:
        shutil.copyfile(shot, keep)
    assert shot.stat().st_size > 10_000

    visible = "Array.from(document.querySelectorAll('.card')).filter(c => !c.hidden && c.offsetParent).map(c => c.dataset.name)"
    assert sorted(browser.evaluate(visible)) == ["plane", "walk"]
    # the thumbnails did load, from the page itself (Chromium may report data: URIs as requests or not)
    assert browser.evaluate("Array.from(document.querySelectorAll('.card img')).every(i => i.complete && i.naturalWidth > 0"
                            " && i.src.startsWith('data:image/jpeg'))")
    browser.click('button.filter[data-class="person"]')
    assert browser.evaluate(visible) == ["walk"]
    assert browser.evaluate("document.getElementById('shown').textContent") == "1 of 2 shown"
    browser.click('button.filter[data-class="aeroplane"]')
    assert browser.evaluate(visible) == ["plane"]
    browser.click('button.filter[data-class=""]')
    assert sorted(browser.evaluate(visible)) == ["plane", "walk"]
    # sorting by IoU reorders the gallery, low first
    order = browser.evaluate("(() => { const s = document.getElementById('sort'); s.value = 'iou-desc';"
                             " s.dispatchEvent(new Event('change')); return Array.from(document.querySelectorAll('.card'))"
                             ".map(c => parseFloat(c.dataset.iou)); })()")
    assert order == sorted(order, reverse=True)
    # nothing was fetched while the page was used either
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert all(r == url or r.startswith("data:") for r in requests), requests
