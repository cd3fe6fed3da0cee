"""A small classifier that reads each character again from its own crop of the image.

The detector classifies a character from features shared with boards, regions and masks; the
look-alike glyphs it confuses (0/8, 6/0, B/E) are what is left of its errors once it finds the
plates. This network (``glyph_net``) sees only one character, cut from the image at its box (a
margin around it) and scaled to GLYPH_SIZE, in grey, its contrast normalized. The training step
trains it first, from the dataset's character boxes, shifted and scaled at random as a detector's
boxes are (``train_glyphs``), and keeps it in every checkpoint; ``postprocess.read_plates`` reads
with it (benchmarks/RESULTS.md, "A glyph classifier reads each character again").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alpr.errors import UsageError, read_json
from alpr.files import written_whole
from alpr.images import read
from alpr.plates import CHARACTER_CLASSES

GLYPH_SIZE = (32, 48)  # width, height: characters are taller than wide
GLYPH_MARGIN = 0.15  # context around a character's box, a fraction of its size on each side
JITTER = 0.12  # training boxes are shifted and scaled by up to this fraction of their size
COPIES = 2  # jittered crops of each training character
GLYPH_NET = "glyph_net.pth"  # in a run's train folder; the training step copies it into every checkpoint
CHANNELS = (16, 32, 64)


def grey(image: np.ndarray) -> np.ndarray:
    """A BGR (or grey) uint8 image as the float32 grey image ``glyph_crops`` cuts from."""
    import cv2

    return (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image).astype(np.float32)


def glyph_crops(grey: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """Each box's character as a GLYPH_SIZE array, its mean 0 and deviation 1 (the plate's
    colours and the light vary; the glyph's shape is what reads)."""
    import cv2

    width, height = GLYPH_SIZE
    crops = np.empty((len(boxes), height, width), np.float32)
    for crop, (x1, y1, x2, y2) in zip(crops, boxes):
        mx, my = GLYPH_MARGIN * (x2 - x1), GLYPH_MARGIN * (y2 - y1)
        sx, sy = width / max(x2 - x1 + 2 * mx, 1e-3), height / max(y2 - y1 + 2 * my, 1e-3)
        affine = np.float32([[sx, 0, -(x1 - mx) * sx], [0, sy, -(y1 - my) * sy]])
        cv2.warpAffine(grey, affine, GLYPH_SIZE, dst=crop, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        crop -= crop.mean()
        crop /= max(float(crop.std()), 1.0)
    return crops


def jittered(box: Sequence[float], rng: np.random.Generator) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + rng.uniform(-JITTER, JITTER) * w, (y1 + y2) / 2 + rng.uniform(-JITTER, JITTER) * h
    w, h = w * (1 + rng.uniform(-JITTER, JITTER)), h * (1 + rng.uniform(-JITTER, JITTER))
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def glyph_net(channels: Sequence[int] = CHANNELS):
    """Three blocks of two 3x3 convolutions and a 2x2 pooling, then one linear layer over the
    6x4 map that is left: where a stroke is (the gap that tells 8 from 0) counts, so no global pooling."""
    from torch import nn

    layers, before = [], 1
    for after in channels:
        for _ in range(2):
            layers += [nn.Conv2d(before, after, 3, padding=1, bias=False), nn.BatchNorm2d(after), nn.ReLU(inplace=True)]
            before = after
        layers.append(nn.MaxPool2d(2))
    cells = (GLYPH_SIZE[0] >> len(channels)) * (GLYPH_SIZE[1] >> len(channels))
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.3), nn.Linear(before * cells, len(CHARACTER_CLASSES)))


@dataclass
class GlyphSet:
    crops: np.ndarray  # N x H x W float16: 3 KB a crop, and a training set holds about 30 an image
    labels: np.ndarray  # N class ids into CHARACTER_CLASSES


