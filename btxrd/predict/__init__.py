"""Score new radiographs with a trained classifier: JPEG, PNG (any mode Pillow reads) and DICOM.

Each image is decoded (DICOM through its modality and VOI LUTs, MONOCHROME1 inverted), prepared as
the run's evaluation prepared its test images, and scored; the table has one row per file: the
class probabilities, the predicted class and the malignant decision at each operating point the
model carries (thresholds chosen on its run's validation part). Grad-CAM overlays on request.
"""
