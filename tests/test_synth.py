import json

import cv2
import numpy as np
import pytest
from labelme import LabelFile

from alpr.errors import UsageError
from alpr.plates import BOARD_LABELS, CHARACTER_CLASSES, MAIN_LABELS, SUB_LABELS, Layout, label_char, parse_plate
from alpr.synth import SynthOptions, generate

from conftest import SMALL, run_step_script


def _plates(shapes):
    by_group = {}
    for shape in shapes:
        by_group.setdefault(shape["group_id"], []).append(shape)
    return by_group.values()


def _inside(points, polygon, tolerance=1.0):
    contour = np.float32(polygon).reshape(-1, 1, 2)
    return all(cv2.pointPolygonTest(contour, (float(x), float(y)), True) >= -tolerance for x, y in points)


def _read_row(chars):
    return "".join(label_char(c["label"]) for c in sorted(chars, key=lambda c: np.mean(c["points"], 0)[0]))


def test_labelme_loader_reads_every_file(synth_dir):
    files = sorted(synth_dir.glob("*.json"))
    assert len(files) == 24
    for path in files:
        label_file = LabelFile(str(path))
        assert label_file.image_path == path.with_suffix(".jpg").name
        assert all(s["shape_type"] == "polygon" for s in label_file.shapes)


def test_characters_lie_inside_their_board_and_read_back_the_text(synth_dir):
    plates_seen, layouts = 0, set()
    for path in sorted(synth_dir.glob("*.json")):
        document = json.loads(path.read_text())
        for shapes in _plates(document["shapes"]):
            board = next(s for s in shapes if s["label"] in BOARD_LABELS)
            layout = BOARD_LABELS[board["label"]]
            layouts.add(layout)
            sub = next(s for s in shapes if s["label"] in SUB_LABELS)
            main = next(s for s in shapes if s["label"] in MAIN_LABELS)
            chars = [s for s in shapes if s["label"] in CHARACTER_CLASSES]
            assert len(chars) == 7
            for char in chars:
                assert _inside(char["points"], board["points"]), (path, char)
            sub_chars = [c for c in chars if _inside([np.mean(c["points"], 0)], sub["points"])]
            main_chars = [c for c in chars if _inside([np.mean(c["points"], 0)], main["points"])]
            text = parse_plate(board["description"])
            assert _read_row(sub_chars) == text.sub_text
            assert _read_row(main_chars) == text.serial
            if layout is Layout.TWO_ROW:  # sub text sits above the serial
                assert np.mean(sub["points"], 0)[1] < np.mean(main["points"], 0)[1]
            plates_seen += 1
    assert plates_seen > 10 and layouts == set(Layout)


def test_plates_do_not_overlap(synth_dir):
    for path in sorted(synth_dir.glob("*.json")):
        boxes = []
        for shape in json.loads(path.read_text())["shapes"]:
            if shape["label"] in BOARD_LABELS:
                pts = np.array(shape["points"])
                boxes.append((*pts.min(0), *pts.max(0)))
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], path


def test_same_seed_gives_byte_identical_files(tmp_path, synth_dir):
    again = tmp_path / "again"
    generate(again, 24, seed=7, options=SMALL, workers=1, progress=False)
    for path in sorted(synth_dir.iterdir()):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name
    other = tmp_path / "other"
    generate(other, 2, seed=8, options=SMALL, workers=1, progress=False)
    assert (other / "000000.jpg").read_bytes() != (synth_dir / "000000.jpg").read_bytes()


def test_user_backgrounds_are_used(tmp_path):
    backgrounds = tmp_path / "bg"
    backgrounds.mkdir()
    cv2.imwrite(str(backgrounds / "red.png"), np.full((300, 400, 3), (0, 0, 255), np.uint8))
    (backgrounds / "._red.png").write_bytes(b"\0\5\26\7 macOS metadata")  # hidden: no image, left out
    (backgrounds / ".trash").mkdir()
    cv2.imwrite(str(backgrounds / ".trash" / "blue.png"), np.full((300, 400, 3), (255, 0, 0), np.uint8))
    out = tmp_path / "out"
    generate(out, 6, seed=1, backgrounds=backgrounds, options=SynthOptions(200, 150, 1, 1.0), progress=False)
    for path in sorted(out.glob("*.jpg")):
        image = cv2.imread(str(path)).astype(float)
        assert image[..., 2].mean() > image[..., 0].mean() + 50  # still red: the photo is the background


