"""From a run to a model someone can use: the logged MLflow model, the registry, and predictions
on new radiographs (JPEG, PNG, DICOM) with `python -m btxrd.predict`."""

from __future__ import annotations

import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from btxrd.data.cache import cache_for
from btxrd.data.dataset import BTXRDImages
from btxrd.errors import DataError
from btxrd.jobs.evaluate import evaluate_job
from btxrd.jobs.train import train_job
from btxrd.predict.images import image_files, predict_files
from btxrd.tasks.inference import Classifier
from btxrd.tracking import PARENT_RUN_ENV, Tracker
from btxrd.tracking.models import point_alias, register_best

from .conftest import PROJECT_ROOT
from .helpers import compose_config, runs, tiny, write_dicom

# In make test-integration (CI runs it): fresh processes loading MLflow models and the command line
# cost about a minute and a half, which make test's 5 minutes cannot hold.
pytestmark = [pytest.mark.integration, pytest.mark.slow]
CLASSES = ("p_normal", "p_benign", "p_malignant")


@pytest.fixture(scope="module")
def sweep(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Tracker, str, Path]:
    """Two finished classification runs under one parent, each with its logged model (in process)."""
    work = tmp_path_factory.mktemp("served")
    tracker = Tracker(f"sqlite:///{work / 'mlflow.db'}", "btxrd", work / "mlruns")
    parent = tracker.start_run("sweep", {"sweep": "parent", "sweep_dir": str(work)})
    with pytest.MonkeyPatch.context() as mp:  # as the sweep callback passes it; ./outputs under work
        mp.setenv(PARENT_RUN_ENV, parent)
        mp.chdir(work)
        for annotations in ("on", "off"):
            train_job(compose_config(tiny(synth_root, work, f"annotations={annotations}", "tracking.log_model=true")))
    tracker.end_run(parent)
    return tracker, parent, work


def _child(tracker: Tracker, parent: str, annotations: str):
    return next(r for r in tracker.children(parent) if r.data.tags["annotations"] == annotations)


