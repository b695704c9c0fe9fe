"""The NDID pages in a real browser (Debian's Chromium through Playwright) against a real Airflow
api-server with the plugin, scheduler and dag-processor, real S3 (SeaweedFS) and Milvus (a Milvus
Lite server): sign in, label a pair with the keyboard inside Airflow's own navigation, find the
label object in S3 and the Asset event in Airflow, see ndid_recalibrate run from it and its outcome
on the dashboard, look an image up with its group, and upload pictures (a copy; a photo pasted
inside another, whose match says so in words).

With NDID_SCREENSHOTS=DIR the pages are also saved there (docs/ui holds the README's)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from ndid_tasks import augment, ingest_run
from ndid_tasks.labels import labels_asset_uri, review_label_key, review_prefix
from ndid_tasks.storage import S3Store
from tests.conftest import SKIMAGE_PHOTOS, jpeg_bytes, skimage_photo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
SHOTS = Path(os.environ["NDID_SCREENSHOTS"]) if os.environ.get("NDID_SCREENSHOTS") else None


def ingest(settings) -> dict:
    """Ten photos, five attacked copies (one turned) and a broken object, decided by the real pipeline."""
    store = S3Store(settings)
    for name in SKIMAGE_PHOTOS:
        store.put_bytes(f"images/originals/{name}.jpg", jpeg_bytes(skimage_photo(name)), "image/jpeg")
    time.sleep(1.1)  # LastModified has 1-second resolution: the copies appear after their originals
    for name, attack in (("astronaut", "crop"), ("coffee", "jpeg"), ("rocket", "colour"), ("camera", "crop_resize_jpeg")):
        copy = augment.BOOTSTRAP_ATTACKS[attack](skimage_photo(name), np.random.default_rng(1))
        store.put_bytes(f"images/copies/{name}_{attack}.jpg", jpeg_bytes(copy), "image/jpeg")
    # a phone upload that lost its EXIF orientation: the photo turned a quarter clockwise
    store.put_bytes("images/copies/chelsea_turned.jpg", jpeg_bytes(skimage_photo("chelsea").rotate(-90, expand=True)),
                    "image/jpeg")
    store.put_bytes("images/broken/notes.jpg", b"this is not a picture", "image/jpeg")
    now = datetime.now(UTC)
    return ingest_run.run_all(settings, settings.s3_bucket, "images/", None, None, "manual__ui-test", now.isoformat())


def login(page, stack, user: str) -> None:
    page.goto(f"{stack.url}/auth/login/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(stack.passwords[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.url}/", timeout=60_000)


def shot(page, name: str, full_url: str = "") -> None:
    """The page as seen inside Airflow; with ``full_url``, also the whole NDID page on its own."""
    if SHOTS is None:
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    if full_url:
        back = page.url
        page.goto(full_url)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SHOTS / f"{name}-full.png"), full_page=True)
        page.goto(back)


def status_of(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_review_label_triggers_recalibration_and_the_dashboard_shows_it(ui_stack, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.ui.conftest import CHROMIUM

    stack, settings = ui_stack, ui_stack.settings
    summary = ingest(settings)
    assert summary["objects"] == 16 and summary["decisions"].get("duplicate", 0) >= 3
    store = S3Store(settings)

    # the labels asset exists once the dag-processor has parsed ndid_recalibrate; unpause it so its
    # asset schedule can fire (the DAGs are paused at creation)
    uri = labels_asset_uri(settings).rstrip("/")
    asset = stack.wait(lambda: [a for a in stack.api("GET", f"/api/v2/assets?uri_pattern={uri}")["assets"]
                                if a["uri"] == uri], 180, "the labels asset")[0]
    stack.api("PATCH", "/api/v2/dags/ndid_recalibrate", body={"is_paused": False})

    # anonymous and forged requests are refused by every NDID route
    assert status_of(f"{stack.url}/ndid/review") == 401
    assert status_of(f"{stack.url}/ndid/api/queue") == 401
    assert status_of(f"{stack.url}/ndid/api/queue", {"Cookie": "_token=forged"}) == 403
    assert status_of(f"{stack.url}/ndid/api/image?id=s3://{settings.s3_bucket}/images/originals/coffee.jpg") == 401

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        login(page, stack, "reviewer")

        # the review queue, inside Airflow's navigation (Plugins > NDID > Review queue)
        page.goto(f"{stack.url}/plugin/ndid-review")
        frame = page.frame_locator("iframe").first
        frame.locator("#card:not([hidden])").wait_for(timeout=90_000)
        image_a = frame.locator("#id_a").text_content()
        image_b = frame.locator("#id_b").text_content()
        assert frame.locator("#img_a").evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
        assert frame.locator("#bars tr").count() >= 3  # per-feature contributions
        assert "reviewer" in frame.locator("header").text_content()
        shot(page, "review")
        frame.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("d")
        frame.locator("body[data-last-label-key]").wait_for(state="attached", timeout=60_000)
        key = frame.locator("body").get_attribute("data-last-label-key")
        event_id = frame.locator("body").get_attribute("data-last-asset-event")
        assert "saved" in frame.locator("#toast").text_content()
        assert frame.locator("#id_a").text_content() != image_a  # the next card is up

        # the label object, in the documented format, at the auditor's own key
        assert key == review_label_key(settings, "reviewer", image_a, image_b)
        row = json.loads(store.get_bytes(key))
        assert (row["image_a"], row["image_b"], row["is_duplicate"], row["auditor"]) == (image_a, image_b, True,
                                                                                         "reviewer")
        # the same card submitted again (a double click, a retry): the same single object
        again = page.request.post(f"{stack.url}/ndid/api/labels", data={
            "record_key": row["record_key"], "image_a": image_a, "image_b": image_b, "verdict": "duplicate"})
        assert again.ok and again.json()["key"] == key
        assert [o.key for o in store.iter_objects(review_prefix(settings)) if o.key.endswith(key.rsplit("/", 1)[1])
                ] == [key]

        # the Asset event, emitted through Airflow as the reviewer
        events = stack.api("GET", f"/api/v2/assets/events?asset_id={asset['id']}")["asset_events"]
        assert event_id and int(event_id) in [e["id"] for e in events]
        assert any(e["extra"].get("labels_key") == key for e in events)

        # ... which runs ndid_recalibrate (too few labels: skipped, with its reason recorded)
        def asset_run_done():
            runs = stack.api("GET", "/api/v2/dags/ndid_recalibrate/dagRuns?run_type=asset_triggered")["dag_runs"]
            return [r for r in runs if r["state"] in ("success", "failed")]

        [run] = stack.wait(asset_run_done, 420, "the asset-triggered ndid_recalibrate run", interval=5)[:1]
        assert run["state"] == "success"
        evaluations = [store.get_json(o.key) for o in store.iter_objects(f"{settings.s3_calibration_prefix}evaluations/")]
        assert any(e["status"] == "skipped" and e["run_id"] == run["dag_run_id"] for e in evaluations)

        # the dashboard shows the run's numbers and the recalibration's outcome
        page.goto(f"{stack.url}/plugin/ndid-dashboard")
        dash = page.frame_locator("iframe").first
        dash.locator("#evaluations").wait_for(timeout=60_000)
        assert dash.locator("#kpi-objects").text_content().strip() == str(summary["objects"])
        assert dash.locator("#kpi-duplicates").text_content().strip() == str(summary["decisions"]["duplicate"])
        assert "skipped" in dash.locator("#evaluations").text_content()
        assert "need >= " in dash.locator("#evaluations").text_content()
        assert "reviewer" in dash.locator("#auditors").text_content()
        for chart in ("runs over time", "precision-recall on audited labels"):  # rendered PNGs, loaded
            assert dash.locator(f"img[alt='{chart}']").evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
        shot(page, "dashboard", f"{stack.url}/ndid/dashboard")

        # lookup: a copy's record and its whole group, as thumbnails
        page.goto(f"{stack.url}/plugin/ndid-lookup")
        look = page.frame_locator("iframe").first
        records = ingest_run.window_records(settings, settings.s3_bucket, "images/", None, None)
        copy = next(r for r in records.values() if r and r["decision"] == "duplicate" and "copies/" in r["id"])
        look.locator("input[name=ref]").fill(copy["id"].split("/", 3)[3])  # the bare key
        look.locator("button", has_text="Show its record").click()
        look.locator("#record").wait_for(timeout=60_000)
        assert "duplicate" in look.locator("#record").text_content()
        group = look.locator("#group figure")
        assert group.count() >= 2 and copy["original_id"] in look.locator("#group").text_content()
        assert group.first.locator("img").evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
        shot(page, "lookup")

        # a turned copy's record says, in words, which way it was turned
        turned = next(r for r in records.values() if r and r["id"].endswith("copies/chelsea_turned.jpg"))
        assert (turned["decision"], turned["orientation"]) == ("duplicate", "ROTATE_90"), turned
        look.locator("input[name=ref]").fill("images/copies/chelsea_turned.jpg")
        look.locator("button", has_text="Show its record").click()
        look.locator("#record", has_text="chelsea_turned").wait_for(timeout=60_000)
        assert "(this image: rotated 90° clockwise)" in look.locator("#record").text_content()
        for picture in (look.locator("#record img"), look.locator("#group figure img").last):  # (loaded, for the shot)
            assert picture.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
        shot(page, "lookup-turned")

        # ... or upload a picture: the matches `ndid query` gives, nothing stored
        upload = tmp_path / "upload.jpg"
        upload.write_bytes(store.get_bytes(copy["id"].split("/", 3)[3]))
        before = sum(1 for _ in store.iter_objects(""))
        look.locator("input[type=file]").set_input_files(str(upload))
        look.locator("button", has_text="Find matches").click()
        look.locator("#matches").wait_for(timeout=180_000)
        assert copy["original_id"] in look.locator("#matches").text_content()
        assert sum(1 for _ in store.iter_objects("")) == before

        # an indexed photo pasted inside a bigger picture: its match says so in words
        post = augment.attack_picture_in_picture(skimage_photo("coffee"), [skimage_photo("horse")],
                                                 np.random.default_rng(0))
        pasted = tmp_path / "pasted.jpg"
        pasted.write_bytes(jpeg_bytes(post))
        look.locator("input[type=file]").set_input_files(str(pasted))
        look.locator("button", has_text="Find matches").click()
        look.locator("#matches h3", has_text="pasted.jpg").wait_for(timeout=180_000)
        best = look.locator("#matches figure").first
        assert "originals/coffee.jpg" in best.text_content()
        assert "upload: a bigger picture with it inside" in best.text_content()
        assert best.locator("img").evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
        shot(page, "lookup-inset")

        # pictures only of recorded objects, and never an S3 URL in a page
        assert page.request.get(f"{stack.url}/ndid/api/image?id=s3://{settings.s3_bucket}/{key}").status == 404
        assert settings.s3_endpoint_url not in look.locator("body").inner_html()
        browser.close()
