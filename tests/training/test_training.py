"""Training pipeline on tiny generated data: readers, metrics with known answers, loss going down, resume."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import seesku
from training.augment import pk_batches
from training.data import load_photos
from training.losses import supcon_loss
from training.metrics import (
    confusion_matrix,
    mcnemar_exact,
    nearest_neighbour_accuracy,
    per_class_accuracy,
    recall_at_k,
    topk_accuracy,
)
from training.vision import TrainConfig, load_checkpoint, train

COLOURS = {"red-apple": (200, 30, 30), "green-pear": (40, 180, 60), "blue-carton": (40, 60, 200)}
COARSE = {"red-apple": "fruit", "green-pear": "fruit", "blue-carton": "packages"}


def _photo(path, colour, seed):
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(0, 25, (72, 72, 3)) + np.array(colour), 0, 255).astype(np.uint8)
    pixels[20 + seed % 20 : 40 + seed % 20, 10:50] = 255 - np.array(colour)  # a label that moves around
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """train/ and val/ splits, coarse/product folders, one catalogue photo per product."""
    root = tmp_path_factory.mktemp("tiny")
    for c, (product, colour) in enumerate(COLOURS.items()):
        for i in range(8):
            _photo(root / "train" / COARSE[product] / product / f"{i}.jpg", colour, 100 * c + i)
        for i in range(3):
            _photo(root / "val" / COARSE[product] / product / f"{i}.jpg", colour, 100 * c + 50 + i)
        _photo(root / "train" / COARSE[product] / product / "iconic.jpg", colour, 100 * c + 99)
    return root


def _config(data, out, **overrides):
    settings = dict(
        epochs=2,
        classes_per_batch=3,
        photos_per_class=2,
        sizes=[64],
        cache_side=72,
        embedding_dim=32,
        freeze_blocks=4,
        lr=3e-3,
        threads=2,
    )
    return TrainConfig(data=str(data), out=str(out), **{**settings, **overrides})


# -- data -----------------------------------------------------------------------------------------


def test_folder_reader_splits_labels_and_catalogue(tiny_folder):
    train_set = load_photos(tiny_folder, "train")
    val_set = load_photos(tiny_folder, "val")
    assert len(train_set) == 24 and len(val_set) == 9
    assert train_set.fine_labels == val_set.fine_labels  # the same label indices on every split
    assert set(train_set.coarse_labels) == {"fruit", "packages"}
    apple = train_set.fine_labels.index("red-apple")
    assert train_set.coarse_labels[train_set.fine_to_coarse[apple]] == "fruit"
    assert train_set.iconic[apple].name == "iconic.jpg"
    assert all(p.path.name != "iconic.jpg" for p in train_set.photos)


def test_csv_reader_with_and_without_split_column(tmp_path, tiny_folder):
    photos = sorted((tiny_folder / "train").rglob("*.jpg"))
    rows = [
        {
            "path": str(p),
            "product_id": p.parent.name,
            "fine": "",
            "coarse": p.parent.parent.name,
            "split": "val" if p.stem == "0" else "train",
            "iconic": "1" if p.stem == "iconic" else "",
        }
        for p in photos
    ]
    with open(tmp_path / "photos.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    train_set = load_photos(tmp_path / "photos.csv", "train")
    assert len(train_set) == 21 and len(load_photos(tmp_path / "photos.csv", "val")) == 3
    assert len(train_set.iconic) == 3 and train_set.fine_labels[0] in COLOURS  # fine falls back to product_id
    with pytest.raises(ValueError, match="missing column"):
        (tmp_path / "bad.csv").write_text("file,label\na.jpg,x\n")
        load_photos(tmp_path / "bad.csv", "train")


def test_grocery_store_reader(tmp_path):
    root = tmp_path / "dataset"
    _photo(root / "train/Fruit/Apple/Pink-Lady/Pink-Lady_001.jpg", (200, 60, 60), 1)
    _photo(root / "iconic-images-and-descriptions/Fruit/Apple/Pink-Lady/Pink-Lady_Iconic.jpg", (200, 60, 60), 2)
    (root / "iconic-images-and-descriptions/Fruit/Apple/Pink-Lady/Pink-Lady_Description.txt").write_text(
        "A crisp apple."
    )
    (root / "classes.csv").write_text(
        "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),Iconic Image Path (str),Product Description Path (str)\n"
        "Pink-Lady,0,Apple,0,/iconic-images-and-descriptions/Fruit/Apple/Pink-Lady/Pink-Lady_Iconic.jpg,"
        "/iconic-images-and-descriptions/Fruit/Apple/Pink-Lady/Pink-Lady_Description.txt\n"
    )
    (root / "train.txt").write_text("train/Fruit/Apple/Pink-Lady/Pink-Lady_001.jpg, 0, 0\n")
    photos = load_photos(tmp_path, "train")  # the root above dataset/ works too
    assert photos.fine_labels == ["Pink-Lady"] and photos.coarse_labels == ["Apple"]
    assert photos.photos[0].path.exists() and photos.iconic[0].exists()
    assert photos.descriptions[0] == "A crisp apple."
    assert len(photos.checksum()) == 64


# -- metrics with known answers --------------------------------------------------------------------


def test_topk_accuracy():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    targets = np.array([1, 2, 0])
    assert topk_accuracy(scores, targets, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, targets, 2) == pytest.approx(1 / 3)  # rows 1 and 2 rank their target third
    assert topk_accuracy(scores, targets, 3) == 1.0


def test_recall_and_nearest_neighbour():
    gallery = np.eye(3, dtype=np.float32)
    gallery_labels = np.array([0, 1, 2])
    queries = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0.6, 0.8]], dtype=np.float32)
    labels = np.array([0, 0, 1])
    # query 1 is nearest to item 1 (label 1, wrong), second nearest item 0 (right); query 2 nearest item 2 (wrong).
    assert recall_at_k(queries, labels, gallery, gallery_labels, 1) == pytest.approx(1 / 3)
    assert recall_at_k(queries, labels, gallery, gallery_labels, 2) == pytest.approx(1.0)
    assert nearest_neighbour_accuracy(queries, labels, gallery, gallery_labels) == pytest.approx(1 / 3)


def test_confusion_and_per_class():
    counts = confusion_matrix(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), 3)
    assert counts.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 0]]
    accuracy = per_class_accuracy(counts)
    assert accuracy[0] == pytest.approx(0.5) and accuracy[1] == pytest.approx(2 / 3) and np.isnan(accuracy[2])


def test_mcnemar_exact_on_known_splits():
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # all 6 discordant photos one way: 2 x 0.5^6
    assert mcnemar_exact(1, 5) == pytest.approx(2 * (1 + 6) / 64)
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(2, 9) == mcnemar_exact(9, 2)


def test_supcon_is_low_for_clustered_and_high_for_mixed_embeddings():
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.01], [1.0, -0.01], [0.01, 1.0], [-0.01, 1.0]]), dim=1
    )
    mixed = clustered[[0, 2, 1, 3]]
    assert supcon_loss(clustered, labels, 0.1) < 0.01 < supcon_loss(mixed, labels, 0.1)


def test_pk_batches_cover_every_photo_once_with_catalogue_anchors():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 4)
    iconic = {0: 100, 1: 101, 2: 102}
    batches = pk_batches(labels, iconic, p=2, k=2, seed=0)
    photos = [i for b in batches for i in b if i < 100]
    assert sorted(photos) == list(range(12))
    for batch in batches:
        classes = {labels[i] for i in batch if i < 100}
        assert {i for i in batch if i >= 100} == {iconic[c] for c in classes}
    assert batches == pk_batches(labels, iconic, p=2, k=2, seed=0)  # seeded: resume sees the same batches


# -- the loop ----------------------------------------------------------------------------------------


def test_training_lowers_the_loss_in_two_epochs(tiny_folder, tmp_path):
    train(_config(tiny_folder, tmp_path / "run"))
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["loss"] < history[0]["loss"]
    assert 0.0 <= history[1]["val_fine_top1"] <= 1.0 and "val_catalogue_r1" in history[1]
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "last.pt").exists()


def test_consistency_loss_is_zero_for_a_twin_alike_and_positive_for_another_photo(tiny_folder, tmp_path):
    from training.losses import consistency_loss
    from training.vision import train_logits

    model, _ = load_checkpoint(train(_config(tiny_folder, tmp_path / "run", epochs=1)))
    torch.manual_seed(0)
    photos = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    embedding, fine, _ = train_logits(model, photos)
    assert consistency_loss(embedding, fine, embedding, fine).item() == pytest.approx(0.0, abs=1e-5)
    assert consistency_loss(embedding, fine, embedding.flip(0), fine.flip(0)).item() > 1e-3


def test_training_with_channel_twins_records_the_recipe(tiny_folder, tmp_path):
    best = train(_config(tiny_folder, tmp_path / "run", channel_p=0.5, consistency_weight=1.0))
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert history[1]["loss"] < history[0]["loss"]
    assert torch.load(best, weights_only=False)["config"]["consistency_weight"] == 1.0


def test_the_reproduce_command_names_every_recipe_option(tmp_path):
    from training.export import _train_command

    # The served manifest's command is how the model is rebuilt: a left-out option rebuilds another model.
    command = _train_command(
        _config("data", tmp_path / "run", channel_p=0.5, consistency_weight=1.0, init="a.pt", fit_through="val")
    )
    assert "--channel-p 0.5 --consistency 1 --init a.pt --fit-through val" in command
    assert "--channel-p" not in _train_command(_config("data", tmp_path / "run"))


class _StopAfterFirstEpoch:
    """Stands in for the progress UI and interrupts like Ctrl-C right after the first checkpoint."""

    def stage(self, description):
        return None

    def epoch(self, *args):
        return None

    def epoch_done(self, record, improved):
        raise KeyboardInterrupt


def test_resume_continues_from_the_checkpoint(tiny_folder, tmp_path):
    train(_config(tiny_folder, tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_folder, tmp_path / "interrupted"), ui=_StopAfterFirstEpoch())
    assert torch.load(tmp_path / "interrupted" / "last.pt", weights_only=False)["epoch"] == 0
    train(_config(tiny_folder, tmp_path / "interrupted", threads=1), resume=True)
    # How much of the machine to use is the resuming process's choice, not part of the saved recipe.
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)

    def history(run):
        return [json.loads(line) for line in (tmp_path / run / "history.jsonl").read_text().splitlines()]

    straight, resumed = history("straight"), history("interrupted")
    assert [h["epoch"] for h in resumed] == [1, 2]
    # Same seeds, same batches, same optimiser and schedule state: the resumed run is the straight run.
    assert resumed[1]["loss"] == pytest.approx(straight[1]["loss"], rel=1e-3)
    assert resumed[1]["val_fine_top1"] == pytest.approx(straight[1]["val_fine_top1"])


def test_resume_without_checkpoint_is_a_clear_error(tiny_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_config(tiny_folder, tmp_path / "none"), resume=True)


def test_trained_checkpoint_exports_with_parity(tiny_folder, tmp_path):
    from training.export import export_trained
    from vision.manifest import ModelManifest

    best = train(_config(tiny_folder, tmp_path / "run", epochs=1))
    manifest = export_trained(best, tmp_path / "model", log=lambda m: None)
    assert manifest.metrics["parity_min_cosine"] >= 0.9999
    assert (
        ModelManifest.load(tmp_path / "model").embedding_dim == 32
        and (tmp_path / "model" / "1" / "model.onnx").exists()
    )
    assert manifest.fine_labels == load_photos(tiny_folder, "train").fine_labels and len(manifest.data_checksum) == 64
    assert manifest.command.startswith("seesku train vision --data")


def test_export_at_a_chosen_resolution_with_coarse_from_fine(tiny_folder, tmp_path):
    import onnxruntime as ort

    from training.export import export_trained
    from vision.preprocess import load_image

    best = train(_config(tiny_folder, tmp_path / "run", epochs=1))
    manifest = export_trained(
        best,
        tmp_path / "model",
        log=lambda m: None,
        input_size=96,
        crop_pct=1.0,
        coarse_from_fine=0.5,
        export_command="seesku export-onnx --input-size 96",
    )
    assert (manifest.input.size, manifest.input.crop_pct) == (96, 1.0)
    assert manifest.command.endswith(" && seesku export-onnx --input-size 96") and "fine_probs summed" in manifest.heads
    session = ort.InferenceSession(str(tmp_path / "model" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [96, 96, 3]

    photo = next(p for p in (tiny_folder / "val").rglob("*.jpg"))
    pixels = load_image(photo.read_bytes(), manifest.input.spec())[None]
    _, fine, coarse = session.run(None, {"pixels": pixels})
    model, state = load_checkpoint(best)  # coarse head alone
    with torch.no_grad():
        head = model(torch.from_numpy(pixels.copy()))[2].numpy()
    summed = np.zeros_like(head)
    for f, c in enumerate(state["fine_to_coarse"]):
        summed[:, c] += fine[:, f]
    np.testing.assert_allclose(coarse, 0.5 * head + 0.5 * summed, atol=1e-5)
    assert coarse.sum() == pytest.approx(1.0, abs=1e-5)


def test_export_with_the_training_photos_as_a_voting_gallery(tiny_folder, tmp_path):
    """fine_probs = (1 - w) x head + w x the softmax-weighted labels of the k nearest training photos,
    recomputed here in numpy (the vote training.select_gallery chooses with) from the checkpoint's own
    embeddings; a training photo's nearest is itself."""
    import onnxruntime as ort

    from training.export import export_trained
    from training.select_gallery import vote as gallery_vote
    from vision.export import embed_paths
    from vision.preprocess import load_image

    best = train(_config(tiny_folder, tmp_path / "run", epochs=1))
    manifest = export_trained(
        best, tmp_path / "model", log=lambda m: None, gallery_weight=0.5, gallery_k=3, gallery_temperature=0.1
    )
    assert "nearest of the" in manifest.heads and manifest.metrics["parity_min_cosine"] >= 0.9999
    assert (manifest.gallery.photos, manifest.gallery.k, manifest.gallery.weight) == (
        len(load_photos(tiny_folder, "train")),
        3,
        0.5,
    )
    session = ort.InferenceSession(str(tmp_path / "model" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])

    model, state = load_checkpoint(best)  # the heads alone
    model.eval()
    spec = manifest.input.spec()
    train_set = load_photos(tiny_folder, "train")
    reference = embed_paths(model, [p.path for p in train_set.photos], spec).numpy()
    labels = np.array([p.fine for p in train_set.photos])
    photos = [p.path for p in load_photos(tiny_folder, "val").photos[:4]] + [train_set.photos[0].path]
    pixels = np.stack([load_image(p.read_bytes(), spec) for p in photos])
    _, fine, coarse = session.run(None, {"pixels": pixels})
    with torch.no_grad():
        embedding, head_fine, head_coarse = (t.numpy() for t in model(torch.from_numpy(pixels.copy())))

    vote = gallery_vote(embedding @ reference.T, labels, head_fine.shape[1], 3, 0.1)  # its own known-answer test below
    np.testing.assert_allclose(fine, 0.5 * head_fine + 0.5 * vote, atol=1e-4)
    to_coarse = np.zeros((len(state["fine_labels"]), len(state["coarse_labels"])))
    to_coarse[np.arange(len(state["fine_to_coarse"])), state["fine_to_coarse"]] = 1
    np.testing.assert_allclose(coarse, 0.5 * head_coarse + 0.5 * vote @ to_coarse, atol=1e-4)
    assert vote[-1, train_set.photos[0].fine] >= vote[-1].max() - 1e-6  # the training photo votes for itself
    np.testing.assert_allclose(fine.sum(axis=1), 1.0, atol=1e-5)