def test_the_logged_model_scores_in_a_new_process_as_the_run_scored_its_test_part(sweep, synth_root: Path) -> None:
    tracker, parent, work = sweep
    run = _child(tracker, parent, "on")
    model_id = run.data.tags["logged_model_id"]
    logged = tracker.client.get_logged_model(model_id)
    assert logged.source_run_id == run.info.run_id and logged.status.to_proto() == logged.status.READY.to_proto()
    assert logged.experiment_id == run.info.experiment_id  # the experiment's Models tab lists it (not Default's)
    # The run's own test predictions (its test phase, from the dataset's cache) ...
    predictions = pd.read_csv(tracker.download_artifact(run.info.run_id, "predictions_test.csv", work / "dl"))
    files = [next(synth_root.glob(f"images/{image_id}")) for image_id in predictions["image_id"][:12]]
    # ... against the logged model, loaded by MLflow in a fresh process from the decoded files.
    code = (
        f"import mlflow, numpy as np; from PIL import Image; mlflow.set_tracking_uri({tracker.uri!r}); "
        f"model = mlflow.pyfunc.load_model('models:/{model_id}'); "
        f"out = [model.predict(np.asarray(Image.open(p).convert('L'))[None])"
        f"[['p_normal', 'p_benign', 'p_malignant']].to_numpy()[0] for p in {[str(f) for f in files]!r}]; "
        f"np.save({str(work / 'served.npy')!r}, np.stack(out))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=work)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "type hints" not in done.stderr  # predict's hints give MLflow no schema of its own, and no warning
    served = np.load(work / "served.npy")
    # float32 CSV and one forward pass per image instead of batches: equal to 1e-5
    np.testing.assert_allclose(served, predictions.loc[:11, list(CLASSES)].to_numpy(), atol=1e-5)


def test_an_image_is_prepared_exactly_as_the_evaluation_prepares_it(sweep, synth_root: Path) -> None:
    tracker, parent, work = sweep
    run = _child(tracker, parent, "off")
    classifier = Classifier(tracker.download_artifact(run.info.run_id, "checkpoints/best.pt", work / "ck"))
    table = pd.DataFrame({"image_id": ["IMG000001.jpeg", "IMG000002.jpeg"]})
    table["path"] = [str(synth_root / "images" / i) for i in table["image_id"]]
    table["label"] = 0
    cache = cache_for(table, classifier.image_size, classifier.settings.data, work / "cache")
    evaluation = BTXRDImages(table, cache, classifier.image_size, train=False)
    for i, path in enumerate(table["path"]):
        with Image.open(path) as image:
            prepared = classifier.prepare(image)
        assert np.array_equal(prepared, evaluation[i][0][0].numpy())


def test_predict_scores_jpeg_png_and_dicom_and_draws_grad_cam(sweep, synth_root: Path, tmp_path: Path) -> None:
    tracker, parent, work = sweep
    model_id = _child(tracker, parent, "on").data.tags["logged_model_id"]
    source = synth_root / "images" / "IMG000001.jpeg"
    gray = np.asarray(Image.open(source).convert("L"))
    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copy(source, folder / "a.jpeg")
    Image.fromarray(gray).save(folder / "b.png")
    twelve_bit = gray.astype(np.uint16) * 16  # the same picture in 12 bits
    rescale = {"RescaleSlope": 1, "RescaleIntercept": 0}
    write_dicom(folder / "c.dcm", twelve_bit, "MONOCHROME2", **rescale)
    write_dicom(folder / "d.dcm", 4095 - twelve_bit, "MONOCHROME1", **rescale)  # inverted: shows the same picture
    out = tmp_path / "predictions.csv"
    command = [
        sys.executable,
        "-m",
        "btxrd.predict",
        f"models:/{model_id}",
        str(folder),
        "--out",
        str(out),
        "--gradcam",
        str(tmp_path / "cams"),
        "--tracking-uri",
        tracker.uri,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"scored 4 image(s) with models:/{model_id}" in done.stdout
    table = pd.read_csv(out)
    assert [Path(f).name for f in table["file"]] == ["a.jpeg", "b.png", "c.dcm", "d.dcm"]
    assert list(table.columns) == ["file", *CLASSES, "predicted", "malignant_at_spec90", "malignant_at_spec95"]
    np.testing.assert_allclose(table[list(CLASSES)].sum(axis=1), 1, atol=1e-5)
    # One picture four ways: the JPEG decoded as the PNG holds it, and both DICOMs displayed as it
    probs = table[list(CLASSES)].to_numpy()
    np.testing.assert_allclose(probs, np.repeat(probs[:1], 4, axis=0), atol=1e-4)
    assert len(set(table["predicted"])) == 1
    cams = sorted(p.name for p in (tmp_path / "cams").glob("*.png"))
    assert cams == [f"{n}_gradcam_{table['predicted'][0]}.png" for n in "abcd"]
    assert Image.open(tmp_path / "cams" / cams[0]).size == (64, 64)

    # An unreadable file or a thumbnail: stop naming it, or a row with its error when asked to go on
    # (in process: the command line turns the DataError into its one line and exit 2).
    (folder / "e.png").write_bytes(b"not an image")
    Image.fromarray(gray[:20, :20]).save(folder / "f.png")
    classifier = Classifier(
        tracker.download_artifact(_child(tracker, parent, "on").info.run_id, "checkpoints/best.pt", tmp_path / "ck")
    )
    with pytest.raises(DataError, match=f"^{folder / 'e.png'}: not an image Pillow or pydicom can read"):
        predict_files(classifier, image_files([folder]))
    result = predict_files(classifier, image_files([folder]), skip_unreadable=True)
    names = [Path(f).name for f in result.table["file"]]
    assert result.n_failed == 2 and names == ["a.jpeg", "b.png", "c.dcm", "d.dcm", "e.png", "f.png"]  # input order
    errors = result.table.set_index(result.table["file"].map(lambda f: Path(f).name))["error"]
    assert errors["f.png"] == f"{folder / 'f.png'}: 20 x 20 px is no radiograph (at least 32 px a side)"
    np.testing.assert_allclose(result.table.loc[errors.isna().to_numpy(), list(CLASSES)], probs, atol=1e-4)
    # A model that does not exist: one line.
    missing = [
        sys.executable,
        "-m",
        "btxrd.predict",
        "models:/no-such-model/1",
        str(folder),
        "--tracking-uri",
        tracker.uri,
    ]
    done = subprocess.run(missing, capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: models:/no-such-model/1: ")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_pickle_in_a_model_folder_is_refused(sweep, tmp_path: Path) -> None:
    tracker, parent, work = sweep
    model_id = _child(tracker, parent, "off").data.tags["logged_model_id"]
    folder = Path(
        mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path), tracking_uri=tracker.uri)
    )
    [checkpoint] = (folder / "artifacts").rglob("*.pt")
    marker = tmp_path / "code_ran"
    checkpoint.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    with pytest.raises(DataError, match="refusing to load .*: it is not a plain weights checkpoint"):
        mlflow.pyfunc.load_model(str(folder))
    assert not marker.exists()
    assert not list(folder.rglob("python_model.pkl"))  # the model is stored as code, never as a pickle


def test_the_best_run_by_validation_is_registered_with_its_card_and_alias_and_evaluated_by_its_uri(
    sweep, tmp_path: Path
) -> None:
    tracker, parent, work = sweep
    children = tracker.children(parent)
    best = max(children, key=lambda r: r.data.metrics["best_val_macro_f1"])
    # As in a sweep's launching process, whose global tracking URI points elsewhere: MLflow resolved a
    # models:/<id> source through it, and registering failed ("Logged model with ID ... not found").
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    registered = register_best(tracker, parent, "btxrd-test")
    assert registered == (best.info.run_name, "1")
    point_alias(tracker, "btxrd-test", "champion", "1")
    version = tracker.client.get_model_version("btxrd-test", "1")
    assert version.run_id == best.info.run_id and version.tags["run_id"] == best.info.run_id
    assert version.tags["best_val_macro_f1"] == f"{best.data.metrics['best_val_macro_f1']:.4f}"  # chosen by validation
    low, high = best.data.metrics["test_macro_f1_ci_low"], best.data.metrics["test_macro_f1_ci_high"]
    assert version.tags["test_macro_f1"] == f"{best.data.metrics['test_macro_f1']:.4f} [{low:.4f}, {high:.4f}]"
    # The model card: what it is, its data (part sizes), every test metric with its interval, its limits
    card = version.description
    metrics = best.data.metrics
    assert f"`val_macro_f1` = {metrics['best_val_macro_f1']:.4f}" in card
    assert "**Trained and tested on generated data**" in card  # the tests' dataset is synth's
    assert f"| test | {int(best.data.params['data.n_test'])} | " in card
    assert f"| macro_f1 | {metrics['test_macro_f1']:.3f} [{low:.3f}, {high:.3f}] |" in card
    assert f"| spec90 | {metrics['malignant_threshold_at_spec90']:.4f} |" in card
    assert "## Subgroups (test part, macro-F1)" in card and "| centre | 1 |" in card
    assert "## Intended use" in card and "Not a medical device" in card and len(card) <= 5000
    assert tracker.client.get_model_version_by_alias("btxrd-test", "champion").version == 1
    assert register_best(tracker, parent, "btxrd-test")[1] == "2"  # a second sweep's best: the next version
    point_alias(tracker, "btxrd-test", "champion", "2")
    assert tracker.client.get_model_version_by_alias("btxrd-test", "champion").version == 2

    metrics = evaluate_job(
        compose_config(
            ["model_uri=models:/btxrd-test@champion", f"paths.root={work}", f"tracking.uri={tracker.uri}"], "evaluate"
        )
    )
    for key in ("test_macro_f1", "test_accuracy", "test_auroc_macro", "test_macro_f1_ci_low"):
        assert metrics[key] == pytest.approx(best.data.metrics[key], abs=1e-6), key
    assert [r for r in runs(work) if r.data.tags.get("evaluation") == "true"]


def test_the_served_model_answers_400_to_input_it_cannot_score(sweep, synth_root: Path) -> None:
    """What `mlflow models serve` does with a JSON request, called directly (its FastAPI app needs httpx):
    before, float pixels in 0-1 were cast to uint8 zeros and scored as a black image, and 1 x 1 images were
    scored."""
    import json

    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import invocations

    tracker, parent, _ = sweep
    mlflow.set_tracking_uri(tracker.uri)
    model = mlflow.pyfunc.load_model(f"models:/{_child(tracker, parent, 'off').data.tags['logged_model_id']}")
    schema = model.metadata.get_input_schema()
    picture = np.asarray(Image.open(next(synth_root.glob("images/*.jpeg"))).convert("L"))

    def ask(pixels) -> tuple[int, str]:
        try:
            answer = invocations(json.dumps({"inputs": pixels}), "application/json", model, schema)
        except MlflowException as exc:
            return exc.get_http_status_code(), exc.message
        return answer.status, answer.response

    status, body = ask(picture[None].tolist())
    assert status == 200 and set(CLASSES) <= set(json.loads(body)["predictions"][0])
    status, message = ask((picture[None] / 255.0).tolist())  # floats in 0-1
    assert status == 400 and "no radiograph: send uint8 values 0-255" in message
    status, message = ask([[[128]]])
    assert status == 400 and "image 0: 1 x 1 px is no radiograph (at least 32 px a side)" in message


def test_the_exported_onnx_graph_scores_like_the_logged_model_without_btxrd(
    sweep, synth_root: Path, tmp_path: Path
) -> None:
    import onnx
    import onnxruntime

    tracker, parent, work = sweep
    run = _child(tracker, parent, "on")
    out = tmp_path / "exported" / "model.onnx"
    command = [sys.executable, "-m", "btxrd.export", run.info.run_id, "--onnx", str(out), "--log"]
    done = subprocess.run(
        [*command, "--tracking-uri", tracker.uri], capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # checked against the logged model on the run's own test images, within 1e-4 (float32)
    checked = re.search(r"on (\d+) test image\(s\) of the run .*: largest probability difference (\S+)", done.stdout)
    assert checked and int(checked[1]) == min(64, int(run.data.params["data.n_test"])) and float(checked[2]) < 1e-4
    # What a deployer has: onnxruntime, no btxrd. A dynamic batch of prepared uint8 inputs, probabilities out.
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert metadata["classes"] == '["normal", "benign", "malignant"]' and metadata["temperature"]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    [given] = session.get_inputs()
    assert given.type == "tensor(uint8)" and given.shape[1:] == [64, 64] and not isinstance(given.shape[0], int)
    predictions = pd.read_csv(tracker.download_artifact(run.info.run_id, "predictions_test.csv", tmp_path / "dl"))
    from btxrd.tracking.models import load_classifier

    classifier = load_classifier(f"models:/{run.data.tags['logged_model_id']}", tracker.uri)
    for batch in (1, 5):
        files = predictions["image_id"][:batch]
        inputs = np.stack([classifier.prepare(Image.open(synth_root / "images" / name)) for name in files])
        [probabilities] = session.run(None, {"images": inputs})
        assert probabilities.shape == (batch, 3)
        np.testing.assert_allclose(probabilities, predictions.loc[: batch - 1, list(CLASSES)].to_numpy(), atol=1e-4)
    # --log: the file beside the logged model
    listed = tracker.client.list_logged_model_artifacts(run.data.tags["logged_model_id"], "onnx")
    assert [Path(a.path).name for a in listed] == ["model.onnx"]
