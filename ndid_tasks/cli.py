"""``ndid``: the command line.

Exit codes scripts can rely on:
    0  success (for ``query``: a duplicate was found)
    1  ``query`` found no duplicate
    2  usage error
    3  configuration, weights, calibration or whitening problem (the message says which command fixes it)
    4  a service (S3, Milvus) is unavailable, refused the request or failed
    5  bad input (e.g. ``query`` on an unreadable image, a folder, a missing file)
    6  an unexpected internal error (``-v`` prints the traceback)

Every failure is one line on stderr starting with ``ndid:``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

EXIT_OK, EXIT_NO_MATCH, EXIT_USAGE, EXIT_CONFIG, EXIT_SERVICE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3, 4, 5, 6


class InputError(Exception):
    """What the user asked for cannot be read (exit 5)."""


def load_settings(**overrides):
    """Settings from NDID_* (and the local services' env file). Without NDID_MILVUS_URI, a running
    local Milvus server (`ndid services up`, `make demo`) is used: it holds the embedded file."""
    from .config import Settings, load_env_file
    from .services import milvus_status

    load_env_file(os.environ.get("NDID_STATE_DIR", "var"))
    settings = Settings.from_env(**overrides)
    if not settings.milvus_uri:
        server = milvus_status(settings)
        if server.running:
            settings = settings.replace(milvus_uri=server.address)
    return settings


def _progress(total: int, desc: str):
    from .progress import Progress

    return Progress(total, desc)


def _untrained_banner(settings) -> None:
    if settings.untrained:
        print("!! UNTRAINED: NDID_WEIGHTS_MODE=random - encoders have seeded random weights; "
              "decisions are for tests/demos only", file=sys.stderr)


# ---------------------------------------------------------------- commands

def cmd_services(args) -> int:
    from . import services

    settings = load_settings()
    if args.action == "up":
        for st in services.services_up(settings, milvus_server=not args.no_milvus_server):
            print(f"{st.name:7s} running  pid={st.pid}  {st.address}  {st.detail}")
        from .config import env_file

        print(f"credentials: {env_file(settings.state_dir)} (loaded automatically by ndid)")
    elif args.action == "down":
        stopped = services.services_down(settings)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    else:
        for st in services.services_status(settings):
            print(f"{st.name:7s} {'running' if st.running else 'stopped'}  "
                  f"{'pid=' + str(st.pid) if st.pid else ''}  {st.address}  {st.detail}")
    return EXIT_OK


def _items_for(paths: list[str], settings):
    from .pipeline import SourceItem, local_items
    from .storage import S3Store, parse_s3_uri

    items, local = [], []
    for p in paths:
        if p.startswith("s3://"):
            bucket, prefix = parse_s3_uri(p)
            for obj in S3Store(settings, bucket=bucket).list_window(prefix, None, None):
                items.append(SourceItem(f"s3://{bucket}/{obj.key}", f"s3://{bucket}/{obj.key}",
                                        int(obj.last_modified.timestamp() * 1000), obj.size))
        else:
            local.append(p)
    return items + local_items(local)


def cmd_index(args) -> int:
    from .pipeline import Engine, records_jsonl, summarize

    settings = load_settings()
    _untrained_banner(settings)
    items = _items_for(args.paths, settings)
    run_id = args.run_id or "cli-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    engine = Engine(settings)
    t0 = time.perf_counter()
    try:
        with _progress(len(items), "indexing") as bar:
            records = engine.ingest(items, run_id, progress=bar.update)
    finally:
        engine.close()
    summary = summarize(records, time.perf_counter() - t0)
    if args.output:
        Path(args.output).write_text(records_jsonl(records))
    if args.json:
        print(json.dumps({"summary": summary, "records": [r.to_dict() for r in records]}, indent=2))
    else:
        for r in records:
            tail = (f"-> {r.original_id}  p={r.probability:.3f} ({r.stage})" if r.decision == "duplicate"
                    else f"{r.error_reason}: {r.error_message[:80]}" if r.decision == "error" else "")
            print(f"{r.decision:9s} {r.id}  {tail}")
        print(json.dumps(summary))
    return EXIT_OK


def cmd_query(args) -> int:
    from .images import ImageDecodeError
    from .pipeline import Engine
    from .signals import PHashSignal

    settings = load_settings()
    _untrained_banner(settings)
    data = read_input(args.image)
    with Engine(settings) as engine:
        engine.warm_up()  # settings, weights, calibration and the index are checked before the input
        try:
            matches = engine.query(data, limit=args.limit)
        except ImageDecodeError as exc:
            raise InputError(f"cannot read {args.image}: {exc}") from exc
        calibration = engine.calibration.version
    if args.json:
        print(json.dumps({"query": args.image, "untrained": settings.untrained, "descriptor": settings.descriptor_name,
                          "calibration": calibration, "matches": matches}, indent=2))
    else:
        if not matches:
            print("no candidates")
        for m in matches:
            why = ", ".join(f"{k}={v:.3f}" for k, v in m["features"].items())
            contrib = ", ".join(f"{k}:{v:+.2f}" for k, v in m["contributions"].items())
            how = PHashSignal.how_matched(m.get("orientation", ""))  # ("" for a plain match)
            turned = f"; query: {how}" if how else ""
            print(f"{m['decision']:9s} p={m['probability']:.3f} [{m['stage']}{turned}] {m['id']}\n"
                  f"          original={m['original_id']}\n          features: {why}\n          log-odds: {contrib}")
    return EXIT_OK if any(m["decision"] == "duplicate" for m in matches) else EXIT_NO_MATCH


def read_input(path: str) -> bytes:
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path} is a folder; `ndid query` takes one image (`ndid index` takes folders)")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def cmd_calibrate(args) -> int:
    from .bootstrap import bootstrap_calibration
    from .images import image_files

    settings = load_settings()
    _untrained_banner(settings)
    if not args.bootstrap:
        print("ndid calibrate: give --bootstrap DIR (audited-label refits run in the ndid_recalibrate DAG)",
              file=sys.stderr)
        return EXIT_USAGE
    files = image_files(args.bootstrap)[args.skip:]
    n = len(files[:args.limit] if args.limit else files)
    with _progress(n, "augmenting") as bar:
        cal, whitening = bootstrap_calibration(settings, args.bootstrap, limit=args.limit, copies=args.copies,
                                               seed=args.seed, progress=bar.update, skip=args.skip)
    if args.version:
        cal.version = args.version
    print(json.dumps({"version": cal.version, "whitening": whitening.version, "band": cal.band,
                      "metrics": cal.metrics}, indent=2))
    if args.output:
        Path(args.output).write_text(cal.to_json() + "\n")
        print(f"written {args.output}")
    name = f"whitening_{whitening.version}.npz"
    target = whitening.save(args.whitening_output or (Path(args.output).with_name(name) if args.output
                                                      else settings.resolved_model_dir / name))
    print(f"written whitening {whitening.version} to {target} (with --output: use both via "
          f"NDID_CALIBRATION_FILE and NDID_WHITENING_FILE={target})")
    if args.activate:
        from .pipeline import Engine
        from .refresh import switch_to

        engine = Engine(settings)  # the active calibration's index: re-indexed before the switch
        try:
            result = switch_to(engine, cal, whitening)
        finally:
            engine.close()
        print(f"activated {cal.version} (whitening {whitening.version}) in "
              f"s3://{settings.s3_bucket}/{settings.s3_calibration_prefix}; index {result['collection']} "
              f"({result['reindex']['rows']} rows copied from {result['previous_collection']})")
        if result["previous_collection"] is None:
            print(f"first calibration of descriptor {settings.descriptor_name}: its index starts empty; run "
                  f"ndid_ingest with reprocess=true over earlier windows to index their images with it")
    return EXIT_OK


def cmd_whitening(args) -> int:
    from .pipeline import Engine

    settings = load_settings()
    _untrained_banner(settings)
    engine = Engine(settings)
    try:
        if args.action == "status":
            w = engine.resnet.whitening
            print(json.dumps({"calibration": engine.calibration.version, "descriptor": settings.descriptor_name,
                              "whitening": w.version if w else None, "dim": engine.resnet.dim,
                              "whitening_fitted_on": w.fitted_on if w else None,
                              "collection": engine.index.images, "rows": engine.index.count()}, indent=2))
            return EXIT_OK
        from .refresh import refresh_whitening

        activate = not args.no_activate
        if activate and not settings.s3_access_key:
            print("ndid whitening fit: activation stores the whitening and calibration in S3 but no S3 "
                  "credentials are set (run `ndid services up` or use --no-activate --output-dir DIR)",
                  file=sys.stderr)
            return EXIT_CONFIG
        with _progress(args.sample_images, "augmenting") as bar:
            result = refresh_whitening(engine, sample_images=args.sample_images, copies=args.copies,
                                       corpus_sample=args.corpus_sample, seed=args.seed, activate=activate,
                                       progress=bar.update)
        cal, whitening = result.pop("_calibration", None), result.pop("_whitening", None)
        if args.output_dir and cal is not None:
            out = Path(args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"calibration_{cal.version}.json").write_text(cal.to_json() + "\n")
            whitening.save(out / f"whitening_{whitening.version}.npz")
            result["files"] = [str(out / f"calibration_{cal.version}.json"), str(out / f"whitening_{whitening.version}.npz")]
        print(json.dumps(result, indent=2, default=str))
        return EXIT_OK if result["status"] != "skipped" else EXIT_NO_MATCH
    finally:
        engine.close()


def _folder_photos(args, label: str):
    """The photos of ``args.folder`` (sorted, from ``--skip``, at most ``--limit``) as loaded
    images, with a progress bar; an unreadable one is skipped, not fatal."""
    from .images import image_files, load_image

    files = image_files(args.folder)[args.skip:]
    if args.limit:
        files = files[:args.limit]
    with _progress(len(files), label) as bar:
        for path in files:
            try:
                yield load_image(path.read_bytes(), path.name)
            except Exception as exc:  # noqa: BLE001
                print(f"skipped {path.name}: {exc}", file=sys.stderr)
            bar.update(1)


def cmd_words(args) -> int:
    """Fit the visual-words vocabulary (k-means on RootSIFT) on a folder of generic photos."""
    from .signals import GeometricSignal
    from .signals.visual_words import fit_vocabulary

    settings = load_settings()
    # more keypoints a photo than at ingest: each of ~16,000 words wants a few dozen descriptors
    geometry = GeometricSignal(max_features=args.features, max_side=settings.sift_max_side)
    features = [f for image in _folder_photos(args, "SIFT") for f in geometry.compute([image])]
    vocab = fit_vocabulary(features, size=args.size, seed=args.seed, branch=args.branch,
                           mirror_invariant=not args.mirror_variant,
                           meta={"fitted_on": f"{Path(args.folder).name} (sorted files {args.skip}..)",
                                 "sift_max_side": settings.sift_max_side, "sift_features": args.features})
    Path(args.output).write_bytes(vocab.to_bytes())
    print(json.dumps({"version": vocab.version, "output": args.output, **vocab.meta}, indent=2))
    return EXIT_OK


def cmd_words_generic(args) -> int:
    """The words of generic photos (none of them indexed, none a benchmark's): a query's words
    background while the index is too small to give its own (NDID_VISUAL_WORDS_GENERIC_FILE)."""
    from .signals import GeometricSignal
    from .signals.visual_words import VisualWordsSignal, Vocabulary, generic_to_bytes

    settings = load_settings()
    vocabulary = Vocabulary.load(settings.visual_words_file)
    signal = VisualWordsSignal(vocabulary, GeometricSignal.from_settings(settings))  # (as at ingest)
    words = [w for image in _folder_photos(args, "visual words") for w in signal.compute([image]) if w]
    if len(words) < VisualWordsSignal.MIN_SAMPLE:
        print(f"ndid words generic: {len(words)} photos with words; a background needs at least "
              f"{VisualWordsSignal.MIN_SAMPLE}", file=sys.stderr)
        return EXIT_CONFIG
    meta = {"made_from": f"{Path(args.folder).name} (sorted files from {args.skip}"
                         + (f", {args.limit} of them)" if args.limit else ")"),
            "sift_max_side": settings.sift_max_side, "sift_features": settings.sift_features}
    Path(args.output).write_bytes(generic_to_bytes(words, vocabulary, meta))
    print(json.dumps({"output": args.output, "vocabulary": vocabulary.version, "images": len(words), **meta}, indent=2))
    return EXIT_OK


def cmd_words_backfill(args) -> int:
    """Visual words for indexed images that have none, from stored SIFT features or their source."""
    from .feature_store import FeatureStore
    from .pipeline import Engine
    from .refresh import backfill_words

    settings = load_settings()
    if not settings.visual_words:
        print("ndid words backfill: visual words are off (NDID_VISUAL_WORDS=0)", file=sys.stderr)
        return EXIT_CONFIG
    _untrained_banner(settings)
    stored = settings.store_local_features and bool(settings.s3_access_key)  # else every image from its source
    with Engine(settings, feature_store=FeatureStore(settings) if stored else None) as engine:
        with _progress(engine.index.count(), "visual words") as bar:
            counts = backfill_words(engine, batch_size=args.batch_size, progress=bar.update)
        print(json.dumps({"collection": engine.index.words, **counts}, indent=2))
    return EXIT_OK


def cmd_models(args) -> int:
    from . import weights

    settings = load_settings()
    if args.action == "status":
        needed = weights.required_models(settings)
        for spec in weights.MODELS.values():
            path = weights.model_path(settings, spec)
            use = "" if spec in needed else "  [not used with these settings]"
            print(f"{spec.key:9s} {'present' if path.exists() else 'missing'}  {path}  ({spec.description}){use}")
        print(f"weights mode: {settings.weights_mode}")
        return EXIT_OK
    if args.action == "compile":
        return _compile_encoders(settings)
    keys = [spec.key for spec in weights.required_models(settings)] if args.model == "all" else [args.model]
    for key in keys:
        if args.action == "fetch":
            print(f"fetched {weights.fetch_weights(settings, key)}")
        else:
            if not args.file:
                print("ndid models import MODEL FILE", file=sys.stderr)
                return EXIT_USAGE
            print(f"imported {weights.import_weights(settings, key, Path(args.file), args.sha256)}")
    if all(weights.model_path(settings, spec).exists() for spec in weights.required_models(settings)):
        from .config import env_file, set_env_value

        if env_file(settings.state_dir).exists():  # the local demo / UI recorded random mode there
            set_env_value(settings.state_dir, "NDID_WEIGHTS_MODE", "pretrained")
    return EXIT_OK


def _compile_encoders(settings) -> int:
    """Build the compiled packages now (a deployment step), so no task pays the compilation."""
    from .pipeline import Engine

    engine = Engine(settings.replace(torch_compile="true"))
    encoders = {"descriptor": engine.resnet, "clip": engine.clip}
    for role, signal in encoders.items():
        if not signal.compilable:
            print(f"{role:10s} {type(signal).__name__}: already compiled (TorchScript)")
            continue
        signal.model  # noqa: B018 - compiles, or loads the package built before
        print(f"{role:10s} {type(signal).__name__}: {signal.compiled_from}")
    print(f"packages in {settings.resolved_model_dir / 'compiled'}: every process on this machine loads them "
          f"(NDID_TORCH_COMPILE=auto, the default)")
    return EXIT_OK


def cmd_bench(args) -> int:
    from . import benchmark

    settings = load_settings()
    _untrained_banner(settings)
    if args.action == "make":
        report = benchmark.make_benchmark(args.originals, args.distractors, args.out, seed=args.seed,
                                          max_originals=args.max_originals, max_distractors=args.max_distractors,
                                          skip_originals=args.skip_originals, skip_distractors=args.skip_distractors,
                                          optional=args.optional_families)
        print(json.dumps(report, indent=2))
        return EXIT_OK
    if args.action == "scale":
        from .scale_bench import scale_benchmark

        sizes = [int(x) for x in args.sizes.split(",")]
        with _progress(max(sizes), "rows indexed") as bar:
            report = scale_benchmark(settings, sizes, args.out, images=args.images, progress=bar.update)
        print(Path(args.out, "scale.md").read_text())
        return EXIT_OK if report["sizes"] else EXIT_INPUT
    if args.action == "descriptors":
        gt = benchmark.read_ground_truth(Path(args.folder))
        total = 4 * (len(list((Path(args.folder) / "refs").iterdir())) + len(gt))
        with _progress(total, "descriptors") as bar:
            report = benchmark.descriptor_ablation(settings, args.folder, args.out, progress=bar.update)
        print(Path(report["markdown"]).read_text())
        return EXIT_OK
    folder = Path(args.folder)
    total = len(benchmark.read_ground_truth(folder)) + sum(1 for p in (folder / "refs").iterdir() if p.is_file())
    with _progress(total, "benchmark (refs, then queries)") as bar:
        report = benchmark.run_benchmark(settings, args.folder, args.out, methods=args.methods,
                                         fit_whitening=args.fit_whitening, progress=bar.update)
    print(Path(report["markdown"]).read_text())
    return EXIT_OK


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from .augment import OPTIONAL_FAMILIES

    p = argparse.ArgumentParser(prog="ndid", description="NDID near-duplicate image detection")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("services", help="start/stop/inspect the local S3 and Milvus Lite servers")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument("--no-milvus-server", action="store_true", help="S3 only (Milvus embedded in-process)")
    s.set_defaults(func=cmd_services)

    s = sub.add_parser("index", help="index and decide images: files, folders or s3://bucket/prefix")
    s.add_argument("paths", nargs="+")
    s.add_argument("--run-id", default="")
    s.add_argument("--output", help="also write the decision records (JSON Lines) here")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("query", help="top matches for an image, with explanation (writes nothing)")
    s.add_argument("image")
    s.add_argument("--limit", type=positive_int, default=5)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_query)

    s = sub.add_parser("calibrate", help="fit the decision model on synthetic pairs from a folder")
    s.add_argument("--bootstrap", metavar="DIR")
    s.add_argument("--limit", type=int, default=200, help="at most this many images from DIR")
    s.add_argument("--skip", type=int, default=0, help="skip the first N sorted files (e.g. those a benchmark uses)")
    s.add_argument("--copies", type=int, default=3, help="attacked copies per image")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--version", default="")
    s.add_argument("--output", help="write the calibration JSON here")
    s.add_argument("--activate", action="store_true", help="store in S3 and make it the active version")
    s.add_argument("--whitening-output", help="where to write the fitted descriptor whitening (.npz)")
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("whitening", help="descriptor whitening: status, or fit on the index + re-index + switch")
    s.add_argument("action", choices=["status", "fit"])
    s.add_argument("--sample-images", type=int, default=150, help="indexed images decoded for attacked copies")
    s.add_argument("--copies", type=int, default=3, help="attacked copies per sampled image")
    s.add_argument("--corpus-sample", type=int, default=20_000, help="raw descriptors sampled from the index")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-activate", action="store_true",
                   help="fit and re-index but do not switch (write files with --output-dir)")
    s.add_argument("--output-dir", help="also write the calibration JSON and whitening NPZ here")
    s.set_defaults(func=cmd_whitening)

    s = sub.add_parser("words", help="visual words (tight-crop candidates): fit a vocabulary, or backfill the index")
    wsub = s.add_subparsers(dest="action", required=True)
    w = wsub.add_parser("fit", help="fit the vocabulary on a folder of generic photos")
    w.add_argument("folder")
    w.add_argument("output", help="the vocabulary NPZ to write (use it with NDID_VISUAL_WORDS_FILE)")
    w.add_argument("--size", type=positive_int, default=16384, help="words (k-means centroids), at most")
    w.add_argument("--branch", type=int, default=128, help="coarse cells of the vocabulary tree (0: flat k-means)")
    w.add_argument("--features", type=positive_int, default=1500, help="SIFT keypoints per photo to fit on")
    w.add_argument("--mirror-variant", action="store_true",
                   help="words that tell a keypoint from its mirror image (default: mirror invariant)")
    w.add_argument("--skip", type=int, default=0, help="skip the first N sorted files (e.g. those a benchmark uses)")
    w.add_argument("--limit", type=int, default=0)
    w.add_argument("--seed", type=int, default=0)
    w.set_defaults(func=cmd_words)
    w = wsub.add_parser("generic", help="the words of generic photos that no index holds: the words background "
                        "of a new index (NDID_VISUAL_WORDS_GENERIC_FILE; one is packaged for the packaged vocabulary)")
    w.add_argument("folder")
    w.add_argument("output", help="the NPZ to write")
    w.add_argument("--skip", type=int, default=0, help="skip the first N sorted files (e.g. those a benchmark uses)")
    w.add_argument("--limit", type=int, default=0)
    w.set_defaults(func=cmd_words_generic)
    w = wsub.add_parser("backfill", help="give every indexed image without visual words its words (images "
                        "indexed before NDID_VISUAL_WORDS, or a new vocabulary); resumable")
    w.add_argument("--batch-size", type=positive_int, default=64)
    w.set_defaults(func=cmd_words_backfill)

    s = sub.add_parser("models", help="pretrained weights: status, fetch (needs a network), import FILE, "
                                      "compile (the encoders, ahead of time, for NDID_TORCH_COMPILE)")
    s.add_argument("action", choices=["status", "fetch", "import", "compile"])
    from .weights import MODELS

    s.add_argument("model", nargs="?", default="all", choices=["all", *MODELS])
    s.add_argument("file", nargs="?")
    s.add_argument("--sha256", help="expected checksum of FILE (import)")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("bench", help="benchmark: make a Copydays-style folder, or run on one")
    bsub = s.add_subparsers(dest="action", required=True)
    m = bsub.add_parser("make")
    m.add_argument("originals")
    m.add_argument("distractors")
    m.add_argument("out")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--max-originals", type=int, default=None)
    m.add_argument("--max-distractors", type=int, default=None)
    m.add_argument("--skip-originals", type=int, default=0, help="skip the first N sorted originals (another benchmark's)")
    m.add_argument("--skip-distractors", type=int, default=0, help="skip the first N sorted distractors")
    m.add_argument("--with", dest="optional_families", action="append", default=[],
                   choices=list(OPTIONAL_FAMILIES),
                   help="add an optional family (repeatable): the original as part of a bigger picture")
    r = bsub.add_parser("run")
    r.add_argument("folder")
    r.add_argument("--out", default="bench_out")
    r.add_argument("--methods", default="all", help="comma-separated subset of methods, or all")
    r.add_argument("--fit-whitening", action="store_true",
                   help="after indexing refs, fit whitening + calibration on them (as `ndid whitening fit` "
                        "does on a real index) and answer the queries with those")
    d = bsub.add_parser("descriptors", help="ablation of the ResNet-50 descriptor levers alone")
    d.add_argument("folder")
    d.add_argument("--out", default="bench_out")
    sc = bsub.add_parser("scale", help="cost as the index grows: upsert rate, search latency, memory, disk, "
                                       "DAG-path images/s (synthetic rows; real photos for the DAG path)")
    sc.add_argument("--sizes", default="10000,100000,1000000", help="index sizes, comma-separated")
    sc.add_argument("--images", default=None, help="a folder of photos for the DAG-path throughput at each size")
    sc.add_argument("--out", default="bench_out/scale")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .errors import PermanentError
    from .services import ServiceError

    try:
        return args.func(args)
    except PermanentError as exc:  # settings, weights, calibration, whitening
        return _fail(f"ndid: {exc}", EXIT_CONFIG)
    except (InputError, FileNotFoundError, IsADirectoryError) as exc:
        return _fail(f"ndid: {exc}", EXIT_INPUT)
    except ServiceError as exc:
        return _fail(f"ndid: {exc}", EXIT_SERVICE)
    except KeyboardInterrupt:
        return _fail("ndid: interrupted", 130)
    except Exception as exc:
        if args.verbose:
            logging.getLogger("ndid").exception("ndid failed")
        if _is_locked_milvus_file(exc):
            return _fail("ndid: the Milvus Lite file is in use by another process (a running `milvus-lite "
                         "server`?): set NDID_MILVUS_URI=http://127.0.0.1:19530 or stop that process", EXIT_SERVICE)
        if _is_service_failure(exc):
            return _fail(f"ndid: service unavailable or refused the request: {_one_line(exc)}", EXIT_SERVICE)
        return _fail(f"ndid: unexpected error: {type(exc).__name__}: {_one_line(exc)} (-v for the traceback)",
                     EXIT_INTERNAL)


def _fail(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400]


def _is_locked_milvus_file(exc: BaseException) -> bool:
    return any("DataDirLocked" in type(e).__name__ or "DataDirLocked" in str(e)
               for e in _chain(exc))


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is_service_failure(exc: Exception) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(names & {"EndpointConnectionError", "ConnectionClosedError", "MilvusException",
                         "ConnectTimeoutError", "ClientError", "NoCredentialsError", "StorageError",
                         "ConnectionError", "ConnectionRefusedError", "MilvusUnavailableException",
                         "NoSuchBucket", "ParamError"})


if __name__ == "__main__":
    sys.exit(main())
