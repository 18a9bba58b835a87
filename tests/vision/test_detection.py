"""The detector's contract: decoding its outputs, boxes through EXIF rotation and the DCT-scaled decode, the
shipped graph on both in-process runtimes, and what it finds in a photo of several products or of none."""

import numpy as np
import pytest
from PIL import Image

from api.settings import REPO_ROOT
from tests.images import encode, sample_scene
from training.detection.metrics import match
from vision.detection import Box, DetectorManifest, crop, decode_detections, detector_input, iou_matrix, pixel_box
from vision.preprocess import InputSpec, decode
from vision.runtimes import create_detector

DETECTOR = REPO_ROOT / "triton_models" / "product_detector"


def test_iou_of_boxes():
    a = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]])
    b = np.array([[0, 0, 0.5, 0.5], [0.25, 0, 0.75, 0.5]])
    iou = iou_matrix(a, b)
    assert iou[0, 0] == pytest.approx(1.0)
    assert iou[0, 1] == pytest.approx(1 / 3)
    assert iou[1, 0] == pytest.approx(0.0)


def test_decoding_keeps_the_best_of_overlapping_boxes_above_the_threshold():
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.6], np.float32)
    boxes = np.array(
        [[0, 0, 0.4, 0.4], [0.02, 0.02, 0.42, 0.42], [0.5, 0.5, 0.9, 0.9], [0.1, 0.6, 0.3, 0.9], [0.6, 0, 1.2, 0.3]],
        np.float32,
    )
    found = decode_detections(scores, boxes, threshold=0.5, nms_iou=0.5, max_objects=10)
    assert [b.score for b in found] == pytest.approx([0.9, 0.7, 0.6])  # 0.8 overlaps 0.9; 0.2 under the threshold
    assert found[2].x1 == 1.0  # clipped to the photo
    assert len(decode_detections(scores, boxes, 0.5, 0.5, max_objects=1)) == 1


def test_a_box_in_pixels_is_never_empty_and_stays_inside():
    assert pixel_box(Box(0.5, 0.5, 0.5, 0.5), 100, 80) == (50, 40, 51, 41)
    assert pixel_box(Box(0.0, 0.0, 1.0, 1.0), 100, 80) == (0, 0, 100, 80)
    assert crop(Image.new("RGB", (100, 80)), Box(0.1, 0.25, 0.6, 0.75)).size == (50, 40)


@pytest.fixture(scope="module")
def detector():
    return create_detector("onnx", DETECTOR, threads=2)


def _found(detector, data: bytes) -> list[Box]:
    """The boxes the service finds: the detector on the whole-photo search's decode."""
    return detector.detect(detector_input(decode(data, InputSpec().resize_size), detector.manifest.input.size)[None])[0]


def test_the_shipped_detector_has_a_manifest_that_says_what_it_is():
    manifest = DetectorManifest.load(DETECTOR)
    assert manifest.version and manifest.input.dtype == "uint8" and manifest.input.layout == "NHWC"
    assert 0 < manifest.score_threshold < 1
    assert manifest.metrics["val_ap50"] > 0.5  # measured on scenes of val photos when it was trained


def test_each_product_of_a_basket_photo_gets_its_box(detector):
    scene, _ = sample_scene(count=3, seed=1)
    found = _found(detector, encode(scene.image, "JPEG", quality=90))
    hits = match(found, scene.boxes, 0.5)
    assert sorted(h for h in hits if h >= 0) == [0, 1, 2]
    assert len(found) <= 4


def test_a_photo_of_no_product_has_no_objects(detector):
    stripes = np.zeros((480, 640, 3), np.uint8)
    stripes[(np.arange(480) // 40) % 2 == 0] = (30, 60, 200)
    stripes[(np.arange(480) // 40) % 2 == 1] = (240, 220, 40)
    assert _found(detector, encode(Image.fromarray(stripes), "JPEG", quality=90)) == []


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_boxes_are_fractions_of_the_upright_photo_whatever_the_exif_rotation(detector, orientation):
    scene, _ = sample_scene(count=2, seed=2)
    upright = _found(detector, encode(scene.image, "JPEG", quality=95))
    transpose = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored_sideways = encode(scene.image.transpose(transpose[orientation]), "JPEG", quality=95, exif=exif.tobytes())
    rotated = _found(detector, stored_sideways)
    assert len(rotated) == len(upright) >= 2
    iou = iou_matrix(np.stack([b.as_array() for b in upright]), np.stack([b.as_array() for b in rotated]))
    assert (iou.max(axis=1) > 0.85).all()


def test_boxes_of_a_12_megapixel_photo_match_those_of_its_small_version(detector):
    scene, _ = sample_scene(count=3, seed=3)
    small = _found(detector, encode(scene.image, "JPEG", quality=95))
    large = scene.image.resize((4000, round(4000 * scene.image.height / scene.image.width)), Image.Resampling.BICUBIC)
    big = _found(detector, encode(large, "JPEG", quality=92))  # decoded DCT-scaled, never at full size
    iou = iou_matrix(np.stack([b.as_array() for b in small]), np.stack([b.as_array() for b in big]))
    assert len(big) == len(small) and (iou.max(axis=1) > 0.85).all()


def test_the_shipped_graph_gives_the_same_boxes_on_openvino(detector):
    pytest.importorskip("openvino")
    from vision.runtimes.onnx import onnx_session
    from vision.runtimes.openvino import CompiledGraph

    scenes = [sample_scene(count=c, seed=10 + c)[0] for c in (2, 3, 4)]
    pixels = np.stack([detector_input(s.image, detector.manifest.input.size) for s in scenes])
    graph = CompiledGraph(DETECTOR / detector.manifest.onnx_file, threads=2)
    ov_scores, ov_boxes = graph.run({"pixels": pixels}, ("scores", "boxes"))
    graph.close()
    ort_scores, ort_boxes = onnx_session(DETECTOR / detector.manifest.onnx_file).run(
        ["scores", "boxes"], {"pixels": pixels}
    )
    assert np.abs(ov_scores - ort_scores).max() < 1e-3
    relevant = ort_scores > 0.1
    assert np.abs(ov_boxes - ort_boxes)[relevant].max() < 2e-3


INT8 = REPO_ROOT / "triton_models" / "product_detector_int8"


def test_the_int8_detector_finds_the_boxes_of_the_fp32_one(detector):
    """The default under OpenVINO: `seesku quantize-detector`'s graph, gated on val scenes; on sample scenes
    it finds the same products with boxes that overlap the fp32 ones."""
    pytest.importorskip("openvino")
    from api.settings import Settings
    from vision.runtimes.openvino import OpenVinoDetector

    int8 = create_detector("openvino", INT8, threads=2)
    assert isinstance(int8, OpenVinoDetector) and Settings(inference="openvino").detector_dir == INT8
    manifest = int8.manifest
    assert manifest.precision == "int8" and manifest.quantization["gate"]["passed"]
    assert manifest.quantization["parent"] == detector.manifest.served_id
    for count in (2, 3, 4):
        scene, _ = sample_scene(count=count, seed=20 + count)
        pixels = detector_input(scene.image, manifest.input.size)[None]
        want, got = detector.detect(pixels)[0], int8.detect(pixels)[0]
        assert len(got) == len(want) == count
        iou = iou_matrix(np.stack([b.as_array() for b in want]), np.stack([b.as_array() for b in got]))
        assert (iou.max(axis=1) > 0.85).all()
    int8.close()
