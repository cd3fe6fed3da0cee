import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from pycocotools.coco import COCO

from alpr.dataset import (AnnotationError, InvalidAnnotations, _rounded, parse_fractions,
                           scan, split_of)
from alpr.errors import UsageError
from alpr.plates import BOARD_LABELS, CLASSES
from alpr.record import RecordOptions, record

ROOT = Path(__file__).parents[1]


def _first_with_plate(folder: Path) -> Path:
    return next(p for p in sorted(folder.glob("*.json")) if json.loads(p.read_text())["shapes"])


def _edit(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _char_index(document) -> int:
    return next(i for i, s in enumerate(document["shapes"]) if len(s["label"]) == 1)


def _break_unreadable(json_path):
    json_path.with_suffix(".jpg").write_bytes(b"this is not an image")


def _break_truncated(json_path):
    image = json_path.with_suffix(".jpg")
    image.write_bytes(image.read_bytes()[:-600])


def _break_missing(json_path):
    json_path.with_suffix(".jpg").unlink()


def _break_not_json(json_path):
    json_path.write_text("{not json")


def _break_not_labelme(json_path):
    json_path.write_text(json.dumps({"annotations": []}))


def _break_size(json_path):
    _edit(json_path, lambda d: d.update(imageWidth=d["imageWidth"] + 1))


def _break_label(json_path):
    _edit(json_path, lambda d: d["shapes"][0].update(label="car"))


def _break_points(json_path):
    _edit(json_path, lambda d: d["shapes"][0].update(points=d["shapes"][0]["points"][:2]))


def _break_outside(json_path):
    _edit(json_path, lambda d: d["shapes"][0]["points"][0].__setitem__(0, d["imageWidth"] + 5))


def _break_huge_number(json_path):
    _edit(json_path, lambda d: d["shapes"][0]["points"][0].__setitem__(0, 10 ** 400))  # no float holds it


def _break_text_number(json_path):
    _edit(json_path, lambda d: d["shapes"][0]["points"][0].__setitem__(0, "12.5"))


def _break_char_outside(json_path):
    def move(d):
        d["shapes"][_char_index(d)]["points"] = [[0, 0], [3, 0], [3, 3], [0, 3]]
    _edit(json_path, move)


def _break_rectangle(json_path):
    _edit(json_path, lambda d: d["shapes"][0].update(shape_type="rectangle", points=d["shapes"][0]["points"][:3]))


def _break_nul_in_image_path(json_path):
    _edit(json_path, lambda d: d.update(imagePath="a\u0000.jpg"))  # Path raises ValueError on it


def _break_surrogate_in_image_path(json_path):
    _edit(json_path, lambda d: d.update(imagePath="a\ud800.jpg"))  # valid JSON, no UTF-8 file name


def _break_nested(json_path):
    json_path.write_text("[" * 100_000 + "]" * 100_000)  # valid JSON that json.loads gives up on (RecursionError)


def _break_folder(json_path):
    json_path.unlink()
    json_path.mkdir()  # a folder named as a labelme file


BAD_INPUTS = {
    "unreadable image": (_break_unreadable, "unreadable image"),
    "truncated jpeg": (_break_truncated, "truncated JPEG"),
    "missing image": (_break_missing, "image not found"),
    "not json": (_break_not_json, "not valid JSON"),
    "not labelme": (_break_not_labelme, "not a labelme file: field 'shapes'"),
    "size mismatch": (_break_size, "imageWidth x imageHeight is"),
    "unknown label": (_break_label, "unknown label 'car'"),
    "too few points": (_break_points, "polygon has 2 point(s), needs at least 3"),
    "huge number": (_break_huge_number, "points must be a list of [x, y] numbers"),
    "text number": (_break_text_number, "points must be a list of [x, y] numbers"),
    "outside image": (_break_outside, "polygon lies outside the 320x240 image"),
    "char outside board": (_break_char_outside, "character lies outside every board"),
    "rectangle of 3 points": (_break_rectangle, "a rectangle has 2 points (two corners), this one 3"),
    "folder named .json": (_break_folder, "cannot be read: Is a directory"),
    "NUL in imagePath": (_break_nul_in_image_path, "imagePath 'a\\x00.jpg': not a file name (embedded null byte)"),
    "surrogate in imagePath": (_break_surrogate_in_image_path, "imagePath 'a\\ud800.jpg': not a file name"),
    "nested too deeply": (_break_nested, "not a labelme file: JSON nested too deeply to read"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_each_bad_input_is_reported_and_nothing_is_written(case, labelme_copy, tmp_path):
    break_file, message = BAD_INPUTS[case]
    broken = _first_with_plate(labelme_copy)
    break_file(broken)
    workdir = tmp_path / "work"
    with pytest.raises(InvalidAnnotations) as error:
        record(RecordOptions(labelme_copy, workdir, "bad", "1", dvc=False))
    assert len(error.value.errors) == 1
    assert str(broken) in str(error.value) and message in str(error.value)
    assert not workdir.exists() or not any(workdir.rglob("*.json"))


def test_a_labelme_rectangle_is_its_four_corners(labelme_copy):
    from alpr.dataset import load_labelme

    json_path = _first_with_plate(labelme_copy)
    shape = json.loads(json_path.read_text())["shapes"][0]
    xs, ys = [x for x, _ in shape["points"]], [y for _, y in shape["points"]]
    corners = [[min(xs), min(ys)], [max(xs), max(ys)]]  # as labelme saves a rectangle: two opposite corners
    _edit(json_path, lambda d: d["shapes"][0].update(shape_type="rectangle", points=corners))
    polygon = load_labelme(json_path, labelme_copy).polygons[0]
    assert polygon.label == shape["label"]
    assert polygon.points == (min(xs), min(ys), max(xs), min(ys), max(xs), max(ys), min(xs), max(ys))


def test_record_step_exits_nonzero_with_a_report(labelme_copy, tmp_path):
    _break_label(_first_with_plate(labelme_copy))
    _break_missing(sorted(labelme_copy.glob("*.json"))[-1])
    result = subprocess.run([sys.executable, "steps/record.py", "--source", str(labelme_copy), "--workdir",
                             str(tmp_path / "work"), "--dataset", "bad", "--version", "1", "--no-dvc"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert "2 invalid annotation file(s)" in result.stderr and "--skip-invalid" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "work" / "datasets").exists()


def test_skip_invalid_records_the_rest_and_writes_the_report(labelme_copy, tmp_path):
    broken = _first_with_plate(labelme_copy)
    _break_label(broken)
    result = record(RecordOptions(labelme_copy, tmp_path / "w", "skip", "1", skip_invalid=True, dvc=False))
    report = json.loads((result.path / "invalid.json").read_text())["skipped"]
    assert [r["file"] for r in report] == [str(broken)] and "unknown label" in report[0]["problem"]
    assert sum(c["images"] for c in result.manifest["counts"].values()) == 23


def test_skip_invalid_skips_a_nul_in_image_path_and_json_nested_too_deeply(labelme_copy, tmp_path):
    """Path's ValueError and json's RecursionError once aborted the whole record, --skip-invalid or not."""
    first, last = sorted(labelme_copy.glob("*.json"))[::23]
    _break_nul_in_image_path(first)
    _break_nested(last)
    result = record(RecordOptions(labelme_copy, tmp_path / "w", "skip", "1", skip_invalid=True, dvc=False))
    report = json.loads((result.path / "invalid.json").read_text())["skipped"]
    assert [r["file"] for r in report] == [str(first), str(last)]
    assert sum(c["images"] for c in result.manifest["counts"].values()) == 22


def test_coco_splits_load_with_pycocotools(synth_dir, tmp_path):
    result = record(RecordOptions(synth_dir, tmp_path / "w", "coco", "1", fractions=(0.6, 0.2, 0.2), dvc=False))
    names = set()
    for split in ("train", "val", "test"):
        coco = COCO(str(result.path / f"{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        for image in coco.loadImgs(coco.getImgIds()):
            assert (result.path / "images" / image["file_name"]).is_file()
            names.add(image["file_name"])
        for ann in coco.loadAnns(coco.getAnnIds()):
            x, y, w, h = ann["bbox"]
            assert ann["iscrowd"] == 0 and ann["area"] > 0 and w > 0 and h > 0
            assert len(ann["segmentation"][0]) >= 6
            assert coco.annToMask(ann).sum() > 0
    assert len(names) == 24
    manifest = result.manifest
    # each labelme shape, as COCO holds it: its class's id, its points, their box, its group and text
    for split in ("train", "val", "test"):
        coco = COCO(str(result.path / f"{split}.json"))
        for image in coco.loadImgs(coco.getImgIds()):
            shapes = json.loads((synth_dir / image["file_name"]).with_suffix(".json").read_text())["shapes"]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            assert len(anns) == len(shapes)
            for shape, ann in zip(shapes, anns):
                xs, ys = [x for x, _ in shape["points"]], [y for _, y in shape["points"]]
                assert ann["category_id"] == CLASSES.index(shape["label"]) + 1
                assert ann["segmentation"] == [[round(v, 2) for point in shape["points"] for v in point]]
                assert ann["bbox"] == [round(v, 2) for v in (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))]
                assert ann.get("group_id") == shape["group_id"]
                if shape["label"] in BOARD_LABELS:
                    assert ann["text"] == shape["description"].replace(" ", "")
    assert manifest["files"]["train.json"] and manifest["annotations"]["tag"] == "coco-ann-v1"


def test_split_is_deterministic_by_file_name():
    """The same in every process: a file's split never changes (no salted hash())."""
    names = [f"{i:06d}.jpg" for i in range(2000)]
    splits = [split_of(n) for n in names]
    elsewhere = subprocess.run([sys.executable, "-c", "from alpr.dataset import split_of; "
                                f"print(','.join(split_of(n) for n in {names!r}))"],
                               capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert splits == elsewhere.stdout.strip().split(",")
    assert 0.75 < splits.count("train") / len(names) < 0.85
    assert split_of("a.jpg", (0, 0, 1)) == "test"


def test_fraction_parsing_errors():
    assert parse_fractions("0.7,0.2,0.1") == (0.7, 0.2, 0.1)
    with pytest.raises(UsageError, match="sum to 1"):
        parse_fractions("0.5,0.5,0.5")
    with pytest.raises(UsageError, match="sum to 1"):
        parse_fractions("nan,0.5,0.5")


def test_scan_reports_duplicates_and_missing_folder(tmp_path, synth_dir):
    with pytest.raises(FileNotFoundError, match="nope: not found"):
        scan(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"000001.json: a file, not a folder \(--source: the labelme folder"):
        scan(synth_dir / "000001.json")
    folder = tmp_path / "dup"
    folder.mkdir()
    shutil.copy(synth_dir / "000001.json", folder / "a.json")
    shutil.copy(synth_dir / "000001.json", folder / "b.json")
    shutil.copy(synth_dir / "000001.jpg", folder / "000001.jpg")
    valid, errors = scan(folder)
    assert len(valid) == 1 and "already annotated by" in errors[0].problem


def _annotate(folder: Path, synth_dir: Path, image_name: str, json_name: str) -> None:
    """A copy of 000001's image and labelme file under other names."""
    shutil.copy(synth_dir / "000001.jpg", folder / image_name)
    document = json.loads((synth_dir / "000001.json").read_text())
    (folder / json_name).write_text(json.dumps({**document, "imagePath": image_name}))


def test_an_image_path_labelme_wrote_on_windows_is_found(tmp_path, synth_dir):
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "labels").mkdir()
    shutil.copy(synth_dir / "000001.jpg", tmp_path / "src" / "images" / "a.jpg")
    document = json.loads((synth_dir / "000001.json").read_text())
    (tmp_path / "src" / "labels" / "a.json").write_text(json.dumps({**document, "imagePath": "..\\images\\a.jpg"}))
    valid, errors = scan(tmp_path / "src")
    assert errors == [] and [item.image_path for item in valid] == [tmp_path / "src" / "images" / "a.jpg"]


def test_names_that_would_collide_in_the_database_or_the_annotations_are_refused(tmp_path, synth_dir):
    """MySQL's default collation takes A.jpg for a.jpg; a.jpg and a.png would both be recorded as a.json."""
    folder = tmp_path / "src"
    folder.mkdir()
    _annotate(folder, synth_dir, "a.jpg", "a.json")
    _annotate(folder, synth_dir, "A.JPG", "upper.json")
    _annotate(folder, synth_dir, "a.png", "a_png.json")
    valid, errors = scan(folder)
    assert [item.name for item in valid] == ["a.jpg"]
    problems = {Path(e.path).name: e.problem for e in errors}
    assert f"image {folder / 'A.JPG'} and {folder / 'a.jpg'} (annotated by {folder / 'a.json'}) would both be " \
        "recorded as a.jpg (names that differ only in case are one); rename one" == problems["upper.json"]
    _annotate(folder, synth_dir, "sub__b.jpg", "flat.json")
    (folder / "sub").mkdir()
    _annotate(folder / "sub", synth_dir, "b.jpg", "b.json")  # recorded flattened: sub__b.jpg
    problems = {Path(e.path).name: e.problem for e in scan(folder)[1]}
    assert f"image {folder / 'sub' / 'b.jpg'} and {folder / 'sub__b.jpg'} (annotated by {folder / 'flat.json'}) " \
        "would both be recorded as sub__b.jpg; rename one" == problems["b.json"]
    assert "both annotations would be recorded as a.json" in problems["a_png.json"]


def test_an_image_whose_recorded_name_would_be_too_long_for_a_file_is_named(tmp_path, synth_dir):
    folder = tmp_path / "src"
    deep = folder.joinpath(*["a" * 60] * 4)  # 4 folders of 60, b.jpg, 4 __: 253 bytes
    deep.mkdir(parents=True)
    _annotate(deep, synth_dir, "b.jpg", "b.json")
    valid, errors = scan(folder)
    assert valid == [] and "would be recorded as a name of 253 bytes (its folders joined by __), over 250" in \
        errors[0].problem


def test_an_image_in_a_folder_named_in_another_encoding_than_utf8_is_named(tmp_path, synth_dir):
    folder = tmp_path / "src"
    latin1 = folder / os.fsdecode("caf\xe9".encode("latin-1"))  # café as a Latin-1 zip names it: not UTF-8
    latin1.mkdir(parents=True)
    _annotate(latin1, synth_dir, "b.jpg", "b.json")
    valid, errors = scan(folder)
    assert valid == [] and [e.problem for e in errors] == [
        f"image {latin1 / 'b.jpg'} would be recorded as 'caf\\udce9__b.jpg', which is not UTF-8 text; rename it"]


def test_a_photo_turned_by_its_exif_orientation_has_the_size_labelme_shows(tmp_path, synth_dir):
    from PIL import Image

    folder = tmp_path / "src"
    folder.mkdir()
    with Image.open(synth_dir / "000001.jpg") as image:
        width, height = image.size
        exif = Image.Exif()
        exif[0x0112] = 6  # shown turned a quarter clockwise
        image.save(folder / "turned.jpg", exif=exif)
    document = json.loads((synth_dir / "000001.json").read_text())
    (folder / "turned.json").write_text(json.dumps({**document, "imagePath": "turned.jpg", "shapes": [],
                                                    "imageWidth": height, "imageHeight": width}))
    valid, errors = scan(folder)
    assert [item.name for item in valid] == ["turned.jpg"] and (valid[0].width, valid[0].height) == (height, width)
    (folder / "turned.json").write_text(json.dumps({**document, "imagePath": "turned.jpg", "shapes": [],
                                                    "imageWidth": width, "imageHeight": height}))
    valid, errors = scan(folder)
    assert not valid and f"but turned.jpg is {height}x{width}" in errors[0].problem
    with Image.open(synth_dir / "000001.jpg") as image:  # OpenCV does not turn a WebP; alpr.images does
        image.save(folder / "turned.webp", exif=exif)
    (folder / "turned.json").write_text(json.dumps({**document, "imagePath": "turned.webp", "shapes": [],
                                                    "imageWidth": height, "imageHeight": width}))
    valid, errors = scan(folder)
    assert [item.name for item in valid] == ["turned.webp"] and (valid[0].width, valid[0].height) == (height, width)
    with Image.open(synth_dir / "000001.jpg") as image:  # a phone's HDR photo: a JPEG that Pillow names MPO
        image.save(folder / "turned.jpg", "MPO", exif=exif, save_all=True, append_images=[image.resize((32, 18))])
    assert Image.open(folder / "turned.jpg").format == "MPO"
    (folder / "turned.webp").unlink()
    (folder / "turned.json").write_text(json.dumps({**document, "imagePath": "turned.jpg", "shapes": [],
                                                    "imageWidth": height, "imageHeight": width}))
    valid, errors = scan(folder)
    assert [item.name for item in valid] == ["turned.jpg"] and not errors
    cv2_height, cv2_width = cv2.imread(str(folder / "turned.jpg")).shape[:2]
    assert (cv2_width, cv2_height) == (height, width)  # OpenCV turns it too, as it was annotated


def test_many_files_are_checked_by_workers_and_their_problems_come_back(tmp_path, synth_dir):
    for i in range(9):  # 216 files: enough for the worker pool
        shutil.copytree(synth_dir, tmp_path / f"part{i}")
    broken = _first_with_plate(tmp_path / "part4")
    _break_label(broken)
    valid, errors = scan(tmp_path)
    assert len(valid) == 215 and [e.path for e in errors] == [broken] and "unknown label 'car'" in errors[0].problem
    error = pickle.loads(pickle.dumps(errors[0]))  # how workers send it
    assert isinstance(error, AnnotationError) and (error.path, error.problem) == (errors[0].path, errors[0].problem)


def test_coordinates_are_rounded_as_python_rounds_them():
    values = (0.0, -0.0, 1.005, 2.675, 0.125, 129.05, 129.049999, 1e-9, -0.004, 639.995, 12.0, 3.14159, 480.0)
    assert [list(map(repr, g)) for g in _rounded([values, values[:3], ()])] == [
        [repr(round(v, 2)) for v in values], [repr(round(v, 2)) for v in values[:3]], []]


def test_dataset_images_are_links_where_possible_else_copies(synth_dir, tmp_path, monkeypatch):
    image = sorted(synth_dir.glob("*.jpg"))[0]
    linked = record(RecordOptions(synth_dir, tmp_path / "a", "ds", "1", dvc=False)).path / "images" / image.name
    assert os.path.samefile(linked, image)

    def no_links(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    copied = record(RecordOptions(synth_dir, tmp_path / "b", "ds", "1", dvc=False)).path / "images" / image.name
    assert not os.path.samefile(copied, image) and copied.read_bytes() == image.read_bytes()
