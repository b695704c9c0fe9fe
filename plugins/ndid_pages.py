"""Airflow plugin: the NDID pages inside the Airflow UI (review queue, dashboard, lookup).

A FastAPI app mounted on the api-server at ``/ndid`` and three ``external_views`` entries that open
it inside Airflow's own navigation (in an iframe at ``/plugin/ndid-…``). Thin: every figure and
every write comes from ``ndid_tasks`` (review, dashboard, labels); this file only renders it.

Every route requires an authenticated Airflow user (Airflow's own FastAPI security dependency,
which reads the UI's ``_token`` cookie or a bearer token); the auditor of a label is that user.
Pictures are served through the app as thumbnails, never as S3 URLs, and only of recorded objects.
After a label is stored, the app emits an event on the labels Asset through Airflow's REST API
with the reviewer's own token, so ``ndid_recalibrate`` runs (Airflow folds events that arrive
while a run is queued into that run).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar

from airflow.api_fastapi.core_api.security import GetUserDep, requires_authenticated
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

log = logging.getLogger(__name__)

PREFIX = "/ndid"
TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "ndid_templates"),
                        autoescape=select_autoescape(["html"]))
CACHE_S = 30.0  # records and labels are re-read at most this often per api-server process
RECORD_DAYS, RECORD_LIMIT = 7, 2000


# ---------------------------------------------------------------- settings and cached reads

def page_settings():
    """Settings as the DAG tasks see them: NDID_* overlaid by the ndid_s3 / ndid_milvus Connections."""
    from ndid_tasks.config import Settings, load_env_file, with_connections

    load_env_file(Settings.from_env().state_dir)
    return with_connections(Settings.from_env(), _connection("ndid_s3"), _connection("ndid_milvus"))


def _connection(conn_id: str):
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except Exception:  # noqa: BLE001 - no such Connection: the NDID_* variables stay
        return None


class _Cache:
    """A few values recomputed at most every CACHE_S seconds (one dict per api-server process)."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[float, Any]] = {}
        self.lock = threading.Lock()

    def get(self, name: str, make, fresh: bool = False):
        with self.lock:
            hit = self.values.get(name)
        if hit and not fresh and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        value = make()
        with self.lock:
            self.values[name] = (time.monotonic(), value)
        return value

    def forget(self, name: str) -> None:
        with self.lock:
            self.values.pop(name, None)


CACHE = _Cache()
_ENGINE: dict[str, Any] = {}
_ENGINE_LOCK = threading.Lock()


def _records(settings) -> list[dict[str, Any]]:
    from ndid_tasks.review import recent_records

    return CACHE.get("records", lambda: recent_records(settings, RECORD_DAYS, RECORD_LIMIT))


def _labels(settings):
    """(per-auditor counts, parsed labels, refused rows) over every label file, cached."""
    from ndid_tasks.dashboard import label_counts

    return CACHE.get("labels", lambda: label_counts(_store(settings), settings))


def _active_calibration(settings):
    from ndid_tasks.pipeline import resolve_calibration

    return CACHE.get("calibration", lambda: resolve_calibration(settings))


def _engine(settings):
    """One Engine per api-server process for lookups (models are built on first use)."""
    from ndid_tasks.pipeline import Engine

    with _ENGINE_LOCK:
        if "engine" not in _ENGINE:
            _ENGINE["engine"] = Engine(settings)
        return _ENGINE["engine"]


def _store(settings):
    from ndid_tasks.storage import S3Store

    return S3Store(settings)


# ---------------------------------------------------------------- the app

app = FastAPI(title="NDID pages", dependencies=[Depends(requires_authenticated())],
              docs_url=None, redoc_url=None, openapi_url=None)
SettingsDep = Annotated[Any, Depends(page_settings)]


@app.exception_handler(HTTPException)
async def _denied(request: Request, exc: HTTPException):
    """401/403 stay 401/403; a person in a browser also gets a link to Airflow's login."""
    if exc.status_code in (401, 403) and "text/html" in request.headers.get("accept", ""):
        body = TEMPLATES.get_template("denied.html").render(status=exc.status_code, next=str(request.url))
        return HTMLResponse(body, status_code=exc.status_code)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _page(request: Request, template: str, settings, user, **values: Any) -> HTMLResponse:
    from ndid_tasks.signals import PHashSignal

    root = request.scope.get("root_path", PREFIX)
    return HTMLResponse(TEMPLATES.get_template(template).render(
        root=root, untrained=settings.untrained, bucket=settings.s3_bucket, user=user.get_name(),
        how_matched=PHashSignal.how_matched, **values))


@app.get("/", include_in_schema=False)
def index(request: Request) -> RedirectResponse:
    return RedirectResponse(f"{request.scope.get('root_path', PREFIX)}/review")


@app.get("/review", response_class=HTMLResponse)
def review_page(request: Request, user: GetUserDep, settings: SettingsDep) -> HTMLResponse:
    return _page(request, "review.html", settings, user, sample_rate=settings.review_sample_rate)


