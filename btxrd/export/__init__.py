"""python -m btxrd.export MODEL_URI --onnx FILE [--images PATH ...] [--log]

A trained classifier as an ONNX graph that runs without this project (onnxruntime, TensorRT, a
hospital's inference server): uint8 radiographs (N, S, S) at the model's input size in, class
probabilities (N, 3) out, calibrated by the run's temperature. Letterboxing and resizing to S x S (and
CLAHE, for a run with data.preprocess=clahe) stay outside the graph, as ``btxrd.data.cache.model_input``
does them; the graph's metadata names the input size, the classes and the malignant thresholds.

MODEL_URI: a registered model (models:/btxrd-classifier/3, models:/btxrd-classifier@champion), a logged
one (models:/<model id>), a run's (runs:/<run id>/model) or a run id. The graph is checked with
onnxruntime against the logged model on the run's own test images (or --images), and refused when any
probability differs by more than 1e-4.
"""
