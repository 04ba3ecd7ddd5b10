"""Synthetic BTXRD: a dataset in exactly the release's format, with pictures a model can learn.

The real pixels are on figshare and not available here, so the demo and the
tests use this generator. Format, as in the release: ``dataset.xlsx`` with the
same 37 columns and 0/1 flags, ``images/IMG000001.jpeg`` ... with tumour images
first and the last centre-3 normal images ending in ``.jpg``, and one LabelMe
5.4.1 file (CRLF line endings, ``imageData: null``) per tumour image holding a
rectangle and a polygon per lesion; normal images have no file.

Pictures: a long bone (cortex, medulla, an epiphysis) in soft tissue. Benign
lesions are well-defined lucent areas with a sclerotic rim; malignant lesions are
ill-defined, of mixed density, with a sunburst periosteal reaction; normal images
have no lesion. Centres differ in acquisition (size, contrast, noise, blur), so
``split=center`` is a real domain shift. Deterministic per seed.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from btxrd.data.schema import (
    ANNOTATIONS_DIR,
    BENIGN_SUBTYPES,
    IMAGES_DIR,
    MALIGNANT_SUBTYPES,
    SHEET_COLUMNS,
    SHEET_NAME,
)

# Class x centre counts of the real release (normal, benign, malignant per centre).
RELEASE_COUNTS: dict[int, tuple[int, int, int]] = {1: (1593, 1110, 235), 2: (259, 214, 76), 3: (27, 201, 31)}
SUBTYPE_WEIGHTS: dict[str, int] = {
    "osteochondroma": 754,
    "multiple osteochondromas": 263,
    "simple bone cyst": 206,
    "giant cell tumor": 93,
    "osteofibroma": 44,
    "synovial osteochondroma": 51,
    "other bt": 115,
    "osteosarcoma": 297,
    "other mt": 45,
}
# Anatomical sites by region, with the release's rough frequencies for tumour images.
SITES: dict[str, dict[str, int]] = {
    "upper limb": {"hand": 97, "ulna": 62, "radius": 73, "humerus": 235, "elbow-joint": 5, "shoulder-joint": 12},
    "lower limb": {"foot": 93, "tibia": 630, "fibula": 259, "femur": 592, "knee-joint": 37, "ankle-joint": 4},
    "pelvis": {"hip bone": 69, "hip-joint": 3},
}
REGION_WEIGHTS = {"upper limb": 0.27, "lower limb": 0.65, "pelvis": 0.08}
VIEW_WEIGHTS = {"frontal": 0.58, "lateral": 0.34, "oblique": 0.08}


SYNTHETIC_MARKER = "SYNTHETIC.txt"  # written beside the sheet: what made these pictures


@dataclass(frozen=True)
class Acquisition:
    """How one centre's machines render a radiograph."""

    size_scale: float
    gamma: float
    gain: float
    offset: float
    noise: float
    blur: float


ACQUISITION: dict[int, Acquisition] = {
    1: Acquisition(size_scale=1.0, gamma=1.0, gain=1.0, offset=0.0, noise=0.025, blur=0.6),
    2: Acquisition(size_scale=0.75, gamma=0.75, gain=0.85, offset=0.08, noise=0.06, blur=1.4),
    3: Acquisition(size_scale=1.3, gamma=1.35, gain=1.1, offset=-0.03, noise=0.015, blur=0.0),
}


def _cell_counts(n: int, counts: dict[int, tuple[int, int, int]]) -> dict[tuple[int, int], int]:
    """Scale the release's class x centre table to n images (largest remainder, >= 1 per cell)."""
    cells = {(c, k): v for c, row in counts.items() for k, v in enumerate(row)}
    total = sum(cells.values())
    if n < len(cells):
        raise ValueError(f"--n must be at least {len(cells)} (one image per class and centre)")
    exact = {key: n * v / total for key, v in cells.items()}
    out = {key: max(1, int(math.floor(x))) for key, x in exact.items()}
    order = sorted(cells, key=lambda key: exact[key] - math.floor(exact[key]), reverse=True)
    i = 0
    while sum(out.values()) < n:
        out[order[i % len(order)]] += 1
        i += 1
    while sum(out.values()) > n:  # the >= 1 floor may overshoot: take from the largest cells
        largest = max(out, key=lambda key: out[key])
        out[largest] -= 1
    return out