@app.get("/api/queue")
def queue(user: GetUserDep, settings: SettingsDep, limit: int = 30) -> dict[str, Any]:
    """The next cards for this reviewer (pairs anyone labelled already are left out)."""
    from ndid_tasks.labels import labelled_pair_ids
    from ndid_tasks.review import review_queue

    cal = _active_calibration(settings)
    done = labelled_pair_ids(_store(settings), settings)
    cards = review_queue(_records(settings), cal, done, settings.review_sample_rate, limit=max(1, min(limit, 200)))
    return {"cards": [c.to_dict() for c in cards], "threshold": cal.threshold, "calibration": cal.version,
            "untrained": settings.untrained, "labelled": len(done)}


@app.post("/api/labels")
def submit_label(request: Request, body: dict[str, Any], user: GetUserDep, settings: SettingsDep) -> dict[str, Any]:
    """Store the reviewer's verdict on one card (idempotent per auditor and pair), then emit the
    labels Asset event through Airflow so ndid_recalibrate runs."""
    from ndid_tasks.labels import VERDICTS, review_label, write_review_label
    from ndid_tasks.review import card_from_record

    verdict = body.get("verdict")
    if verdict not in VERDICTS:
        raise HTTPException(422, f"verdict must be one of {VERDICTS}")
    record_key = str(body.get("record_key", ""))
    if not record_key.startswith(settings.s3_decisions_prefix + "records/"):
        raise HTTPException(422, "record_key is not a decision record")
    store = _store(settings)
    try:
        record = {**store.get_json(record_key), "_key": record_key}
    except Exception as exc:
        raise HTTPException(404, f"no record at {record_key}") from exc
    if record.get("id") != body.get("image_a") or record.get("matched_id") != body.get("image_b"):
        raise HTTPException(409, "the record no longer names this pair (re-decided meanwhile?)")
    card = card_from_record(record, _active_calibration(settings), str(body.get("stream", "informative")), "")
    row = review_label(card.image_a, card.image_b, verdict, user.get_name(), context=card.label_context())
    key = write_review_label(store, settings, row)
    CACHE.forget("labels")  # the dashboard shows it at once
    event = emit_labels_event(request, settings, key, user.get_name())
    return {"key": key, "verdict": verdict, "auditor": user.get_name(), "asset_event": event}


def emit_labels_event(request: Request, settings, key: str, auditor: str) -> dict[str, Any]:
    """POST /api/v2/assets/events for the labels Asset, as the reviewer (their token, their rights)."""
    import httpx
    from airflow.configuration import conf

    from ndid_tasks.labels import labels_asset_uri

    token = request.cookies.get("_token") or request.headers.get("authorization", "").removeprefix("Bearer ")
    base = (conf.get("api", "base_url", fallback="") or f"{request.url.scheme}://{request.url.netloc}").rstrip("/")
    uri = labels_asset_uri(settings)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            # Airflow normalises s3 URIs without the trailing slash: search by that form
            found = client.get("/api/v2/assets", params={"uri_pattern": uri.rstrip("/"), "limit": 50})
            found.raise_for_status()
            ids = [a["id"] for a in found.json().get("assets", []) if a["uri"].rstrip("/") == uri.rstrip("/")]
            if not ids:
                return {"emitted": False, "reason": f"Airflow does not know the asset {uri} yet "
                                                    "(is ndid_recalibrate parsed?); the label is stored"}
            posted = client.post("/api/v2/assets/events",
                                 json={"asset_id": ids[0], "extra": {"labels_key": key, "auditor": auditor,
                                                                     "source": "ndid-review"}})
            posted.raise_for_status()
            out = {"emitted": True, "asset_id": ids[0], "event_id": posted.json().get("id")}
            dag = client.get("/api/v2/dags/ndid_recalibrate")
            if dag.is_success and dag.json().get("is_paused"):
                out["note"] = "ndid_recalibrate is paused in Airflow: unpause it to recalibrate on these labels"
            return out
    except httpx.HTTPError as exc:
        log.warning("labels asset event not emitted: %s", exc)
        return {"emitted": False, "reason": f"Airflow API: {exc}; the label is stored"}


@app.get("/api/image")
def image(id: str, settings: SettingsDep, size: int = 360) -> Response:
    """A thumbnail of a recorded object (JPEG), through the app: no S3 URL leaves the server."""
    from ndid_tasks.images import ImageDecodeError
    from ndid_tasks.review import NotRecorded, thumbnail

    try:
        data = thumbnail(settings, id, max_side=max(64, min(size, 1024)))
    except NotRecorded as exc:
        raise HTTPException(404, "NDID has no record of this object") from exc
    except (ImageDecodeError, ValueError) as exc:
        raise HTTPException(415, f"cannot show this object: {exc}") from exc
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


