"""The `ferbench` command line.

    ferbench manifest ADAPTER ROOT [-o FILE]   read a dataset in its native layout, print counts
    ferbench models                            list the model registry (input size, parameters)
    ferbench dvc-yaml [--config FILE]          regenerate dvc.yaml from the Snakemake study
    ferbench live SOURCE --model PATH|URI | --run-id ID   expressions of every face in a
                                               video, a webcam or an image folder (docs/live.md)
    ferbench predict IMAGE_OR_FOLDER... --model PATH|URI [--format csv|jsonl] [--out FILE]
                                               every face of still images, as a table
    ferbench deal-private / serve-private / query-private   private inference (docs/privacy.md)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

#: `ferbench live`'s default thread count for torch and OpenCV.
LIVE_THREADS = min(2, os.cpu_count() or 1)
MODEL_HELP = ("a model.pt written by the workflow's train stage, or an MLflow model: "
              "runs:/<fold run id>/model or models:/ferbench-<dataset>-<protocol>-<model>/"
              "<version>")
TRACKING_HELP = ("MLflow tracking URI for a runs:/ or models:/ model (default: "
                 "MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db)")

def _manifest(args) -> int:
    from ferbench.data import adapters
    from ferbench.data import manifest as manifest_mod

    options = json.loads(args.options) if args.options else {}
    result = adapters.load(args.adapter, Path(args.root), **options)
    counts = manifest_mod.counts(result.manifest)
    if args.output:
        manifest_mod.write(result.manifest, args.output)
        print(f"wrote {args.output}")
    print(f"images: {counts['images']}  subjects: {counts['subjects']}  "
          f"sequences: {counts['sequences']}  quarantined: {len(result.quarantine)}")
    _print_counts("per class", counts["per_class"])
    _print_counts("per source split", counts["per_split"])
    if len(result.quarantine):
        for reason, n in result.quarantine["reason"].value_counts().sort_index().items():
            print(f"  quarantined ({reason}): {n}")
    return 0


def _print_counts(title: str, counts: dict) -> None:
    print(f"{title}:")
    for key, value in counts.items():
        print(f"  {key:<12} {value:>7}")


def _models(args) -> int:
    import torch

    from ferbench.models import REGISTRY, parameter_count

    print(f"{'model':<14} {'input':>9} {'params':>11}  paper")
    for name, spec in REGISTRY.items():
        model = spec.build(args.classes, spec.hyperparameters())
        side = spec.input_size()
        channels = 1 + len(getattr(model, "extra_channels", ()))  # face + e.g. an AU map
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, channels, side, side))
        size = f"{channels}x{side}x{side}"
        print(f"{name:<14} {size:>9} {parameter_count(model):>11,}  {spec.paper}"
              f"  -> {tuple(out.shape)}")
    return 0


def _dvc_yaml(args) -> int:
    from ferbench import config as config_mod
    from ferbench import dvcgen

    config = config_mod.load(args.config)
    text = dvcgen.render(config, args.config)
    if args.check:
        current = Path(args.output).read_text() if Path(args.output).exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run `ferbench dvc-yaml`", file=sys.stderr)
            return 1
        return 0
    Path(args.output).write_text(text)
    print(f"wrote {args.output}")
    return 0


def _device(name: str, threads: int):
    """The torch device `--device` names (auto: CUDA when present), with `threads` CPU
    threads for torch and OpenCV."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return torch.device(name if name != "auto" else
                        "cuda" if torch.cuda.is_available() else "cpu")


def _predict(args) -> int:
    from ferbench import prediction

    table = prediction.predict(args.images, args.model, args.tracking_uri,
                               _device(args.device, args.threads))
    if args.out:
        with open(args.out, "w", newline="") as handle:
            prediction.write(table, handle, args.format)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        prediction.write(table, sys.stdout, args.format)
    print(f"{len(table)} faces in {table['file'].nunique()} of "
          f"{len(prediction.image_files(args.images))} images", file=sys.stderr)
    return 0


def _live(args) -> int:
    from ferbench import live, tracking

    out_dir = Path(args.output)
    device = _device(args.device, args.threads)
    model = live.load_live_model(args.model or f"runs:/{args.run_id}/{tracking.MODEL_NAME}",
                                 device, args.tracking_uri)
    source = live.open_source(args.source, args.fps)
    display = args.display and live.display_available()
    if args.display and not display:
        print("ferbench live: no display (or an OpenCV without GUI): running headless",
              file=sys.stderr)
    with live.Recognizer(model, device, args.detect_scale, args.detect_every,
                         args.full_search_every) as recognizer:
        summary = live.run(source, recognizer, out_dir, display, args.max_frames,
                           progress=not args.quiet)
    print(live.format_timings(summary))
    print(f"wrote {out_dir / live.VIDEO_NAME}, faces.jsonl, faces.csv, summary.json")
    return 0


def _deal_private(args) -> int:
    from ferbench.privacy import protocol

    protocol.deal_files(protocol.Shape(args.pixels, args.classes), args.queries,
                        [args.client_out], args.server_out)
    print(f"dealt {args.queries} one-time tuples: {args.client_out} (client), "
          f"{args.server_out} (server)")
    print(f"warning: hand {args.client_out} to the client only and {args.server_out} to the "
          "server only, then delete both here; a party that also holds the other's file can "
          "remove every mask (the server then reads the face, the client the model's weights)",
          file=sys.stderr)
    return 0


def _serve_private(args) -> int:
    from ferbench.privacy import server

    server.serve(args.classifier, args.randomness, args.port, args.timeout)
    return 0