def test_final_fit_through_val_trains_on_both_and_refuses_to_be_evaluated_on_them(tiny_folder, tmp_path):
    """`--fit-through val`: train + val photos, nothing held out, the last epoch exported; its gallery votes with
    every photo it saw, and `seesku eval vision` will not score it on a split it has seen."""
    from training.evaluate import evaluate
    from training.export import export_trained

    both = load_photos(tiny_folder, "train+val")
    assert len(both) == 24 + 9 and both.source.endswith(":train+val")
    assert both.fine_labels == load_photos(tiny_folder, "val").fine_labels

    best = train(_config(tiny_folder, tmp_path / "run", fit_through="val"))
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and not any("val_fine_top1" in h for h in history)
    assert torch.load(best, weights_only=False)["epoch"] == 1  # the last epoch, whatever its loss
    assert history[0]["images"] >= 24 + 9  # every train and val photo once an epoch (+ catalogue anchors)

    manifest = export_trained(best, tmp_path / "model", log=lambda m: None, gallery_weight=0.25, gallery_k=1)
    assert (
        manifest.trained_on == both.source
        and manifest.gallery.split == "train+val"
        and manifest.gallery.photos == 24 + 9
    )
    assert "--fit-through val" in manifest.command and manifest.metrics["best_epoch"] == 2.0
    for split in ("val", "train"):
        with pytest.raises(ValueError, match="was trained on folder:.*:train\+val"):
            evaluate(tmp_path / "model", tiny_folder, split, tmp_path / "report", log=lambda m: None)
    refused = seesku(
        "eval",
        "vision",
        "--data",
        str(tiny_folder),
        "--split",
        "val",
        "--model",
        str(tmp_path / "model"),
        "--out",
        str(tmp_path / "report"),
        data_dir=tmp_path / "service",
    )
    assert refused.returncode == 2 and "error:" in refused.stderr and "Traceback" not in refused.stderr
    # Another data set's val is fair game.
    other = tmp_path / "other"
    for product in COLOURS:
        for i in range(2):
            _photo(other / "val" / COARSE[product] / product / f"{i}.jpg", COLOURS[product], 1000 + i)
    assert evaluate(tmp_path / "model", other, "val", tmp_path / "report", log=lambda m: None)["photos"] == 2 * len(
        COLOURS
    )


