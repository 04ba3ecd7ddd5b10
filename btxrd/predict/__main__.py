"""python -m btxrd.predict MODEL_URI INPUT [INPUT ...] [--out predictions.csv] [--gradcam DIR] [--skip-unreadable]

MODEL_URI: a registered model (models:/btxrd-classifier/3), a logged one (models:/<model id>) or a
run's (runs:/<run id>/model); INPUT: image files or folders (JPEG, PNG, DICOM).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from btxrd.cli import run_cli
from btxrd.config import project_root
from btxrd.predict import __doc__ as predict_doc
from btxrd.predict.images import image_files, predict_files
from btxrd.tracking import default_tracking_uri
from btxrd.tracking.models import load_classifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m btxrd.predict",
        description=(predict_doc or "").split("\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_uri", help="models:/NAME/VERSION, models:/<model id> or runs:/<run id>/model")
    parser.add_argument("inputs", nargs="+", help="image files and folders")
    parser.add_argument("--out", default="predictions.csv", help="the table of predictions (CSV)")
    parser.add_argument("--gradcam", default=None, help="write a Grad-CAM overlay per image into this folder")
    parser.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="list unreadable files in the table (column error) instead of stopping",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///<project root>/mlflow.db")
    args = parser.parse_args(argv)
    files = image_files(args.inputs)
    classifier = load_classifier(args.model_uri, args.tracking_uri or default_tracking_uri(project_root()), args.device)
    gradcam = Path(args.gradcam) if args.gradcam else None
    result = predict_files(classifier, files, args.batch_size, args.skip_unreadable, gradcam)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out, index=False)
    scored = len(result.table) - result.n_failed
    print(
        f"scored {scored} image(s) with {args.model_uri}: {out}"
        + (f"; {result.n_failed} unreadable (column error)" if result.n_failed else "")
        + (f"; Grad-CAM overlays in {gradcam}/" if gradcam else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
