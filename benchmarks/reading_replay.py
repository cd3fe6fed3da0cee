"""Plate-reading rules compared on one checkpoint's detections, made once.

    python benchmarks/reading_replay.py CHECKPOINT [--test-images 300] [--seed 1000] [--widths 320 256 224 192]
        [--sure-scores 0.3 0.5] [--device auto] [--cache FILE] [--glyphs checkpoint|none | --glyph-net FILE]
        [--char-threshold 0.3]

Runs the model over accuracy.py's fresh test set (seed 1000; another seed checks a rule picked on
it against images it was not picked on): each whole image, then each board
found there, in its window scaled to each width given (as ``PlateReader`` reads it again). Then
it reads the plates from those detections by each rule and scores them as the evaluate step does:
seconds a rule, where a scoring run takes minutes. With --cache, the detections are kept in that
file and reused by later runs on the same checkpoint and images. Prints one line per rule.

The rules: the first reading only; read again at each width alone; and, over the windows at
every width given that read the same board, the text most of them read (ties to the surer
reading), the surest reading alone, "surest" being the highest lowest character score, or position
by position the character whose scores sum highest over them and the first reading ("by
character"); and as PlateReader reads (``best_reading`` over the windows read in the order given
until two agree, ``read_enough``), also with "by character" in place of the surest reading where no
two agree, and stopping where one window reads the board with every character scoring at least S
(``ReadOptions.sure_score``), for each S of --sure-scores. The "windows" column is the windows read
per board. Each character is read again by the checkpoint's glyph classifier where it has one
(``--glyphs none``: the model's classes stand; ``--glyph-net``: a run's ``glyph_net.pth`` instead).
Under each rule, what became of the plates it did not read exactly: misread characters, the reasons
plates were left unread, and plates not found. ``--char-threshold``: the least score of a character
the reading keeps (``ReadOptions.char_threshold``).
"""

import argparse
import pickle
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

from accuracy import TEST_SEED, synthesize

from alpr.glyphs import glyph_reader, restored, saved_glyph_net
from alpr.plates import parse_plate
from alpr.postprocess import Plate, ReadOptions, read_plates
from alpr.reader import agreed_reading, best_reading, load_image, read_enough, surest, surest_reading, window_readings
from alpr.train import alpr_meta

BATCH = 4
OPTIONS = ReadOptions()  # the reading's defaults


def detect(reader, gt, dataset: Path, widths: list[int], cached: dict) -> dict:
    """{"first": {image: detections}, width: {image: [detections per board read first]}}, adding
    to ``cached`` (the same, from an earlier run) what it lacks."""
    todo = [w for w in widths if w not in cached]
    first = cached.setdefault("first", {})
    image_ids = sorted(gt.getImgIds())
    for start in range(0, len(image_ids), BATCH):
        ids = image_ids[start:start + BATCH]
        needs_first = not all(i in first for i in ids)
        if not needs_first and not todo:
            continue
        arrays = [load_image(dataset / "images" / gt.imgs[i]["file_name"]) for i in ids]
        if needs_first:
            first.update(zip(ids, reader.detect(arrays, masks=False)))
        boards = [(k, plate.bbox) for k, i in enumerate(ids) for plate in read_plates(first[i], OPTIONS)]
        for width in todo:
            windows = cached.setdefault(width, {})
            windows.update((i, []) for i in ids)
            for (k, _), found in zip(boards, reader.detect_windows(arrays, boards, width)):
                windows[ids[k]].append(found)
    return cached


def by_vote(first: Plate, again: list[list[Plate]]) -> Plate:
    readings = window_readings(first, again)
    if not readings:
        return first
    votes = Counter(p.text for p in readings)
    return max(readings, key=lambda p: (votes[p.text], surest(p)))