def test_bad_backgrounds_folder_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_step_script("synth", "--out", str(tmp_path / "o"), "--count", "1", "--backgrounds", str(empty))
    assert result.returncode == 1
    assert f"{empty}: no images" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name, content, problem", [
    ("tiny.png", cv2.imencode(".png", np.zeros((5, 5, 3), np.uint8))[1].tobytes(), "5x5 px, under 8 px a side"),
    ("broken.jpg", b"not a jpeg", "not a readable image"),
    ("cut.jpg", cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))[1].tobytes()
     [:-2000], "not a readable image (truncated JPEG"),  # its header whole: it opens
    ("in/cut.png", cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))[1]
     .tobytes()[:-3000], "not a readable image ("),  # in a subfolder: named from the folder given
])
def test_a_background_that_cannot_be_used_is_named_before_any_image_is_written(tmp_path, name, content, problem):
    """Among good photos too: not when a draw first picks it, deep into a run, with images written."""
    backgrounds = tmp_path / "bg"
    (backgrounds / name).parent.mkdir(parents=True)
    (backgrounds / name).write_bytes(content)
    cv2.imwrite(str(backgrounds / "good.jpg"), np.full((64, 64, 3), 90, np.uint8))
    result = run_step_script("synth", "--out", str(tmp_path / "o"), "--count", "20", "--backgrounds", str(backgrounds))
    assert result.returncode == 1
    assert f"{backgrounds}: 1 background(s) not usable: {name}: {problem}" in result.stderr
    assert "Traceback" not in result.stderr and not list((tmp_path / "o").glob("*.jpg"))


@pytest.mark.parametrize("options, message", [
    (dict(width=0), "at least 8 px a side"), (dict(max_plates=0), "--max-plates 0: at least 1"),
    (dict(empty_fraction=2), "--empty-fraction 2: a share"),
])
def test_flags_that_cannot_draw_are_refused(options, message):
    from alpr.errors import UsageError
    from alpr.synth import SynthOptions

    with pytest.raises(UsageError, match=message):
        SynthOptions(**options)


def test_a_smaller_run_into_the_same_folder_warns_of_the_files_left(tmp_path):
    def synth(count: int):
        return run_step_script("synth", "--out", str(tmp_path), "--count", str(count), "--width", "64",
                               "--height", "48", "--workers", "1", "--no-progress")

    assert synth(3).returncode == 0
    again = synth(1)
    assert again.returncode == 0 and "warning: 4 files of an earlier, larger run remain" in again.stderr
    assert "000001.jpg" in again.stderr and "warning" not in synth(3).stderr


def test_a_second_synth_into_a_folder_being_written_is_refused(tmp_path):
    """Two runs into one folder would rename each other's partial files and mix their images."""
    from alpr.files import held_alone

    out = tmp_path / "plates"
    generate(out, 1, seed=1, options=SMALL, workers=1, progress=False)
    with held_alone(out / ".alpr-synth", "held by this test"):  # as a run writing there holds it
        with pytest.raises(UsageError, match=f"{out}: another synth is writing into it"):
            generate(out, 2, seed=2, options=SMALL, workers=1, progress=False)
    assert not (out / "000001.json").exists()
    assert (out / ".alpr-synth").read_text() == "alpr synth writes here\n"  # the mark kept, lock and all
    generate(out, 2, seed=2, options=SMALL, workers=1, progress=False)
    assert (out / "000001.json").is_file()


def test_synth_writes_only_into_an_empty_folder_or_one_of_its_own(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "car.jpg").write_bytes(b"my photo")
    (mine / "000000.json").write_text("{}")
    with pytest.raises(UsageError, match=r"mine holds files synth did not write \(000000.json, 2 in all\)"):
        generate(mine, 2, seed=1, options=SMALL, workers=1, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["000000.json", "car.jpg"]
    assert (mine / "000000.json").read_text() == "{}"
    frames = tmp_path / "frames"  # the user's labelme frames, named as synth names its files
    frames.mkdir()
    (frames / "000001.jpg").write_bytes(b"a frame")
    (frames / "000001.json").write_text('{"shapes": []}')
    with pytest.raises(UsageError, match="frames holds files synth did not write"):
        generate(frames, 2, seed=1, options=SMALL, workers=1, progress=False)
    assert (frames / "000001.jpg").read_bytes() == b"a frame" and not (frames / ".alpr-synth").exists()

    ours = tmp_path / "ours"
    generate(ours, 1, seed=1, options=SMALL, workers=1, progress=False)
    (ours / "notes.txt").write_text("the user's, in a folder synth wrote")
    generate(ours, 2, seed=1, options=SMALL, workers=1, progress=False)
    assert (ours / "000001.json").is_file()


def test_backgrounds_of_16_bit_grey_and_phone_photos_are_read_as_seen(tmp_path):
    from PIL import Image

    from alpr.backgrounds import _read_photo

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "grey16.png")  # 16-bit grey: clipped, it was almost all white
    assert abs(float(_read_photo(str(tmp_path / "grey16.png")).mean()) - 127.5) < 3
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turned 90 degrees, as phones save their photos
    Image.new("RGB", (40, 20)).save(tmp_path / "phone.jpg", exif=exif)
    assert _read_photo(str(tmp_path / "phone.jpg")).shape[:2] == (40, 20)
    twelve = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (32, 1))  # a 12-bit camera's, in 16-bit words
    Image.fromarray(twelve).save(tmp_path / "grey12.png")  # scaled as 16-bit, it was almost black
    assert abs(float(_read_photo(str(tmp_path / "grey12.png")).mean()) - 127.5) < 3
    Image.fromarray(ramp).save(tmp_path / "grey16-turned.png", exif=exif)  # a 16-bit photo turned upright too
    assert _read_photo(str(tmp_path / "grey16-turned.png")).shape[:2] == (64, 32)
    depths = np.tile(np.linspace(0, 1000, 64, dtype=np.float32), (32, 1))  # floats past 1: were clipped, white
    Image.fromarray(depths).save(tmp_path / "depths.tiff")
    assert abs(float(_read_photo(str(tmp_path / "depths.tiff")).mean()) - 127.5) < 3