def _query_private(args) -> int:
    from ferbench.privacy.client import PrivateClient, PrivateQueryError

    try:
        client = PrivateClient(args.server, Path(args.randomness))
        for image, label in zip(args.images, client.classify_images(args.images)):
            print(f"{image}\t{label}")
    except PrivateQueryError as exc:
        print(f"ferbench query-private: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _adapter_layouts() -> str:
    """Every registered adapter with the layout it reads, so `manifest --help` cannot drift
    from the registry."""
    from ferbench.data.adapters import ADAPTERS

    entries = (textwrap.fill(f"{name}: {reader.LAYOUT}", width=92, initial_indent="  ",
                             subsequent_indent="      ", break_on_hyphens=False,
                             break_long_words=False)
               for name, reader in sorted(ADAPTERS.items()))
    return "adapters and the native layouts they read:\n" + "\n".join(entries)


def _at_least(smallest: int):
    """An argparse type: an integer no smaller than `smallest`, else a one-line error."""
    def integer(text: str) -> int:
        value = int(text)
        if value < smallest:
            raise argparse.ArgumentTypeError(f"must be at least {smallest}, got {value}")
        return value
    return integer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("manifest", help="read a dataset in its native layout and print counts",
                       epilog=_adapter_layouts(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter", help="dataset adapter, one of those listed below")
    p.add_argument("root", help="the dataset's root folder, as its owners ship it")
    p.add_argument("-o", "--output", help="write the manifest CSV here")
    p.add_argument("--options", help="adapter options as JSON, e.g. '{\"images\": \"original\"}' "
                                     "for rafdb or '{\"modality\": \"NI\"}' for oulu_casia")
    p.set_defaults(func=_manifest)

    p = sub.add_parser("models", help="list registered models with input size and parameters")
    p.add_argument("--classes", type=int, default=7)
    p.set_defaults(func=_models)

    p = sub.add_parser("dvc-yaml", help="generate dvc.yaml from the study config")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("-o", "--output", default="dvc.yaml")
    p.add_argument("--check", action="store_true", help="fail if the file is out of date")
    p.set_defaults(func=_dvc_yaml)

    p = sub.add_parser("live", help="recognise the expressions of every face in a webcam, "
                                    "video or image folder")
    p.add_argument("source", help="webcam index (0), video file or folder of images")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help=MODEL_HELP)
    model.add_argument("--run-id", help="an MLflow fold run whose model to use (the same as "
                                        "--model runs:/ID/model)")
    p.add_argument("--tracking-uri", help=TRACKING_HELP)
    p.add_argument("-o", "--output", default="live-output",
                   help="folder for annotated.mp4, faces.jsonl, faces.csv, summary.json")
    p.add_argument("--detect-scale", type=float, default=0.5,
                   help="detect faces on the frame scaled by this (0, 1]; crops still come from "
                        "the full frame (default 0.5: 640x480 is searched at 320x240)")
    p.add_argument("--detect-every", type=int, default=1,
                   help="run the detector on every N-th frame and keep its boxes in between "
                        "(every frame is still classified; default 1, the paper's system)")
    p.add_argument("--full-search-every", type=int, default=1, metavar="M",
                   help="Haar: search every frame, but only around the previous frame's faces "
                        "and the whole frame every M-th frame (default 1: the whole of every "
                        "frame; docs/live.md)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=LIVE_THREADS,
                   help="CPU threads for torch and OpenCV (default 2, or 1 on a 1-core machine: "
                        "a frame's few small faces gain little from more; on a machine busy "
                        "with other jobs, 1 avoids contention)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--fps", type=float, help="frame rate of the output video (default: the "
                                             "source's, else 25)")
    p.add_argument("--display", action="store_true", help="also show the annotated frames in a "
                                                          "window (when a display exists); q quits")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_live)

    p = sub.add_parser("predict", help="the expression of every face in image files or "
                                       "folders, as a CSV or JSON Lines table")
    p.add_argument("images", nargs="+", help="image files and folders of images")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--tracking-uri", help=TRACKING_HELP)
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv",
                   help="csv (default) or jsonl, one face a row")
    p.add_argument("--out", help="write the table to this file (default: print it)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=LIVE_THREADS,
                   help="CPU threads for torch and OpenCV (default: as ferbench live)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("deal-private", help="the dealer of private inference: one-time "
                                            "correlated randomness for client and server")
    p.add_argument("--pixels", type=_at_least(1), required=True,
                   help="pixels per face of the classifier (its size squared)")
    p.add_argument("--classes", type=_at_least(2), required=True,
                   help="classes of the classifier")
    p.add_argument("--queries", type=_at_least(1), required=True,
                   help="how many queries to prepare")
    p.add_argument("--client-out", required=True, help="the client's randomness (.npz)")
    p.add_argument("--server-out", required=True, help="the server's randomness (.npz)")
    p.set_defaults(func=_deal_private)

    p = sub.add_parser("serve-private", help="classify faces privately for query-private "
                                             "(HTTP on 127.0.0.1; runs until killed)")
    p.add_argument("--classifier", required=True, help="classifier.npz of rule private_classifier")
    p.add_argument("--randomness", required=True, help="the server's file from deal-private")
    p.add_argument("--port", type=int, default=0, help="port (default 0: any free one)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds a connection may stall before it is closed (default 30)")
    p.set_defaults(func=_serve_private)

    p = sub.add_parser("query-private", help="the class of face-crop images from serve-private,"
                                             " without the server seeing them")
    p.add_argument("--server", required=True, help="URL that serve-private printed")
    p.add_argument("--randomness", required=True, help="the client's file from deal-private")
    p.add_argument("images", nargs="+", help="aligned face crops (greyscaled and resized to "
                                             "the classifier's size)")
    p.set_defaults(func=_query_private)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"ferbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
