"""The glyph classifier: crops, its training data, learning, keeping, and reading plates with it."""

import json

import numpy as np
import pytest

from alpr.errors import AlprError
from alpr.glyphs import (
    GLYPH_SIZE,
    character_boxes,
    classify,
    glyph_crops,
    glyph_set,
    grey,
    jittered,
    restored,
    stored,
    train_glyph_net,
    train_glyphs,
)
from alpr.plates import CHARACTER_CLASSES
from alpr.postprocess import ReadOptions, read_plates
from handmade import plate_detections


def _drawn(char: str, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A grey image with one character drawn at a random place and size, and its box."""
    import cv2

    image = np.full((120, 160), rng.integers(150, 255), np.uint8)
    scale, x, y = rng.uniform(1.2, 2.2), rng.integers(10, 90), rng.integers(60, 100)
    cv2.putText(image, char, (int(x), int(y)), cv2.FONT_HERSHEY_SIMPLEX, scale, int(rng.integers(0, 80)), 3)
    (w, h), _ = cv2.getTextSize(char, cv2.FONT_HERSHEY_SIMPLEX, scale, 3)
    return image, (x, y - h, x + w, y)


def test_a_crop_is_the_glyph_size_normalized_and_defined_past_the_image_edge():
    rng = np.random.default_rng(0)
    image, box = _drawn("8", rng)
    crops = glyph_crops(grey(image), [box, (-30, -30, 10, 40), (0, 0, 20, 20)])
    assert crops.shape == (3, GLYPH_SIZE[1], GLYPH_SIZE[0]) and crops.dtype == np.float32
    assert abs(crops[0].mean()) < 1e-4 and crops[0].std() == pytest.approx(1, abs=1e-3)
    assert np.isfinite(crops).all()
    assert np.abs(crops[2]).max() == 0  # a flat patch stays flat, not noise blown up to deviation 1


def test_character_boxes_are_the_characters_of_a_coco_document_as_corners_and_class_ids():
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "categories": [{"id": 1, "name": "0"}, {"id": 11, "name": "a"}, {"id": 16, "name": "l_board"}],
            "annotations": [{"image_id": 1, "category_id": 11, "bbox": [10, 20, 5, 8]},
                            {"image_id": 1, "category_id": 16, "bbox": [0, 0, 50, 20]},
                            {"image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4]}]}
    assert character_boxes(coco) == {"a.jpg": [((10, 20, 15, 28), CHARACTER_CLASSES.index("a"))],
                                     "b.jpg": [((1, 2, 4, 6), 0)]}


def test_a_glyph_set_names_an_image_it_cannot_read(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "gone.jpg"}], "categories": [{"id": 1, "name": "0"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]}))
    with pytest.raises(AlprError, match=r"images/gone\.jpg: image not found"):
        glyph_set(tmp_path, "train", 1, 0)
    (tmp_path / "images" / "gone.jpg").write_bytes(b"no jpeg")
    with pytest.raises(AlprError, match=r"images/gone\.jpg: not an image file"):
        glyph_set(tmp_path, "train", 1, 0)


def test_training_crops_are_cut_from_the_grey_that_reading_cuts_from(synth_dir, tmp_path):
    """A JPEG decoded to grey by libjpeg differs from its colour decoding made grey (up to 9 levels here):
    the classifier trains on the grey it reads (``glyph_reader``: ``glyph_crops`` of ``grey`` of the image)."""
    import cv2

    from alpr.reader import load_image

    document = json.loads((synth_dir / "000001.json").read_text())
    boxes = [(*np.min(s["points"], 0), *np.max(s["points"], 0)) for s in document["shapes"] if len(s["label"]) == 1]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes((synth_dir / "000001.jpg").read_bytes())
    (tmp_path / "train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "0"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1]}
                        for x1, y1, x2, y2 in boxes]}))
    trained_on = glyph_set(tmp_path, "train", 0, 0).crops
    read = glyph_crops(grey(load_image(tmp_path / "images" / "a.jpg")), boxes)
    assert boxes and np.array_equal(trained_on, read.astype(np.float16))  # kept in float16: half the memory
    libjpeg_grey = cv2.imread(str(tmp_path / "images" / "a.jpg"), cv2.IMREAD_GRAYSCALE)
    assert not np.array_equal(trained_on, glyph_crops(grey(libjpeg_grey), boxes).astype(np.float16))


def test_a_glyph_sets_crops_and_labels_follow_the_images_copies_and_characters_in_order(synth_dir, tmp_path):
    from alpr.reader import load_image

    (tmp_path / "images").mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c}
                                                             for i, c in enumerate(CHARACTER_CLASSES)]}
    for image_id, name in enumerate(("000001", "000003", "000002"), start=1):  # the second holds no characters
        (tmp_path / "images" / f"{name}.jpg").write_bytes((synth_dir / f"{name}.jpg").read_bytes())
        coco["images"].append({"id": image_id, "file_name": f"{name}.jpg"})
        shapes = json.loads((synth_dir / f"{name}.json").read_text())["shapes"] if image_id != 2 else []
        for s in shapes:
            if s["label"] in CHARACTER_CLASSES:
                (x1, y1), (x2, y2) = np.min(s["points"], 0), np.max(s["points"], 0)
                category = CHARACTER_CLASSES.index(s["label"]) + 1
                coco["annotations"].append({"image_id": image_id, "category_id": category,
                                            "bbox": [x1, y1, x2 - x1, y2 - y1]})
    (tmp_path / "train.json").write_text(json.dumps(coco))
    glyphs = glyph_set(tmp_path, "train", 2, 0)
    crops, labels = [], []
    for image_id, name in ((1, "000001"), (3, "000002")):
        anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (a["bbox"] for a in anns)]
        rng = np.random.default_rng((0, image_id - 1))  # each image's own jitter
        image = grey(load_image(tmp_path / "images" / f"{name}.jpg"))
        crops += [glyph_crops(image, [jittered(box, rng) for box in boxes]) for _ in range(2)]
        labels += [a["category_id"] - 1 for a in anns] * 2
    assert len(labels) > 14 and glyphs.labels.tolist() == labels
    assert np.array_equal(glyphs.crops, np.concatenate(crops).astype(np.float16))


def test_a_train_split_without_characters_is_named_before_any_training(tmp_path):
    import cv2

    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "l_board"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 20, 10]}]}))
    with pytest.raises(AlprError, match="train split has no character boxes .* --glyph-epochs 0"):
        train_glyphs(tmp_path, tmp_path / "glyph_net.pth", 1)
    assert not (tmp_path / "glyph_net.pth").exists()


def test_the_glyph_net_learns_look_alike_glyphs_and_is_kept_whole(monkeypatch):
    import torch

    import alpr.glyphs

    rng = np.random.default_rng(1)
    samples = [(_drawn(char, rng), CHARACTER_CLASSES.index(char)) for _ in range(150) for char in "08"]
    crops = np.stack([glyph_crops(grey(image), [box])[0] for (image, box), _ in samples])
    labels = np.array([label for _, label in samples])
    train = type("Set", (), {"crops": crops[:240], "labels": labels[:240]})
    net = train_glyph_net(train, epochs=6, batch_size=32, channels=(8, 16, 16))
    read = classify(net, crops[240:]).argmax(1)
    assert (read == labels[240:]).mean() >= 0.9
    again = restored(torch.load(_saved(stored(net)), weights_only=True))  # as a checkpoint's meta keeps it
    assert np.allclose(classify(again, crops[240:]), classify(net, crops[240:]), atol=1e-6)
    assert classify(net, crops[:0]).shape == (0, len(CHARACTER_CLASSES))
    whole = classify(net, crops[240:])
    monkeypatch.setattr(alpr.glyphs, "CLASSIFY_BATCH", 7)  # a few at a time, as a val split's 60k are
    assert np.allclose(classify(net, crops[240:]), whole, atol=1e-6)


def _saved(kept: dict):
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(kept, buffer)
    buffer.seek(0)
    return buffer


def _glyphs(reads: str, score: float = 0.9, second: str = "7", second_score: float = 0.05):
    """A glyph reader that reads ``reads`` position by position, each character scoring ``score``,
    its second choice everywhere ``second``."""
    def glyphs(boxes):
        assert len(boxes) == len(reads)
        probabilities = np.full((len(boxes), len(CHARACTER_CLASSES)), 0.001, np.float32)
        for row, char in zip(probabilities, reads):
            row[CHARACTER_CLASSES.index(second)] = second_score
            row[CHARACTER_CLASSES.index(char.lower())] = score
        return probabilities
    return glyphs


def test_each_character_is_read_again_by_the_glyph_classifier_within_the_format():
    detections = plate_detections("12A3456")
    [plate] = read_plates(detections, glyphs=_glyphs("12A8456"))
    # scored among the kind at the place: 0.9 of the 0.9 + 0.05 + 8 x 0.001 the digits hold
    assert plate.text == "12A8456" and plate.char_scores[0] == pytest.approx(0.9 / 0.958)
    # a first choice of the wrong kind gives way to the best choice of the format's kind there
    [plate] = read_plates(detections, glyphs=_glyphs("1DA3456", second="7", second_score=0.2))
    assert plate.text == "17A3456" and plate.char_scores[1] == pytest.approx(0.2 / 0.209)
    [plate] = read_plates(detections, glyphs=_glyphs("12A3456", second="e", second_score=0.2))
    assert plate.text == "12A3456"


def test_a_character_the_glyph_classifier_is_unsure_of_leaves_the_plate_unread():
    """Not guessed: a flat reading, or a digit at a letter's place."""
    detections = plate_detections("12A3456")

    def flat(boxes):
        return np.full((len(boxes), len(CHARACTER_CLASSES)), 1 / len(CHARACTER_CLASSES), np.float32)

    [plate] = read_plates(detections, glyphs=flat)
    assert plate.text is None and plate.reason.startswith("characters read again unsure: '0' at 0.10, ")
    # at the letter's place the classifier is sure of a digit: the letters share 0.5 % of it, under
    # OTHER_KIND; a digit where a letter belongs is no letter, whatever the threshold
    [plate] = read_plates(detections, glyphs=_glyphs("1283456", second="7", second_score=0.05))
    assert plate.text is None and plate.reason == "characters read again unsure: 'A' at 0.00"
    [plate] = read_plates(detections, glyphs=_glyphs("1283456"), options=ReadOptions(char_threshold=0.15))
    assert plate.text is None


def test_a_letter_in_a_digits_place_is_not_read_as_the_digit_it_looks_like():
    """Issue 3's "letter in the wrong place", with the classifier: a glyph 0.9 an A where a digit
    belongs is no 4 (its look-alike at 0.07), though the 4 is most of what the digits hold."""
    detections = plate_detections("1A23456")
    [plate] = read_plates(detections, glyphs=_glyphs("1A23456", second="4", second_score=0.07))
    assert plate.text is None and "'4' at 0.07" in plate.reason


def test_without_all_seven_characters_the_glyph_classifier_is_not_asked():
    def never(boxes):
        raise AssertionError("asked")

    [plate] = read_plates(plate_detections("12A3456", drop=4), glyphs=never)
    assert plate.text is None


def test_the_grey_copy_is_made_only_for_an_image_with_characters_to_read():
    """4 bytes a pixel (64 MiB for a 16 MP photo): not for every image of a batch, found plates or not."""
    import cv2

    from alpr.glyphs import glyph_reader

    unusable = np.zeros((4, 4, 5), np.uint8)  # no grey copy can be made of it: making one would raise here
    read = glyph_reader(None, unusable)
    with pytest.raises(cv2.error):
        read([(0, 0, 2, 2)])
