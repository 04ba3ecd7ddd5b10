"""The command line of ``python -m btxrd.export`` (the package docstring says what it writes)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from btxrd.cli import run_cli
from btxrd.config import project_root
from btxrd.data.dicom import open_radiograph
from btxrd.data.schema import CLASS_NAMES, IMAGES_DIR
from btxrd.export import __doc__ as export_doc
from btxrd.export.graph import export_onnx, onnx_probabilities
from btxrd.predict.images import image_files
from btxrd.tracking import Tracker, default_tracking_uri
from btxrd.tracking.models import EXAMPLE_INPUT, load_logged_model, log_beside_model, logged_model_uri

TOLERANCE = 1e-4  # the largest probability difference from the logged model an exported graph may show
PROBABILITIES = [f"p_{name}" for name in CLASS_NAMES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m btxrd.export",
        description=(export_doc or "").split("\n")[2],
        epilog=export_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_uri", help="models:/NAME/VERSION, models:/NAME@ALIAS, models:/<model id>, a run id")
    parser.add_argument("--onnx", required=True, type=Path, help="the ONNX file to write")
    parser.add_argument("--images", nargs="+", default=None, help="check on these image files or folders")
    parser.add_argument("--n-images", type=int, default=64, help="check on at most this many images")
    parser.add_argument("--log", action="store_true", help="add the ONNX file to the logged model (folder onnx/)")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///<project root>/mlflow.db")
    args = parser.parse_args(argv)
    tracker = Tracker(args.tracking_uri or default_tracking_uri(project_root()), experiment="")
    model_uri = logged_model_uri(tracker, args.model_uri)
    logged = load_logged_model(model_uri, tracker.uri)
    classifier = logged.unwrap_python_model().classifier
    images, where = _check_images(tracker, logged.metadata.run_id, args.images, args.n_images)
    export_onnx(classifier, args.onnx, model_uri)
    exported = onnx_probabilities(args.onnx, np.stack([classifier.prepare(image) for image in images]))
    served = pd.concat([logged.predict(image[None]) for image in images])[PROBABILITIES].to_numpy()
    difference = float(np.abs(exported - served).max())
    size_mb = args.onnx.stat().st_size / 1e6
    print(
        f"wrote {args.onnx} ({size_mb:.1f} MB) from {model_uri}: uint8 (N, {classifier.image_size}, "
        f"{classifier.image_size}) in, probabilities of {', '.join(CLASS_NAMES)} out"
    )
    print(f"onnxruntime vs the logged model on {where}: largest probability difference {difference:.2e}")
    if not difference <= TOLERANCE:
        args.onnx.unlink()
        print(f"error: the graph differs from the logged model by more than {TOLERANCE:g}: removed", file=sys.stderr)
        return 1
    if args.log:
        print(f"logged as {log_beside_model(tracker, logged.metadata.model_id, args.onnx, 'onnx')}")
    return 0


def _check_images(
    tracker: Tracker, run_id: str | None, given: list[str] | None, most: int
) -> tuple[list[np.ndarray], str]:
    """Gray uint8 pictures to compare the graph and the logged model on, and what they are: the files
    given, else the run's own test images (its data.root), else the model's input example (said so)."""
    if given:
        files = image_files(given)[:most]
        return [_gray(path) for path in files], f"{len(files)} image(s) of {', '.join(given)}"
    run = tracker.find_run(run_id) if run_id else None
    root = Path(run.data.params.get("data.root", "")) if run is not None else None
    files = []
    if run is not None and root is not None and (root / IMAGES_DIR).is_dir():
        with tempfile.TemporaryDirectory() as folder:
            try:
                table = pd.read_csv(tracker.download_artifact(run.info.run_id, "predictions_test.csv", folder))
                files = [root / IMAGES_DIR / name for name in table["image_id"]]
            except Exception:  # no test predictions logged
                files = []
        files = [path for path in files if path.is_file()][:most]
    if files:
        return [_gray(path) for path in files], f"{len(files)} test image(s) of the run ({root})"
    return [EXAMPLE_INPUT[0]], "the model's input example only (the run's test images are not here: --images PATH)"


def _gray(path: Path) -> np.ndarray:
    with open_radiograph(path) as image:
        return np.asarray(image.convert("L"))


if __name__ == "__main__":
    sys.exit(run_cli(main))
