"""What the training data loader delivers: ms per image in each step of the training pipeline
(one process), then images/s through the training step's own data loader with --workers processes.

    python benchmarks/loader_speed.py [--images 100] [--img-size N] [--crop-size N] [--batch-size 32]
        [--workers 2] [--batches 8]

On the GPU, a step must not wait for its batch: the loader's images/s is the most a training run
can reach, whatever the GPU does. Synthesizes 1280x720 images and builds the loader exactly as
``alpr train`` does (rtmdet-ins-tiny's pipeline).
"""

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from alpr.model import TrainSettings, build_config, with_val_interval
from alpr.record import RecordOptions, record
from alpr.synth import SynthOptions, generate


def step_times(loader_config: dict, count: int) -> list[tuple[str, float]]:
    """ms per image in each transform, over the dataset's first ``count`` images, in this process."""
    from mmdet.registry import DATASETS, TRANSFORMS

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' loading messages
        dataset = DATASETS.build({**loader_config["dataset"], "pipeline": []})
    steps = [(t["type"], TRANSFORMS.build(t)) for t in loader_config["dataset"]["pipeline"]]
    spent, images = [0.0] * len(steps), min(count, len(dataset))
    for index in range(images):
        results = dataset.get_data_info(index)
        for k, (_, step) in enumerate(steps):
            start = time.perf_counter()
            results = step(results)
            spent[k] += time.perf_counter() - start
    return [(name, 1000 * seconds / images) for (name, _), seconds in zip(steps, spent)]


def loader_rate(loader_config: dict, batches: int) -> float:
    """Images/s through the data loader, timed after each worker has made its first batch."""
    from mmengine.runner import Runner

    with contextlib.redirect_stdout(io.StringIO()):
        loader = Runner.build_dataloader(loader_config, seed=0)
    batches_seen = iter(loader)
    for _ in range(max(loader_config["num_workers"], 1)):  # the first round comes all at once
        next(batches_seen)
    start = time.perf_counter()
    images = sum(len(next(batches_seen)["inputs"]) for _ in range(batches))
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--img-size", type=int, default=None, help="size images are resized to (default: the model's)")
    parser.add_argument("--crop-size", type=int, default=None, help="training crops (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="data loader processes")
    parser.add_argument("--batches", type=int, default=8, help="batches timed through the loader")
    args = parser.parse_args()

    from mmdet.utils import register_all_modules

    import alpr.mmdet_ext  # noqa: F401  (registers alpr's transforms)

    register_all_modules()
    settings = TrainSettings(model="rtmdet-ins-tiny", img_size=args.img_size, crop_size=args.crop_size,
                             batch_size=args.batch_size, num_workers=args.workers, iters=1)
    with tempfile.TemporaryDirectory() as folder:
        generate(Path(folder) / "synth", args.images, seed=1, options=SynthOptions(1280, 720), progress=False)
        record(RecordOptions(Path(folder) / "synth", Path(folder) / "work", "bench", "1",
                             fractions=(1.0, 0.0, 0.0), dvc=False))
        config = build_config(with_val_interval(settings, args.images), Path(folder) / "work/datasets/bench/1",
                              Path(folder) / "run", {})
        loader = config["train_dataloader"]
        print(f"training pipeline, {settings.image_size} px images, {settings.train_crop_size} px crops, "
              f"one process ({args.images} images):")
        times = step_times(loader, args.images)
        for name, ms in times:
            print(f"  {name:24s} {ms:6.2f} ms")
        print(f"pipeline_ms_per_image={sum(ms for _, ms in times):.1f}")
        rate = loader_rate(loader, args.batches)
        print(f"loader_images_per_second={rate:.1f} (batches of {args.batch_size}, {args.workers} workers)")


if __name__ == "__main__":
    main()