def test_gallery_vote_weights_the_nearest_photos_by_softmax():
    from training.select_gallery import vote

    similarity = np.array([[0.9, 0.1, 0.8, 0.0]])  # reference photos labelled 0, 1, 1, 2
    labels = np.array([0, 1, 1, 2])
    np.testing.assert_allclose(vote(similarity, labels, 3, 1, 0.1), [[1, 0, 0]])
    share = np.exp(np.array([0.9, 0.8]) / 0.1)
    np.testing.assert_allclose(
        vote(similarity, labels, 3, 2, 0.1), [[share[0] / share.sum(), share[1] / share.sum(), 0]]
    )
    np.testing.assert_allclose(vote(similarity, labels, 3, 4, 100.0).sum(), 1.0)


def test_the_catalogue_teaches_the_model(tiny_folder, tmp_path):
    """`seesku train vision --from-catalog` trains on the data dir's catalogue photos, from a checkpoint."""
    started = tmp_path / "first"
    train(_config(tiny_folder, started, epochs=1, embedding_dim=512))
    with open(tmp_path / "catalog.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["product_id", "name", "fine_category", "coarse_category", "description", "images"])
        for product in COLOURS:
            photos = sorted((tiny_folder / "train" / COARSE[product] / product).glob("*.jpg"))
            writer.writerow([product, product, product, COARSE[product], "", ";".join(str(p) for p in photos)])
    data_dir = tmp_path / "data"
    assert seesku("catalog", "import", str(tmp_path / "catalog.csv"), data_dir=data_dir).returncode == 0
    out = tmp_path / "from-catalog"
    run = seesku(
        "train", "vision", "--from-catalog", "--out", str(out), "--init", str(started / "best.pt"),
        "--epochs", "1", "--sizes", "64", "--max-steps-per-epoch", "2", "--threads", "2", "--no-export",
        data_dir=data_dir,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "catalog" / "training.csv")))
    assert len(rows) == 27 and sum(r["iconic"] == "1" for r in rows) == 3
    assert {r["fine"] for r in rows} == set(COLOURS) and all((out / "catalog" / r["path"]).is_file() for r in rows)
    checkpoint = torch.load(out / "last.pt", weights_only=False)
    assert checkpoint["config"]["init"] == str(started / "best.pt") and checkpoint["epoch"] == 0


def test_a_checkpoint_start_keeps_every_weight_whose_shape_fits(tiny_folder, tmp_path):
    from training.vision import build_model, start_from

    train(_config(tiny_folder, tmp_path / "run", epochs=1))
    photos = load_photos(tiny_folder, "train")
    fresh = build_model(_config(tiny_folder, tmp_path / "other"), photos, pretrained=False)
    start_from(fresh, str(tmp_path / "run" / "best.pt"), photos)
    trained = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["model"]
    own = fresh.state_dict()
    assert all(torch.equal(own[k], v) for k, v in trained.items() if own[k].shape == v.shape)
    # the same number of classes in another order: the backbone carries over, the heads start anew
    photos.fine_labels = photos.fine_labels[::-1]
    reordered = build_model(_config(tiny_folder, tmp_path / "other"), photos, pretrained=False)
    before = reordered.state_dict()["fine_head.weight"].clone()
    start_from(reordered, str(tmp_path / "run" / "best.pt"), photos)
    assert torch.equal(reordered.state_dict()["fine_head.weight"], before)
    key = next(k for k in trained if k.startswith("backbone."))
    assert torch.equal(reordered.state_dict()[key], trained[key])