def test_a_large_background_photo_is_kept_at_twice_the_output_size():
    """A worker caches 8 photos: whole, 48 MP ones took 146 MB each."""
    pytest.importorskip("skimage")  # its sample photos are the built-in ones
    from alpr.backgrounds import Backgrounds, _read_photo

    Backgrounds().check()  # built in: no folder to name, none to fail
    photo = _read_photo(str(Backgrounds().photos[0]), (64, 48))
    assert min(photo.shape[1] / 64, photo.shape[0] / 48) == pytest.approx(2, abs=0.05)
    whole = _read_photo(str(Backgrounds().photos[0]))
    assert photo.shape[0] < whole.shape[0] and photo.mean() == pytest.approx(whole.mean(), abs=2)


def test_flags_synth_cannot_use_are_named_before_anything_is_written(tmp_path):
    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "a.jpg"), np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "file").write_text("mine")
    for out, kwargs, problem in [(tmp_path / "photos" / "out", {"backgrounds": tmp_path / "photos"}, "lies in"),
                                 (tmp_path / "file", {}, "a file, not a folder"),
                                 (tmp_path / "new", {"seed": -1}, "--seed must be >= 0")]:
        with pytest.raises(UsageError, match=problem):
            generate(out, 2, **{"seed": 0, **kwargs}, progress=False)
        assert not (tmp_path / "photos" / "out").exists() and not (tmp_path / "new").exists()
    assert (tmp_path / "file").read_text() == "mine"


def _synth_in_background(out, count):
    import subprocess
    import sys

    from conftest import ROOT, interruptible

    return subprocess.Popen([sys.executable, "steps/synth.py", "--out", str(out), "--count", str(count),
                             "--workers", "2", "--seed", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=interruptible)


def _wait_for_images(out, process):
    import time

    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("*.jpg"))) < 8 and process.poll() is None:
        time.sleep(0.1)


def test_ctrl_c_stops_a_synth_of_several_workers_at_the_images_they_are_on(tmp_path):
    import os
    import signal

    out = tmp_path / "out"
    process = _synth_in_background(out, 5000)
    _wait_for_images(out, process)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
    assert process.wait(timeout=30) != 0  # it hung, its workers going through the whole queue
    assert len(list(out.glob("*.jpg"))) < 5000


def test_a_synth_worker_that_dies_fails_the_run_clearly(tmp_path):
    import os
    import signal

    out = tmp_path / "out"
    process = _synth_in_background(out, 5000)
    _wait_for_images(out, process)
    worker = int(open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()[0])
    os.kill(worker, signal.SIGKILL)  # as the kernel's out-of-memory killer does
    _, stderr = process.communicate(timeout=60)  # it hung for ever
    assert process.returncode == 1 and "a synth worker died" in stderr and "Traceback" not in stderr


def test_a_font_that_lacks_a_plate_character_is_not_drawn_with(tmp_path):
    from fontTools import subset
    from fontTools.ttLib import TTFont

    from alpr.synth import _draws_plate_characters, system_truetype_fonts

    dejavu = next(f for f in system_truetype_fonts() if f.endswith("/DejaVuSans.ttf"))
    options = subset.Options()
    options.notdef_outline = True  # the missing-glyph box is drawn, with ink, for A-E
    subsetter = subset.Subsetter(options)
    subsetter.populate(text="0123456789")
    font = TTFont(dejavu)
    subsetter.subset(font)
    font.save(tmp_path / "digits.ttf")
    assert _draws_plate_characters(f"ttf:{dejavu}")
    assert not _draws_plate_characters(f"ttf:{tmp_path / 'digits.ttf'}")


