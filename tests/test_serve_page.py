"""The search page (GET /) end to end in a headless Chromium against a live server: text,
image (file picker), composed (drag and drop + the text-weight slider) queries give the
in-process Retriever's hits in score order; a bad image shows the API's error message and
no cards; with an API key the page asks for it and then searches.

Needs Playwright's Python package and a Chromium binary (Debian's `chromium`, or the path
in CLIPRT_CHROMIUM); skipped without them, failed without them under CLIPRT_REQUIRE_BROWSER=1
(as in CI). CLIPRT_SAVE_SCREENSHOT=1 rewrites benchmarks/results/serve_page.png."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest


def _missing(reason: str) -> None:
    """Skips the module, or fails it where the browser test must run (CI sets CLIPRT_REQUIRE_BROWSER=1)."""
    if os.environ.get("CLIPRT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"CLIPRT_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


for _module, _extra in (("fastapi", "serve"), ("uvicorn", "serve"), ("playwright.sync_api", "serve-test")):
    try:
        __import__(_module)
    except ImportError:
        _missing(f"{_module.split('.')[0]} is not installed (the '{_extra}' extra)")


def _chromium():
    for path in (os.environ.get("CLIPRT_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                 "/usr/bin/chromium"):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


CHROMIUM = _chromium()
if CHROMIUM is None:
    _missing("no Chromium binary (apt-get install chromium, or set CLIPRT_CHROMIUM)")

from PIL import Image, ImageDraw  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import _live_server  # noqa: E402
import _tiny_clip  # noqa: E402
from cliprt.collection import Collection  # noqa: E402
from cliprt.encode import Encoder  # noqa: E402
from cliprt.retrieval import Retriever  # noqa: E402
from cliprt.serve import ServeConfig, create_app  # noqa: E402

KEY = "page-test-key"
K = 10
SCREENSHOT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "serve_page.png")
COLORS = {"red": (215, 48, 39), "green": (26, 152, 80), "blue": (49, 104, 189), "orange": (244, 150, 40)}
SHAPES = ("circle", "square", "stripes")


def _png(color, shape, i) -> bytes:
    img = Image.new("RGB", (64 + 4 * i, 48 + 2 * i), (245, 242, 235))
    d = ImageDraw.Draw(img)
    w, h = img.size
    if shape == "circle":
        d.ellipse((w * .2, h * .15, w * .8, h * .85), fill=color)
    elif shape == "square":
        d.rectangle((w * .25, h * .2, w * .75, h * .8), fill=color)
    else:
        for x in range(0, w, 10):
            d.rectangle((x, 0, x + 4, h), fill=color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    enc = Encoder.load(_tiny_clip.exported(tmp_path_factory, precisions=("fp32",))[1])
    items = [(c, s) for s in SHAPES for c in COLORS]           # 12 images
    images = [_png(COLORS[c], s, i) for i, (c, s) in enumerate(items)]
    d = tmp_path_factory.mktemp("page") / "col"
    with Collection.create(d, model="tiny", dim=enc.dim) as col:
        ids = col.add(enc.encode_images(images),
                      [{"key": f"k{i}", "path": f"/photos/{s}/{c}-{i}.png", "size": len(images[i]),
                        "meta": {"label": f"{c} {s}", "n": i}} for i, (c, s) in enumerate(items)])
        col.commit()
    reader = Collection.open(d)
    config = ServeConfig(max_wait_ms=2, timeout_s=60)
    with _live_server.serving(create_app(encoder=enc, store=reader, config=config)) as url, \
            _live_server.serving(create_app(encoder=enc, store=reader, config=config, api_key=KEY)) as url_key:
        yield {"images": images, "ids": [int(i) for i in ids], "retriever": Retriever(enc, reader),
               "url": url, "url_key": url_key}


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1180, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(15000)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# ------------------------------------------------------------------------- helpers
def _search(pg) -> str:
    """Clicks Search and waits for that search to finish; returns the results' state."""
    seq = int(pg.locator("#results").get_attribute("data-seq"))
    pg.get_by_role("button", name="Search").click()
    pg.wait_for_function("s => { const r = document.getElementById('results');"
                         " return Number(r.dataset.seq) > s && r.dataset.state !== 'loading'; }", arg=seq)
    return pg.locator("#results").get_attribute("data-state")


def _cards(pg):
    return pg.eval_on_selector_all(
        "#results .card", "els => els.map(e => ({id: Number(e.dataset.id), score: Number(e.dataset.score),"
                          " text: e.innerText}))")


def _same_hits(cards, want):
    assert [c["id"] for c in cards] == [h.id for h in want]
    np.testing.assert_allclose([c["score"] for c in cards], [h.score for h in want], atol=1e-6)
    scores = [c["score"] for c in cards]
    assert scores == sorted(scores, reverse=True)
    for c, h in zip(cards, want):       # the card shows its score, path and label
        assert f"{h.score:.4f}" in c["text"]
        assert h.metadata["path"] in c["text"] and h.metadata["meta"]["label"] in c["text"]