@app.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(request: Request, user: GetUserDep, settings: SettingsDep) -> HTMLResponse:
    from ndid_tasks import dashboard
    from ndid_tasks.review import audit_estimate, latest_verdicts

    store = _store(settings)
    runs = CACHE.get("runs", lambda: dashboard.run_summaries(store, settings))
    history = dashboard.calibration_history(store, settings)
    per_auditor, labels, refused_rows = _labels(settings)
    estimate = audit_estimate(_records(settings), latest_verdicts(labels), settings.review_sample_rate)
    cal = _active_calibration(settings)
    totals = {"objects": sum(r.get("objects", 0) for r in runs),
              "duplicates": sum(r.get("decisions", {}).get("duplicate", 0) for r in runs),
              "errors": sum(r.get("decisions", {}).get("error", 0) for r in runs)}
    return _page(request, "dashboard.html", settings, user, runs=list(reversed(runs[-20:])), totals=totals,
                 history=history, cal=cal, per_auditor=per_auditor, refused_rows=refused_rows,
                 estimate=estimate, fmt=_fmt, now=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))


@app.get("/charts/runs.png")
def runs_chart(settings: SettingsDep) -> Response:
    from ndid_tasks import dashboard

    runs = CACHE.get("runs", lambda: dashboard.run_summaries(_store(settings), settings))
    return Response(dashboard.runs_chart(runs), media_type="image/png")


@app.get("/charts/pr.png")
def pr_chart(settings: SettingsDep) -> Response:
    """Live probabilities against audited labels: the curve the active calibration runs on."""
    from ndid_tasks import dashboard
    from ndid_tasks.labels import pair_id
    from ndid_tasks.review import latest_verdicts

    _, labels, _ = _labels(settings)
    verdicts = latest_verdicts(labels)
    scored = [(float(r.get("probability", 0)), verdicts[pid]) for r in _records(settings) if r.get("matched_id")
              and (pid := pair_id(r["id"], r["matched_id"])) in verdicts]
    cal = _active_calibration(settings)
    title = f"{cal.version}: live decisions vs {len(scored)} audited pairs"
    return Response(dashboard.pr_chart(scored, cal.threshold, title), media_type="image/png")


@app.get("/lookup", response_class=HTMLResponse)
def lookup_page(request: Request, user: GetUserDep, settings: SettingsDep, ref: str = "") -> HTMLResponse:
    """An S3 key (or s3:// URI) -> its record and its whole group, as thumbnails."""
    from ndid_tasks.review import find_record

    values: dict[str, Any] = {"ref": ref, "record": None, "group": [], "matches": None, "error": ""}
    if ref.strip():
        image_id, record = find_record(settings, ref)
        values.update(image_id=image_id, record=record)
        if record is None:
            values["error"] = f"{image_id}: no NDID record (not ingested yet, or no such object)"
        elif record.get("decision") != "error":
            try:
                values["group"] = _engine(settings).index.group(record.get("original_id") or image_id)
            except Exception as exc:  # noqa: BLE001 - the record is still worth showing
                values["error"] = f"group unavailable (Milvus: {exc})"
    return _page(request, "lookup.html", settings, user, **values, fmt=_fmt)


@app.post("/lookup", response_class=HTMLResponse)
def lookup_upload(request: Request, user: GetUserDep, settings: SettingsDep,
                  image: Annotated[UploadFile, File()], limit: Annotated[int, Form()] = 5) -> HTMLResponse:
    """An uploaded picture -> the matches `ndid query` would give (nothing is written)."""
    from ndid_tasks.images import ImageDecodeError

    data = image.file.read(settings.max_image_bytes + 1)
    values: dict[str, Any] = {"ref": "", "record": None, "group": [], "matches": [], "error": "",
                              "uploaded": image.filename}
    try:
        if len(data) > settings.max_image_bytes:
            raise ImageDecodeError("too_large", f"over {settings.max_image_bytes} bytes")
        engine = _engine(settings)
        with _ENGINE_LOCK:  # the engine's caches are not thread-safe
            values["matches"] = engine.query(data, image_id="upload", limit=max(1, min(limit, 20)))
    except ImageDecodeError as exc:
        values["error"] = f"cannot read {image.filename}: {exc}"
    return _page(request, "lookup.html", settings, user, **values, fmt=_fmt)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"[{value[0]:.{digits}f}, {value[1]:.{digits}f}]"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


class NdidPagesPlugin(AirflowPlugin):
    name = "ndid_pages"
    fastapi_apps: ClassVar[list] = [{"app": app, "url_prefix": PREFIX, "name": "NDID pages"}]
    external_views: ClassVar[list] = [
        {"name": "Review queue", "href": f"{PREFIX}/review", "url_route": "ndid-review", "destination": "nav",
         "category": "NDID"},
        {"name": "Dashboard", "href": f"{PREFIX}/dashboard", "url_route": "ndid-dashboard", "destination": "nav",
         "category": "NDID"},
        {"name": "Lookup", "href": f"{PREFIX}/lookup", "url_route": "ndid-lookup", "destination": "nav",
         "category": "NDID"},
    ]