def test_default_workers_fit_the_containers_memory_as_well_as_its_cores(tmp_path, monkeypatch):
    """The pipeline's synth pod requests CPU with no limit: on a 96-core node it saw 96 cores, and as
    many workers outgrew its 4 GiB memory limit."""
    from alpr import machine, synth

    monkeypatch.setattr(machine, "CGROUP", tmp_path)
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(96)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "memory.max").write_text(f"{4 * 2**30}\n")
    assert synth.default_workers() == 4 * 2**30 // synth.WORKER_MEMORY == 10
    (tmp_path / "cpu.max").write_text("400000 100000\n")
    assert synth.default_workers() == 4  # the CPU limit, where it is the lower
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "cpu.max").unlink()
    assert synth.default_workers() == 96  # no limits: every core


def test_a_pasted_plate_lies_on_its_outline_at_any_scale():
    """Outlines in COCO's pixel-corner coordinates: OpenCV's pixel-centre warp put a plate drawn at half
    size a quarter pixel up and left of its outline (0.5 x (1 - scale)). Point sampling moves a small
    plate's edges by a fraction of a pixel either way: averaged over sub-pixel positions, it is on it."""
    from alpr.synth import FlatPlate, paste_plate

    canvas = np.full((40, 120, 3), 255, np.uint8)
    flat = FlatPlate(canvas, [], np.zeros((4, 2), np.float32), np.zeros((4, 2), np.float32))
    for scale in (0.3, 0.5, 1.7):
        errors = []
        for k in range(16):
            quad = np.float32([[0, 0], [120, 0], [120, 40], [0, 40]]) * scale + [5 + k / 16, 9 + k * 5 % 16 / 16]
            image = np.zeros((160, 260, 3), np.uint8)
            homography = paste_plate(image, flat, quad)
            outline = cv2.perspectiveTransform(np.float64([[[0, 0]], [[120, 40]]]), homography).reshape(-1, 2)
            assert np.allclose(outline, quad[[0, 2]], atol=1e-3)
            ink = image[..., 0].astype(float) / 255
            ys, xs = np.indices(ink.shape) + 0.5  # each pixel's centre, in corner coordinates
            errors.append(np.array([(xs * ink).sum(), (ys * ink).sum()]) / ink.sum() - quad.mean(0))
            assert ink.sum() == pytest.approx(120 * 40 * scale ** 2, rel=0.05)
        assert np.allclose(np.mean(errors, 0), 0, atol=0.02), (scale, np.mean(errors, 0))
    grey = np.full((100, 160, 3), 200, np.uint8)  # a plate the colour of the road: no edge to be seen
    paste_plate(grey, FlatPlate(grey[:40, :120].copy(), [], flat.sub_region, flat.main_region),
                np.float32([[0, 0], [120, 0], [120, 40], [0, 40]]) * 0.37 + [10.3, 20.6])
    assert grey.min() >= 199  # the warp's black border, weighted by alpha twice, drew a dark ring round it


def test_a_characters_outline_wraps_its_ink_pixels_whole():
    """The hull of the ink pixels' corners: of their indices, it fell a pixel short right and below."""
    from alpr.synth import _draw_text, font_ids

    canvas = np.full((60, 200, 3), 255, np.uint8)
    polygons = _draw_text(canvas, "12A3", (10, 8, 190, 52), font_ids()[0], (0, 0, 0), np.random.default_rng(0))
    ink = canvas[..., 0] < 155  # where the glyph's coverage passed the outline's threshold (100 of 255)
    for (label, polygon), (left, right) in zip(polygons, [(10, 55), (55, 100), (100, 145), (145, 190)]):
        ys, xs = np.nonzero(ink[:, left:right])
        xs = xs + left
        low, high = polygon.min(0), polygon.max(0)
        assert np.allclose(low, [xs.min(), ys.min()], atol=0.8), label  # approxPolyDP may cut 0.8 px off
        assert np.allclose(high, [xs.max() + 1, ys.max() + 1], atol=0.8), label


def test_a_wide_low_picture_still_gets_plates(tmp_path):
    """Plates were sized by the picture's width alone: at 2000x60 none fitted its height, without a word."""
    out = tmp_path / "wide"
    generate(out, 4, seed=3, options=SynthOptions(2000, 60, 2, 0.0), workers=1, progress=False)
    boards = [s for path in out.glob("*.json") for s in json.loads(path.read_text())["shapes"]
              if s["label"] in BOARD_LABELS]
    assert boards and all(np.ptp(np.array(b["points"])[:, 1]) < 60 for b in boards)