def by_character(first: Plate, again: list[list[Plate]]) -> Plate:
    """Over the board's readings, the first one's included, each position's character with the
    highest summed score; the first reading where none is read."""
    readings = window_readings(first, again) + ([first] if first.readable else [])
    if not readings:
        return first
    chosen = []
    for position in range(len(readings[0].text)):
        totals = Counter()
        for plate in readings:
            totals[plate.text[position]] += plate.char_scores[position]
        char = max(totals, key=totals.get)
        chosen.append((char, max(p.char_scores[position] for p in readings if p.text[position] == char)))
    # every reading is of the format, so each position's characters are of its kind
    text = parse_plate("".join(char for char, _ in chosen))
    return replace(max(readings, key=surest), text=text.text, region=text.region, vehicle_type=text.vehicle_type,
                   serial=text.serial, char_scores=tuple(score for _, score in chosen))


def agreed_else_by_character(first: Plate, again: list[list[Plate]]) -> Plate:
    """``best_reading`` with ``by_character`` in place of the surest window reading."""
    return agreed_reading(first, again) or by_character(first, again)


def every_window(pick):
    """A rule that reads every window: its pick, and the windows it read."""
    return lambda first, again: (pick(first, again), len(again))


def as_reader(sure_score: float | None = None, best=best_reading):
    """A rule that reads the windows in order until ``read_enough``, as PlateReader does, and keeps
    the ``best`` of the readings so far."""
    def pick(first: Plate, again: list[list[Plate]]) -> tuple[Plate, int]:
        read = next((n for n in range(1, len(again)) if read_enough(first, again[:n], sure_score)), len(again))
        return best(first, again[:read]), read
    return pick


def rules(widths: list[int], sure_scores: list[float]) -> dict:
    """name -> (widths it reads, how it picks a board's plate from the first reading and theirs, and
    how many of those windows it read)."""
    named = {"first reading only": ([], every_window(lambda first, again: first))}
    for width in widths:
        named[f"again at {width}"] = ([width], every_window(best_reading))
    if len(widths) > 1:
        joined = "+".join(map(str, widths))
        named[f"again at {joined}, by vote"] = (widths, every_window(by_vote))
        named[f"again at {joined}, surest"] = (widths, every_window(surest_reading))
        named[f"again at {joined}, by character"] = (widths, every_window(by_character))
        named[f"again at {joined}, until two agree"] = (widths, as_reader())
        named[f"again at {joined}, until two agree, else by character"] = (
            widths, as_reader(best=agreed_else_by_character))
        for sure_score in sure_scores:
            named[f"again at {joined}, until two agree or {sure_score:g}"] = (widths, as_reader(sure_score))
    return named


def read_all(cached: dict, glyphs_of, options: ReadOptions) -> dict:
    """The plates of every cached detection, in its shape (``detect``), each character read again
    by ``glyphs_of(image id)`` (None: the model's classes): read once, as every rule picks from the
    same readings; one image's glyph reader (its image) held at a time."""
    read = {key: {} for key in cached}
    for i, detections in cached["first"].items():
        glyphs = glyphs_of(i)
        read["first"][i] = read_plates(detections, options, glyphs)
        for width in (w for w in cached if w != "first"):
            read[width][i] = [read_plates(window, options, glyphs) for window in cached[width][i]]
    return read


def read_by(rule, read: dict) -> tuple[dict[int, list[Plate]], float]:
    """Each image's plates picked by the rule from the readings (``read_all``), and the windows it
    read per board."""
    rule_widths, pick = rule
    plates, windows, boards = {}, 0, 0
    for image_id, found in read["first"].items():
        again = [read[w][image_id] for w in rule_widths]
        picked = [pick(first, [readings[j] for readings in again]) for j, first in enumerate(found)]
        plates[image_id] = [plate for plate, _ in picked]
        windows += sum(read for _, read in picked)
        boards += len(picked)
    return plates, windows / max(boards, 1)


