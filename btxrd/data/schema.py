"""The BTXRD release's metadata schema (dataset.xlsx), as published."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = ("normal", "benign", "malignant")
CENTERS: tuple[int, ...] = (1, 2, 3)

ANATOMY_COLUMNS: tuple[str, ...] = (
    "hand",
    "ulna",
    "radius",
    "humerus",
    "foot",
    "tibia",
    "fibula",
    "femur",
    "hip bone",
    "ankle-joint",
    "knee-joint",
    "hip-joint",
    "wrist-joint",
    "elbow-joint",
    "shoulder-joint",
)
BENIGN_SUBTYPES: tuple[str, ...] = (
    "osteochondroma",
    "multiple osteochondromas",
    "simple bone cyst",
    "giant cell tumor",
    "osteofibroma",
    "synovial osteochondroma",
    "other bt",
)
MALIGNANT_SUBTYPES: tuple[str, ...] = ("osteosarcoma", "other mt")
SUBTYPE_COLUMNS: tuple[str, ...] = BENIGN_SUBTYPES + MALIGNANT_SUBTYPES
REGION_COLUMNS: tuple[str, ...] = ("upper limb", "lower limb", "pelvis")
VIEW_COLUMNS: tuple[str, ...] = ("frontal", "lateral", "oblique")
LABEL_COLUMNS: tuple[str, ...] = ("tumor", "benign", "malignant")

SHEET_COLUMNS: tuple[str, ...] = (
    ("image_id", "center", "age", "gender")
    + ANATOMY_COLUMNS
    + LABEL_COLUMNS
    + SUBTYPE_COLUMNS
    + REGION_COLUMNS
    + VIEW_COLUMNS
)
FLAG_COLUMNS: tuple[str, ...] = SHEET_COLUMNS[4:]

SHEET_NAME = "dataset.xlsx"
IMAGES_DIR = "images"
ANNOTATIONS_DIR = "Annotations"