def _choose(rng: np.random.Generator, weights: dict[str, float | int]) -> str:
    names = list(weights)
    p = np.asarray([weights[k] for k in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _patients(rng: np.random.Generator, center: int, label: int, n_images: int) -> list[dict]:
    """Rows for one (centre, class) cell, as patients with 1-3 consecutive views."""
    rows: list[dict] = []
    while len(rows) < n_images:
        region = _choose(rng, REGION_WEIGHTS)
        site = _choose(rng, SITES[region]) if label > 0 else ""  # normal rows: anatomy flags all 0
        if label == 0:
            subtype = ""
            age = int(rng.integers(1, 89))
        else:
            pool = BENIGN_SUBTYPES if label == 1 else MALIGNANT_SUBTYPES
            subtype = _choose(rng, {s: SUBTYPE_WEIGHTS[s] for s in pool})
            age = int(np.clip(rng.normal(22 if label == 1 else 26, 14), 3, 88))
        gender = "M" if rng.random() < 0.55 else "F"
        views = ["frontal", "lateral", "oblique"]
        n_views = int(rng.choice([1, 2, 3], p=[0.35, 0.5, 0.15]))
        first = _choose(rng, VIEW_WEIGHTS)
        order = [first] + [v for v in views if v != first]
        for view in order[:n_views]:
            rows.append(
                dict(
                    center=center,
                    label=label,
                    region=region,
                    site=site,
                    subtype=subtype,
                    age=age,
                    gender=gender,
                    view=view,
                )
            )
    return rows[:n_images]


def _sheet_row(image_id: str, meta: dict) -> dict:
    row = {c: 0 for c in SHEET_COLUMNS}
    row.update(image_id=image_id, center=meta["center"], age=meta["age"], gender=meta["gender"])
    if meta["site"]:
        row[meta["site"]] = 1
    row["tumor"] = int(meta["label"] > 0)
    row["benign"] = int(meta["label"] == 1)
    row["malignant"] = int(meta["label"] == 2)
    if meta["subtype"]:
        row[meta["subtype"]] = 1
    row[meta["region"]] = 1
    row[meta["view"]] = 1
    return row


def _lesion_polygon(
    rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, angle: float, irregular: bool
) -> list[tuple[float, float]]:
    n = 28
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = np.ones(n)
    if irregular:  # ill-defined outline: a few random harmonics
        for k in (2, 3, 5):
            radius += rng.uniform(0.05, 0.15) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    x = rx * radius * np.cos(t)
    y = ry * radius * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(float(cx + ca * a - sa * b), float(cy + sa * a + ca * b)) for a, b in zip(x, y, strict=True)]


def render_radiograph(
    rng: np.random.Generator, width: int, height: int, label: int, n_lesions: int, acq: Acquisition
) -> tuple[np.ndarray, list[list[tuple[float, float]]]]:
    """One grayscale picture (uint8, HxW) and the lesion polygons drawn into it."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    short = min(width, height)
    # Bone axis: through a point near the centre, roughly along the long side.
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    theta = (0.0 if height >= width else np.pi / 2) + rng.normal(0, 0.2)
    ux, uy = math.sin(theta), math.cos(theta)  # unit vector along the bone
    across = (xx - cx) * uy - (yy - cy) * ux  # signed distance across the axis
    along = (xx - cx) * ux + (yy - cy) * uy
    half_width = short * rng.uniform(0.09, 0.13)
    end = max(width, height) * rng.uniform(0.25, 0.35)
    # Epiphysis: the bone widens towards one end (a joint).
    widen = 1.0 + 0.6 * np.clip((along - end * 0.6) / (end * 0.4), 0, 1) ** 2
    d = np.abs(across) / (half_width * widen)
    tissue = 0.22 * np.clip(1.6 - np.abs(across) / (half_width * 2.6), 0, 1) ** 0.5
    bone = np.where(d < 1, 0.42 + 0.33 * d**6, 0.0) * (np.abs(along) < end + half_width)
    img = 0.04 + tissue + bone + 0.03 * np.sin(along / (short * 0.05))  # trabecular hint

    polygons = []
    if label > 0:
        overlay = Image.new("F", (width, height), 0.0)
        draw = ImageDraw.Draw(overlay)
        for _ in range(n_lesions):
            t = rng.uniform(-0.6, 0.6) * end
            lx = cx + ux * t + uy * rng.uniform(-0.3, 0.3) * half_width
            ly = cy + uy * t - ux * rng.uniform(-0.3, 0.3) * half_width
            r = half_width * rng.uniform(0.75, 1.05)
            rx, ry = r * rng.uniform(0.8, 1.0), r * rng.uniform(1.0, 1.4)
            poly = _lesion_polygon(rng, lx, ly, rx, ry, theta, irregular=label == 2)
            polygons.append(poly)
            dist = np.sqrt(((xx - lx) / rx) ** 2 + ((yy - ly) / ry) ** 2)
            if label == 1:
                # Well-defined lucency with a sclerotic rim.
                img = np.where(dist < 0.82, img * 0.45, img)
                img = img + 0.45 * ((dist >= 0.82) & (dist < 1.0))
            else:
                # Ill-defined, mixed density: blotchy lysis and sclerosis with soft edges.
                falloff = np.clip(1.15 - dist, 0, 1) ** 0.7
                texture = np.sin(xx / (r * 0.23) + rng.uniform(0, 6)) * np.cos(yy / (r * 0.19))
                img = img * (1 - 0.55 * falloff) + 0.35 * falloff * (texture > 0.1)
                # Sunburst periosteal reaction: spicules radiating from the lesion.
                for a in np.linspace(0, 2 * np.pi, 18, endpoint=False) + rng.uniform(0, 0.3):
                    r0, r1 = 0.9, rng.uniform(1.25, 1.6)
                    draw.line(
                        [
                            (lx + r0 * rx * math.cos(a), ly + r0 * ry * math.sin(a)),
                            (lx + r1 * rx * math.cos(a), ly + r1 * ry * math.sin(a)),
                        ],
                        fill=0.35,
                        width=max(1, int(short / 160)),
                    )
        img = img + np.asarray(overlay, dtype=np.float32)

    # Acquisition: contrast curve, gain/offset, blur, noise.
    img = np.clip(img, 0, 1) ** acq.gamma * acq.gain + acq.offset
    pic = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8))
    if acq.blur > 0:
        pic = pic.filter(ImageFilter.GaussianBlur(acq.blur * short / 256))
    arr = np.asarray(pic, dtype=np.float32) + rng.normal(0, acq.noise * 255, (height, width))
    return np.clip(arr, 0, 255).astype(np.uint8), polygons


def _labelme(image_name: str, width: int, height: int, subtype: str, polygons: list) -> str:
    shapes = []
    for poly in polygons:
        xs, ys = zip(*poly, strict=True)
        corners = [[max(0.0, min(xs)), max(0.0, min(ys))], [min(width, max(xs)), min(height, max(ys))]]
        shapes.append(
            dict(
                label=subtype,
                points=corners,
                group_id=None,
                description="",
                shape_type="rectangle",
                flags={},
                mask=None,
            )
        )
    for poly in polygons:  # the release lists all rectangles, then all polygons
        points = [[min(max(x, 0.0), width), min(max(y, 0.0), height)] for x, y in poly]
        shapes.append(
            dict(label=subtype, points=points, group_id=None, description="", shape_type="polygon", flags={}, mask=None)
        )
    doc = dict(
        version="5.4.1",
        flags={},
        shapes=shapes,
        imagePath=f"..\\images\\{image_name}",
        imageData=None,
        imageHeight=height,
        imageWidth=width,
    )
    return json.dumps(doc, indent=2).replace("\n", "\r\n")


def generate(
    out: str | Path,
    n: int,
    seed: int = 0,
    size: int = 256,
    counts: dict[int, tuple[int, int, int]] | None = None,
    image_sizes: list[tuple[int, int]] | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """Write a synthetic BTXRD release of ``n`` images to ``out``; returns its sheet.

    ``size`` is the long side in pixels for centre 1 (centres differ around it);
    ``image_sizes`` (width, height) pairs, if given, are used in turn instead
    (e.g. the real release's sizes for benchmarks). ``workers`` > 1 renders the pictures in that many
    processes (3,746 at the release's sizes take ~25 minutes on one core), each picture from a random
    stream of its own (seed, index): the same release for any number of workers above 1, though not the
    pictures of ``workers=1``, whose one stream is kept so that every dataset made before stays as it was.
    """
    out = Path(out)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (out / ANNOTATIONS_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cells = _cell_counts(n, counts or RELEASE_COUNTS)
    tumour_patients, normal_rows, normal_c3 = [], [], []
    for (center, label), count in sorted(cells.items()):
        rows = _patients(rng, center, label, count)
        if label > 0:
            tumour_patients.extend(rows)
        elif center == 3:
            normal_c3.extend(rows)
        else:
            normal_rows.extend(rows)
    # Keep each patient's views adjacent but interleave cells, as in the release.
    tumour = _shuffle_runs(rng, tumour_patients)
    normal = _shuffle_runs(rng, normal_rows) + normal_c3  # centre-3 normals last: the .jpg quirk

    sheet_rows, pictures = [], []
    for index, meta in enumerate(tumour + normal, start=1):
        ext = ".jpg" if meta["label"] == 0 and meta["center"] == 3 else ".jpeg"
        image_id = f"IMG{index:06d}{ext}"
        if image_sizes:
            width, height = image_sizes[(index - 1) % len(image_sizes)]
        else:
            acq = ACQUISITION[meta["center"]]
            long_side = size * acq.size_scale * rng.uniform(0.85, 1.0)
            aspect = rng.uniform(0.65, 0.85)
            width, height = int(long_side * aspect), int(long_side)
            if meta["view"] == "lateral" and rng.random() < 0.3:
                width, height = height, width
        n_lesions = 0
        if meta["label"] > 0:
            n_lesions = 2 if meta["subtype"] == "multiple osteochondromas" and rng.random() < 0.5 else 1
        picture = (out, image_id, width, height, meta["label"], n_lesions, meta["center"], meta["subtype"])
        if workers > 1:
            pictures.append(((seed, index), *picture))
        else:
            _write_picture(rng, *picture)
        sheet_rows.append(_sheet_row(image_id, meta))
    if pictures:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_own_picture, pictures, chunksize=8))
    sheet = pd.DataFrame(sheet_rows, columns=list(SHEET_COLUMNS))
    sheet.to_excel(out / SHEET_NAME, index=False, engine="openpyxl")
    (out / SYNTHETIC_MARKER).write_text(  # last: a release without it is unfinished, or made before it existed
        f"Generated by btxrd.data.synth (n={n}, seed={seed}): drawings of bones, not radiographs. Results on\n"
        "these images say nothing about real ones; runs trained on them say so in their model cards.\n"
    )
    return sheet


def is_synthetic(root: str | Path) -> bool:
    """Whether the dataset at ``root`` was made by ``generate`` (the real release has no such file)."""
    return (Path(root) / SYNTHETIC_MARKER).is_file()


def _write_picture(
    rng: np.random.Generator,
    out: Path,
    image_id: str,
    width: int,
    height: int,
    label: int,
    n_lesions: int,
    center: int,
    subtype: str,
) -> None:
    """One image file, and its LabelMe file for a tumour."""
    pixels, polygons = render_radiograph(rng, width, height, label, n_lesions, ACQUISITION[center])
    Image.fromarray(pixels).save(out / IMAGES_DIR / image_id, quality=90)
    if label > 0:
        (out / ANNOTATIONS_DIR / f"{image_id.rsplit('.', 1)[0]}.json").write_bytes(
            _labelme(image_id, width, height, subtype, polygons).encode("utf-8")
        )


def _write_own_picture(job: tuple) -> None:
    """``_write_picture`` with a random stream of the picture's own (a worker process's task)."""
    stream, *picture = job
    _write_picture(np.random.default_rng(stream), *picture)


def _shuffle_runs(rng: np.random.Generator, rows: list[dict]) -> list[dict]:
    """Shuffle patients (runs of consecutive rows with the same patient), keeping each run together."""
    runs: list[list[dict]] = []
    for row in rows:
        same = runs and {k: v for k, v in runs[-1][-1].items() if k != "view"} == {
            k: v for k, v in row.items() if k != "view"
        }
        if same and row["view"] not in {r["view"] for r in runs[-1]}:
            runs[-1].append(row)
        else:
            runs.append([row])
    order = rng.permutation(len(runs))
    return [row for i in order for row in runs[i]]