def glyph_classifier(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The glyph classifier asked for (--glyph-net, else the checkpoint's unless --glyphs none); None for none."""
    if args.glyph_net:
        net = saved_glyph_net(args.glyph_net)
        if net is None:
            parser.error(f"--glyph-net {args.glyph_net}: no such file")
        return net
    kept = alpr_meta(args.checkpoint)["alpr"].get("glyph_net") if args.glyphs == "checkpoint" else None
    return restored(kept) if kept else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=TEST_SEED, help="of the synthesized test images")
    parser.add_argument("--widths", type=int, nargs="+", default=list(ReadOptions.zoom_widths))
    parser.add_argument("--sure-scores", type=float, nargs="*", default=[0.3, 0.5])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", type=Path, default=None, help="keep the detections in this file")
    parser.add_argument("--glyphs", choices=("checkpoint", "none"), default="checkpoint",
                        help="read each character again with the checkpoint's glyph classifier, or not")
    parser.add_argument("--glyph-net", type=Path, default=None,
                        help="read each character again with this glyph classifier (a run's glyph_net.pth)")
    parser.add_argument("--char-threshold", type=float, default=OPTIONS.char_threshold,
                        help="the least score of a character the reading keeps")
    args = parser.parse_args()

    import contextlib
    import io

    from pycocotools.coco import COCO

    from alpr import PlateReader
    from alpr.metrics import misread_summary, plate_metrics

    net = glyph_classifier(args, parser)  # before minutes of synthesis and detection
    key = (str(args.checkpoint.resolve()), args.checkpoint.stat().st_mtime, args.test_images, args.seed)
    cached = {}
    if args.cache and args.cache.is_file():
        saved = pickle.loads(args.cache.read_bytes())
        cached = saved["detections"] if saved["key"] == key else {}
    with tempfile.TemporaryDirectory() as folder:
        dataset = synthesize(Path(folder), "fresh", args.test_images, args.seed, (0.0, 0.0, 1.0))
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(dataset / "test.json"))
        if "first" not in cached or any(w not in cached for w in args.widths):
            reader = PlateReader.from_checkpoint(args.checkpoint, args.device)
            cached = detect(reader, gt, dataset, args.widths, cached)
        if args.cache:
            args.cache.write_bytes(pickle.dumps({"key": key, "detections": cached}))
        reading = "the model's classes" if net is None else "characters read again by a glyph classifier"
        print(f"{args.checkpoint}: {args.test_images} fresh images (seed {args.seed}), boards as first read, {reading}")
        print(f"{'rule':62s} {'EIR':>6s} {'1-row':>6s} {'2-row':>6s} {'exact':>6s} {'misread':>8s} {'unread':>7s}"
              f" {'windows':>8s}")

        def glyphs_of(image_id: int):
            image = dataset / "images" / gt.imgs[image_id]["file_name"]
            return None if net is None else glyph_reader(net, load_image(image))

        read = read_all(cached, glyphs_of, replace(OPTIONS, char_threshold=args.char_threshold))
        for name, rule in rules(args.widths, args.sure_scores).items():
            plates, windows = read_by(rule, read)
            metrics = plate_metrics(gt, plates, cached["first"])
            outcomes = metrics["outcomes"]
            unread = sum(n for outcome, n in outcomes.items() if outcome.startswith("unread"))
            print(f"{name:62s} {metrics['EIR']:6.4f} {metrics['EIR_one_row']:6.4f} {metrics['EIR_two_row']:6.4f} "
                  f"{outcomes.get('read exactly', 0):6d} {outcomes.get('misread', 0):8d} {unread:7d} {windows:8.2f}")
            print(f"    misread characters: {misread_summary(metrics, top=8)}")
            missed = {outcome: n for outcome, n in outcomes.items() if outcome not in ("read exactly", "misread")}
            print(f"    not read: {', '.join(f'{n} {outcome}' for outcome, n in missed.items()) or 'none'}")


if __name__ == "__main__":
    main()
