"""The command line of ``python -m btxrd.export`` (the package docstring says what it writes)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from btxrd.cli import run_cli
from btxrd.config import project_root
from btxrd.data.dicom import open_radiograph
from btxrd.data.limits import InputLimits
from btxrd.data.schema import CLASS_NAMES, IMAGES_DIR
from btxrd.errors import ConfigError
from btxrd.export import __doc__ as export_doc
from btxrd.export.graph import export_onnx, onnx_probabilities
from btxrd.predict.images import image_files
from btxrd.tasks.inference import Classifier
from btxrd.tracking import Tracker, default_tracking_uri
from btxrd.tracking.models import EXAMPLE_INPUT, load_logged_model, log_beside_model, logged_model_uri

TOLERANCE = 1e-4  # the largest probability difference from the logged model an exported graph may show
MOST_IMAGES = 1000  # --n-images: a check, not an evaluation
PROBABILITIES = [f"p_{name}" for name in CLASS_NAMES]


def _image_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MOST_IMAGES:
        raise argparse.ArgumentTypeError(f"give 1 to {MOST_IMAGES}, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m btxrd.export",
        description="A trained classifier as an ONNX graph, checked against its logged model.",
        epilog=export_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_uri", help="models:/NAME/VERSION, models:/NAME@ALIAS, models:/<model id>, a run id")
    parser.add_argument("--onnx", required=True, type=Path, help="the ONNX file to write")
    parser.add_argument("--images", nargs="+", default=None, help="check on these image files or folders")
    parser.add_argument(
        "--n-images", type=_image_count, default=64, help=f"check on at most this many images (1-{MOST_IMAGES})"
    )
    parser.add_argument("--log", action="store_true", help="add the ONNX file to the logged model (folder onnx/)")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///<project root>/mlflow.db")
    args = parser.parse_args(argv)
    out = _writable(args.onnx)
    tracker = Tracker(args.tracking_uri or default_tracking_uri(project_root()), experiment="")
    model_uri = logged_model_uri(tracker, args.model_uri)
    logged = load_logged_model(model_uri, tracker.uri)
    classifier = _classifier_of(logged, model_uri)
    pictures, where = _check_images(tracker, logged.metadata.run_id, args.images, args.n_images, classifier.limits)
    inputs = np.stack([classifier.prepare(picture, name) for name, picture in pictures])
    source = f"models:/{logged.metadata.model_id} (run {logged.metadata.run_id}; asked for as {args.model_uri})"
    # Written beside the target and moved there only once checked: no unchecked graph is ever left at --onnx
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as scratch:
        written = Path(scratch) / out.name
        export_onnx(classifier, written, source)
        exported = onnx_probabilities(written, inputs, classifier.settings.train.eval_batch_size)
        served = pd.concat([logged.predict(picture[None]) for _, picture in pictures])[PROBABILITIES].to_numpy()
        difference = float(np.abs(exported - served).max())
        print(f"onnxruntime vs the logged model on {where}: largest probability difference {difference:.2e}")
        if not difference <= TOLERANCE:
            print(
                f"error: the graph differs from the logged model by more than {TOLERANCE:g}: not written",
                file=sys.stderr,
            )
            return 1
        os.replace(written, out)
    size = classifier.image_size
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) from {model_uri}: uint8 (N, {size}, {size}) in, "
        f"probabilities of {', '.join(CLASS_NAMES)} out"
    )
    if args.log:
        print(f"logged as {log_beside_model(tracker, logged.metadata.model_id, out, 'onnx')}")
    return 0


def _writable(path: Path) -> Path:
    """``--onnx`` as an absolute path whose folder exists and takes a new file; ConfigError naming it if not."""
    path = path.expanduser().absolute()
    if path.is_dir():
        raise ConfigError(f"--onnx {path}: a folder; give a file name such as {path / 'model.onnx'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise ConfigError(f"--onnx {path}: its folder cannot be written ({exc.strerror or exc})") from None
    return path


def _classifier_of(logged: object, model_uri: str) -> Classifier:
    try:
        classifier = logged.unwrap_python_model().classifier  # type: ignore[attr-defined]
    except Exception:  # another flavour, or a python model of another project
        classifier = None
    if not isinstance(classifier, Classifier):
        raise ConfigError(f"{model_uri}: not a btxrd classifier (no btxrd Classifier inside)")
    return classifier


def _check_images(
    tracker: Tracker, run_id: str | None, given: list[str] | None, most: int, limits: InputLimits
) -> tuple[list[tuple[str, np.ndarray]], str]:
    """(name, gray uint8 picture) pairs to compare the graph and the logged model on, and what they are: the
    files given, else the run's own test images (its data.root), else the model's input example (said so)."""
    if given:
        files = image_files(given)[:most]
        return [(str(p), _gray(p, limits)) for p in files], f"{len(files)} image(s) of {', '.join(given)}"
    files, missing = _test_images(tracker, run_id)
    files = files[:most]
    if files:
        return [(str(p), _gray(p, limits)) for p in files], f"{len(files)} test image(s) of the run ({files[0].parent})"
    return [("the input example", EXAMPLE_INPUT[0])], f"the model's input example only ({missing}; --images PATH)"


def _test_images(tracker: Tracker, run_id: str | None) -> tuple[list[Path], str]:
    """The run's test images that are on this machine, or why there are none."""
    run = tracker.find_run(run_id) if run_id else None
    if run is None:
        return [], "the model names no run of this store"
    root = Path(run.data.params.get("data.root", ""))
    with tempfile.TemporaryDirectory() as folder:
        try:
            table = pd.read_csv(tracker.download_artifact(run.info.run_id, "predictions_test.csv", folder))
        except Exception as exc:  # MLflow's error for a missing artifact, an unreadable file
            return [], f"the run's predictions_test.csv cannot be read: {str(exc).splitlines()[0] if str(exc) else exc}"
    files = [root / IMAGES_DIR / str(name) for name in table.get("image_id", [])]
    found = [p for p in files if p.is_file()]
    return found, "" if found else f"the run's test images are not under data.root={root}"


def _gray(path: Path, limits: InputLimits) -> np.ndarray:
    with open_radiograph(path, limits) as image:
        return np.asarray(image.convert("L"))


if __name__ == "__main__":
    sys.exit(run_cli(main))
