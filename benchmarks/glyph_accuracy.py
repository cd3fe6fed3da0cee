"""The glyph classifier alone: trained on a synthesized training set's characters as the training step
trains it, it reads every character of a fresh test set (a seed never trained on), cut as the reader
cuts them (``grey`` of the decoded image), at the true boxes and at jittered ones (as a detector's are).

    python benchmarks/glyph_accuracy.py [--train-images 1000] [--test-images 300] [--epochs 6] [--seed 0]
        [--data DIR]

--data keeps the synthesized and recorded sets there (made once), so that runs of two versions of
the code compare on the same characters. Prints the figures as name=value lines, and the look-alike
glyphs it confused most.
"""

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from accuracy import fresh_set, synthesize

from alpr.errors import read_json
from alpr.glyphs import COPIES, character_boxes, classify, glyph_crops, glyph_set, grey, jittered, train_glyph_net
from alpr.plates import CHARACTER_CLASSES
from alpr.reader import load_image

JITTERED_COPIES = 2  # jittered crops of each test character


def datasets(folder: Path, train_images: int, test_images: int) -> tuple[Path, Path]:
    """The recorded training set (seed 0) and test set (seed 1000), made where not made yet."""
    train, test = folder / "work/datasets/train/1", folder / "work/datasets/fresh/1"
    if not (train / "manifest.json").is_file():
        synthesize(folder, "train", train_images, 0, (1.0, 0.0, 0.0))
    if not (test / "manifest.json").is_file():
        fresh_set(folder, test_images)
    return train, test


def test_crops(dataset: Path, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Crops at the true boxes and their labels, crops at jittered boxes (JITTERED_COPIES each) and theirs."""
    rng = np.random.default_rng(seed)
    true, labels, shifted, shifted_labels = [], [], [], []
    for name, chars in character_boxes(read_json(dataset / "test.json")).items():
        if not chars:
            continue
        image = grey(load_image(dataset / "images" / name))
        boxes = [box for box, _ in chars]
        true.append(glyph_crops(image, boxes))
        shifted.extend(glyph_crops(image, [jittered(box, rng) for box in boxes]) for _ in range(JITTERED_COPIES))
        labels.extend(label for _, label in chars)
        shifted_labels.extend(label for _ in range(JITTERED_COPIES) for _, label in chars)
    return np.concatenate(true), np.array(labels), np.concatenate(shifted), np.array(shifted_labels)


def confusions(predicted: np.ndarray, labels: np.ndarray, shown: int = 6) -> str:
    pairs = Counter((CHARACTER_CLASSES[t], CHARACTER_CLASSES[p]) for t, p in zip(labels, predicted) if t != p)
    return ", ".join(f"{t}->{p} {n}" for (t, p), n in pairs.most_common(shown)) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=6, help="the training step's default --glyph-epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="keep the datasets here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        train, test = datasets(args.data or Path(temporary), args.train_images, args.test_images)
        start = time.perf_counter()
        net = train_glyph_net(glyph_set(train, "train", COPIES, args.seed), args.epochs, seed=args.seed)
        trained = time.perf_counter() - start
        true, labels, shifted, shifted_labels = test_crops(test, args.seed)
    at_true = classify(net, true).argmax(1)
    at_shifted = classify(net, shifted).argmax(1)
    print(f"glyph net: {args.epochs} epochs on {args.train_images} images' characters in {trained / 60:.1f} min, "
          f"seed {args.seed}; {len(labels)} fresh characters")
    print(f"accuracy_true_boxes={(at_true == labels).mean():.4f}")
    print(f"accuracy_jittered_boxes={(at_shifted == shifted_labels).mean():.4f}")
    print(f"confused at jittered boxes (true->read): {confusions(at_shifted, shifted_labels)}")


if __name__ == "__main__":
    main()
