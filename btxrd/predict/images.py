"""Scoring image files with a trained classifier (``python -m btxrd.predict``; the package docstring says
what it reads and writes)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from btxrd.cam.overlay import cam_tile
from btxrd.data.dicom import is_dicom, open_radiograph
from btxrd.errors import ConfigError, DataError
from btxrd.tasks.inference import Classifier, check_scoring_memory

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The files to score: each file given, and each folder's image files (by suffix, or DICOM by content)."""
    found = []
    for given in map(Path, inputs):
        if given.is_dir():
            found += sorted(
                p for p in given.iterdir() if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or is_dicom(p))
            )
        elif given.is_file():
            found.append(given)
        else:
            raise ConfigError(f"{given}: no such file or folder")
    if not found:
        raise ConfigError(f"no image files in {', '.join(map(str, inputs))} ({', '.join(IMAGE_SUFFIXES)} or DICOM)")
    return found


def _prepared(classifier: Classifier, path: Path) -> np.ndarray:
    with open_radiograph(path, classifier.limits) as image:
        return classifier.prepare(image, str(path))


@dataclass
class Prediction:
    table: pd.DataFrame  # one row per file (column ``error`` for the files that could not be scored)
    n_failed: int


def predict_files(
    classifier: Classifier,
    files: Iterable[Path],
    batch_size: int = 32,
    skip_unreadable: bool = False,
    gradcam_dir: Path | None = None,
) -> Prediction:
    """Score ``files`` in batches; an unreadable file stops with its DataError unless ``skip_unreadable``."""
    files = list(files)
    check_scoring_memory(
        classifier.model, classifier.image_size, min(batch_size, len(files)), classifier.device, "--batch-size"
    )
    rows, failed = [], 0
    for start in tqdm(range(0, len(files), batch_size), desc="predict", unit="batch", disable=len(files) <= batch_size):
        batch, prepared = [], []
        for path in files[start : start + batch_size]:
            try:
                prepared.append(_prepared(classifier, path))
                batch.append(path)
            except DataError as exc:
                if not skip_unreadable:
                    raise
                failed += 1
                log.warning("skipped: %s", exc)
                rows.append(pd.DataFrame({"file": [str(path)], "error": [str(exc)]}))
        if not batch:
            continue
        table, cams = classifier.predict(np.stack(prepared), with_cam=gradcam_dir is not None)
        table.insert(0, "file", [str(p) for p in batch])
        rows.append(table)
        if gradcam_dir is not None:
            _save_overlays(gradcam_dir, batch, prepared, cams, table)
    table = pd.concat(rows, ignore_index=True)
    order = table["file"].map({str(path): i for i, path in enumerate(files)})
    return Prediction(table.iloc[order.argsort(kind="stable")].reset_index(drop=True), failed)


def _save_overlays(
    folder: Path, files: list[Path], images: list[np.ndarray], cams: np.ndarray, table: pd.DataFrame
) -> None:
    """One PNG per image: the model's input with the Grad-CAM of its predicted class (own scale, jet)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path, image, cam, predicted in zip(files, images, cams, table["predicted"], strict=True):
        tile = (cam_tile(image, cam) * 255).round().astype(np.uint8)
        Image.fromarray(tile).save(folder / f"{path.stem}_gradcam_{predicted}.png")