def character_boxes(coco: dict) -> dict[str, list[tuple[tuple[float, ...], int]]]:
    """{image file name: [(x1, y1, x2, y2), class id into CHARACTER_CLASSES]} from a COCO document."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {image["id"]: image["file_name"] for image in coco["images"]}
    boxes: dict[str, list] = {name: [] for name in files.values()}
    for ann in coco["annotations"]:
        label = names[ann["category_id"]]
        if label in CHARACTER_CLASSES:
            x, y, w, h = ann["bbox"]
            boxes[files[ann["image_id"]]].append(((x, y, x + w, y + h), CHARACTER_CLASSES.index(label)))
    return boxes


def image_glyphs(path: Path, chars: list, copies: int, rng: np.random.Generator) -> np.ndarray:
    """``copies`` crops of each character of one image (``character_boxes``), each box jittered
    (none jittered where ``copies`` is 0: one crop each at its true box)."""
    image, boxes = grey(read(path)), [box for box, _ in chars]
    return np.concatenate([glyph_crops(image, [jittered(box, rng) for box in boxes] if copies else boxes)
                           for _ in range(max(copies, 1))])


def glyph_set(dataset: Path, split: str, copies: int, seed: int, progress: bool = False) -> GlyphSet:
    """The crops of every character of a recorded dataset's split (``image_glyphs``), cut on
    every core (OpenCV lets go of Python's lock) into one array, in float16: a training set of
    10,000 images is 1 GB so, where a list of float32 crops and their concatenation took 4."""
    from concurrent.futures import ThreadPoolExecutor

    from alpr.machine import available_cpus
    from alpr.progress import show_progress

    images = list(character_boxes(read_json(dataset / f"{split}.json")).items())
    labels = [label for _, chars in images for _ in range(max(copies, 1)) for _, label in chars]
    starts = np.cumsum([0] + [len(chars) * max(copies, 1) for _, chars in images])
    crops = np.empty((len(labels), *GLYPH_SIZE[::-1]), np.float16)

    def cut(index: int) -> None:
        name, chars = images[index]
        try:
            crops[starts[index]:starts[index + 1]] = image_glyphs(dataset / "images" / name, chars, copies,
                                                                  np.random.default_rng((seed, index)))
        finally:
            advance(1)

    with show_progress(f"glyph crops ({split})", len(images), progress) as advance, \
            ThreadPoolExecutor(available_cpus()) as pool:
        list(pool.map(cut, range(len(images))))
    return GlyphSet(crops, np.array(labels, np.int64))


def train_glyph_net(glyphs: GlyphSet, epochs: int, batch_size: int = 256, lr: float = 3e-3, seed: int = 0,
                    advance: Callable[[int], None] = lambda n: None, channels: Sequence[int] = CHANNELS,
                    device: str = "cpu"):
    """A GlyphNet trained on ``glyphs`` (AdamW, one-cycle schedule) on ``device``, returned on the CPU;
    ``advance`` is called once an epoch."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = glyph_net(channels).to(device)
    x, y = torch.from_numpy(glyphs.crops).unsqueeze(1).to(device), torch.from_numpy(glyphs.labels).to(device)
    steps = epochs * -(-len(y) // batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), device=device).split(batch_size):
            optimizer.zero_grad()
            loss_fn(net(x[batch].float()), y[batch]).backward()
            optimizer.step()
            schedule.step()
        advance(1)
    return net.cpu().eval()


CLASSIFY_BATCH = 2048  # crops at a time: a crop's activations take ~100 KB, a val split's 60k crops 6 GB a layer


def classify(net, crops: np.ndarray) -> np.ndarray:
    """Class probabilities (N x 15) of GLYPH_SIZE crops."""
    import torch

    probabilities = [np.empty((0, len(CHARACTER_CLASSES)), np.float32)]
    with torch.no_grad():
        for start in range(0, len(crops), CLASSIFY_BATCH):
            batch = torch.from_numpy(crops[start:start + CLASSIFY_BATCH]).float().unsqueeze(1)
            probabilities.append(torch.softmax(net(batch), 1).numpy())
    return np.concatenate(probabilities)


def glyph_reader(net, image: np.ndarray) -> Callable[[list], np.ndarray]:
    """Class probabilities of the characters at boxes of ``image`` (``postprocess.Glyphs``)."""
    cut_from = []  # the float32 grey copy, 4 bytes a pixel: made only for an image with characters to read

    def read(boxes: list) -> np.ndarray:
        if not cut_from:
            cut_from.append(grey(image))
        return classify(net, glyph_crops(cut_from[0], boxes))

    return read


def stored(net) -> dict:
    """What a checkpoint keeps of a GlyphNet: its widths and weights."""
    from torch import nn

    convs = [layer.out_channels for layer in net if isinstance(layer, nn.Conv2d)]
    return {"channels": convs[::2], "weights": {k: v.detach().cpu() for k, v in net.state_dict().items()}}


def restored(kept: dict):
    """The GlyphNet a checkpoint kept (``stored``), ready to classify."""
    net = glyph_net(kept["channels"])
    net.load_state_dict(kept["weights"])
    return net.eval()


def saved_glyph_net(path: Path):
    """The glyph classifier ``train_glyphs`` saved at ``path``; None where there is none."""
    import torch

    return restored(torch.load(path, map_location="cpu", weights_only=True)) if path.is_file() else None


def train_glyphs(dataset: Path, path: Path, epochs: int, seed: int = 0, device: str = "cpu") -> None:
    """Trains the glyph classifier on a recorded dataset's train split, scores it on the true
    character boxes of its val split and saves it (``stored``) to ``path``."""
    import torch

    from alpr.progress import show_progress

    train_set = glyph_set(dataset, "train", COPIES, seed, progress=True)
    if not len(train_set.labels):
        raise UsageError(f"{dataset}: its train split has no character boxes to train the glyph classifier on; "
                         "--glyph-epochs 0 trains none")
    with show_progress("glyph net epochs", epochs) as advance:
        net = train_glyph_net(train_set, epochs, seed=seed, advance=advance, device=device)
    val = glyph_set(dataset, "val", 0, seed)
    right = int((classify(net, val.crops).argmax(1) == val.labels).sum())
    with written_whole(path) as partial:
        torch.save(stored(net), partial)
    print(f"glyph net: trained on {len(train_set.labels)} crops, read {right} of {len(val.labels)} val characters",
          flush=True)