def _open(pg, url):
    pg.goto(url + "/")
    expect(pg.locator("#model")).to_contain_text("12 items")   # /v1/models answered


def _upload(pg, name, data):
    pg.locator("#file").set_input_files({"name": name, "mimeType": "image/png", "buffer": data})
    expect(pg.locator("#file-name")).to_have_text(name)


# ------------------------------------------------------------------------- tests
def test_text_query(world, page):
    _open(page, world["url"])
    expect(page.locator("#auth")).to_be_hidden()
    page.get_by_label("Query").fill("a red circle -stripes")
    page.get_by_label("Results", exact=True).fill(str(K))
    assert _search(page) == "done"
    _same_hits(_cards(page), world["retriever"].search_text("a red circle -stripes", k=K))
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#status")).to_contain_text(f"{K} results")
    expect(page.locator("#alpha")).to_be_disabled()        # no image: no composed query
    # the cards keep their placeholder when the service has no thumbnails for them
    assert page.locator("#results .card .thumb").count() == K


def test_image_query_by_file_picker(world, page):
    _open(page, world["url"])
    page.get_by_label("Results", exact=True).fill(str(K))
    _upload(page, "photo.png", world["images"][7])
    expect(page.locator("#preview")).to_be_visible()
    assert _search(page) == "done"
    cards = _cards(page)
    _same_hits(cards, world["retriever"].search_image(world["images"][7], k=K))
    assert cards[0]["id"] == world["ids"][7] and abs(cards[0]["score"] - 1.0) < 1e-4


def test_composed_query_by_drop_and_slider(world, page):
    _open(page, world["url"])
    page.get_by_label("Results", exact=True).fill(str(K))
    data = base64.b64encode(world["images"][4]).decode()
    page.evaluate("""b64 => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        const drop = document.getElementById("drop");
        for (const type of ["dragenter", "dragover", "drop"])
            drop.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
    }""", data)
    expect(page.locator("#file-name")).to_have_text("dropped.png")
    page.get_by_label("Query").fill("at night")
    slider = page.locator("#alpha")
    expect(slider).to_be_enabled()
    slider.focus()
    for _ in range(4):                  # 0.50 -> 0.30 by keyboard, 0.05 a step
        page.keyboard.press("ArrowLeft")
    expect(page.locator("#alpha-value")).to_have_text("0.30")
    assert _search(page) == "done"
    r = world["retriever"]
    cards = _cards(page)
    _same_hits(cards, r.search_composed(world["images"][4], "at night", alpha=0.3, k=K))
    image_only = [h.score for h in r.search_image(world["images"][4], k=K)]
    assert not np.allclose([c["score"] for c in cards], image_only, atol=1e-4)   # the text counted
    if os.environ.get("CLIPRT_SAVE_SCREENSHOT") == "1":
        page.screenshot(path=SCREENSHOT, full_page=True)


def test_bad_image_shows_the_api_error(world, page):
    bad = np.random.default_rng(3).integers(0, 256, 600, dtype=np.uint8).tobytes()
    req = urllib.request.Request(
        world["url"] + "/v1/search", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"query": {"image": "data:image/png;base64," + base64.b64encode(bad).decode()},
                         "k": K}).encode())
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400
    message = json.loads(e.value.read())["error"]["message"]
    assert message

    _open(page, world["url"])
    page.get_by_label("Results", exact=True).fill(str(K))
    page.get_by_label("Query").fill("a blue square")
    assert _search(page) == "done" and len(_cards(page)) == K     # cards from before go with the error
    page.get_by_label("Query").fill("")
    _upload(page, "x.png", bad)
    assert _search(page) == "error"
    expect(page.locator("#error")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_text(message)
    assert _cards(page) == []
    expect(page.locator("#preview")).to_be_hidden()          # the undecodable preview is not shown broken


def test_api_key_is_asked_for_and_used(world, page):
    page.goto(world["url_key"] + "/")                       # the page itself needs no key
    expect(page.locator("#auth")).to_be_visible()
    page.get_by_label("Results", exact=True).fill(str(K))
    page.get_by_label("Query").fill("a green square")
    assert _search(page) == "error"                         # no key: the API's 401 message
    expect(page.get_by_role("alert")).to_contain_text("API key")
    assert _cards(page) == []

    seq = int(page.locator("#results").get_attribute("data-seq"))
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Use key").click()      # keeps the key and runs the pending search
    page.wait_for_function("s => { const r = document.getElementById('results');"
                           " return Number(r.dataset.seq) > s && r.dataset.state !== 'loading'; }", arg=seq)
    expect(page.locator("#auth")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()
    _same_hits(_cards(page), world["retriever"].search_text("a green square", k=K))
    assert page.evaluate("localStorage.getItem('cliprt.apiKey')") == KEY

    _open(page, world["url_key"])                           # remembered across reloads
    expect(page.locator("#auth")).to_be_hidden()

    page.evaluate("localStorage.setItem('cliprt.apiKey', 'wrong')")
    page.reload()
    expect(page.locator("#auth")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_text("The stored API key was refused.")
