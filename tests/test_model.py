"""Smoke training on a tiny synthetic dataset, on the CPU, and everything that reads its outputs."""

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import ROOT, SMOKE_TRAIN, run_step_script

KATIB = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")


def test_training_writes_every_output(smoke_workdir, smoke_training):
    train = smoke_workdir / "runs" / "r1" / "train"
    assert (train / "best.pth").is_file() and (train / "iter_4.pth").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {tag for events in (train / "tensorboard").rglob("events.out.tfevents.*")
            for tag in EventAccumulator(str(events)).Reload().Tags()["scalars"]}
    assert {"loss", "lr", "mAP", "dv_mAP", "EIR"} <= set(tags), tags
    scalars = [json.loads(line) for line in next(train.rglob("log.json")).read_text().splitlines()]
    assert any("loss" in s for s in scalars)
    assert [s["step"] for s in scalars if "EIR" in s] == [2, 4]  # at their iterations, for TensorBoard's plots
    import torch

    # the best by EIR, the later of equals: a 4-iteration model's EIR is 0 at both
    best = max((s for s in scalars if "EIR" in s), key=lambda s: (s["EIR"], s["step"]))
    assert torch.load(train / "best.pth", map_location="cpu", weights_only=False)["meta"]["iter"] == best["step"]
    assert (train / "glyph_net.pth").is_file()
    assert re.search(r"glyph net: trained on \d+ crops, read \d+ of \d+ val characters", smoke_training.stdout)
    # --warmup-iters 2 of a 4-iteration run: a tenth of it is under 2 iterations, LinearLR's least, so 2
    assert "warm-up:" not in smoke_training.stdout


def test_metric_lines_parse_with_katibs_regex(smoke_training):
    lines = [line for line in smoke_training.stdout.splitlines() if re.fullmatch(r"(mAP|dv_mAP|EIR)=\S+", line)]
    found = {m.group(1) for line in lines for m in KATIB.finditer(line)}
    assert found == {"mAP", "dv_mAP", "EIR"} and len(lines) == 6  # two validations
    assert re.search(r"Iter\(train\) \[\s*4/4\].*eta.*memory.*loss", smoke_training.stdout + smoke_training.stderr)
    # the runner's build is quiet: no environment, config or parameter-group dump to bury alpr's lines
    output = smoke_training.stdout + smoke_training.stderr
    assert "paramwise_options" not in output and "Config:" not in output and "System environment" not in output
    assert re.search(r"environment: Python 3\.\d+\.\d+, torch \S+ \(CUDA \S+\), mmcv 2\.1\.0, mmdet 3\.3\.0", output)


def _reading_eights(path: Path) -> None:
    """Saves a glyph classifier, as the training step would, that reads every character as an 8 (and,
    where the format wants a letter, as its first letter)."""
    import torch

    from alpr.glyphs import glyph_net, stored
    from alpr.plates import CHARACTER_CLASSES

    net = glyph_net((4, 4, 4))
    head = net[-1]
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.eye(len(CHARACTER_CLASSES))[CHARACTER_CLASSES.index("8")] * 10)
    torch.save(stored(net), path)


def test_validation_reads_with_the_runs_glyph_classifier_where_it_has_one(smoke_workdir, tmp_path):
    import alpr.mmdet_ext as ext
    from alpr.metrics import load_ground_truth, true_plates
    from alpr.postprocess import Detection

    val = smoke_workdir / "datasets/smoke/1"
    gt = load_ground_truth(val / "val.json")
    truth = [(image_id, str(val / "images" / gt.imgs[image_id]["file_name"]),
              [Detection(ext.CLASSES[a["category_id"] - 1], 1.0, (x, y, x + w, y + h))
               for a in gt.imgToAnns[image_id] for x, y, w, h in [a["bbox"]]]) for image_id in gt.getImgIds()]
    assert sum(len(true_plates(gt, image_id)) for image_id, _, _ in truth) > 0
    glyphs = tmp_path / "glyph_net.pth"
    assert ext.PlateMetric(str(val / "val.json"), str(glyphs)).compute_metrics(truth)["EIR"] == 1.0  # none yet
    _reading_eights(glyphs)
    assert ext.PlateMetric(str(val / "val.json"), str(glyphs)).compute_metrics(truth)["EIR"] == 0.0
    gone = [(image_id, path + ".gone", dets) for image_id, path, dets in truth]
    with pytest.raises(ext.AlprError, match=r"\.jpg\.gone: image not found"):
        ext.PlateMetric(str(val / "val.json"), str(glyphs)).compute_metrics(gone)


def test_a_fresh_start_does_not_keep_a_glyph_classifier_left_by_one_cut_short(smoke_workdir):
    import torch

    train = smoke_workdir / "runs" / "cut-short" / "train"
    train.mkdir(parents=True)
    _reading_eights(train / "glyph_net.pth")  # written, then the run stopped before its first checkpoint
    flags = [*SMOKE_TRAIN[:SMOKE_TRAIN.index("--run-id")], "--run-id", "cut-short",
             *SMOKE_TRAIN[SMOKE_TRAIN.index("--run-id") + 2:], "--glyph-epochs", "0"]
    result = run_step_script("train", "--workdir", str(smoke_workdir), *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (train / "glyph_net.pth").exists()
    assert "glyph_net" not in torch.load(train / "best.pth", map_location="cpu", weights_only=False)["meta"]["alpr"]


def test_checkpoint_reloads_with_no_config_file(smoke_workdir, smoke_training, synth_dir):
    import torch

    from alpr import PlateReader
    from alpr.plates import CLASSES

    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    meta = torch.load(best, map_location="cpu", weights_only=False)["meta"]
    assert meta["alpr"]["classes"] == list(CLASSES) and meta["alpr"]["dataset"]["name"] == "smoke"
    assert meta["alpr"]["settings"]["model"] == "smoke" and "cfg" in meta
    assert set(meta["alpr"]["glyph_net"]) == {"channels", "weights"}  # reading needs no other file
    reader = PlateReader.from_checkpoint(best, device="cpu")
    assert reader.classes == CLASSES and reader.glyph_net is not None
    convolutions = [p for p in reader.model.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    plates = reader.predict(synth_dir / "000001.jpg")
    assert isinstance(plates, list)
    assert len(reader.predict_batch([synth_dir / "000001.jpg", synth_dir / "000002.jpg"])) == 2


def test_the_swin_mask_rcnn_trains_with_its_own_flags_and_reads(smoke_workdir, synth_dir):
    import torch

    from alpr import PlateReader

    swin = ["--dataset", "smoke", "--version", "1", "--model", "mask-rcnn-swin-t", "--run-id", "swin", "--iters", "1",
            "--batch-size", "1", "--workers", "0", "--device", "cpu", "--img-size", "256", "--warmup-iters", "1",
            "--window-size", "8", "--mlp-ratio", "2", "--drop-rate", "0.1"]
    result = run_step_script("train", "--workdir", str(smoke_workdir), *swin)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    best = smoke_workdir / "runs" / "swin" / "train" / "best.pth"
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    assert {k: checkpoint["meta"]["alpr"]["settings"][k] for k in ("model", "window_size", "mlp_ratio", "drop_rate")} \
        == {"model": "mask-rcnn-swin-t", "window_size": 8, "mlp_ratio": 2, "drop_rate": 0.1}
    # the flags shaped the network: an MLP ratio of 2 makes each block's hidden layer twice its width
    assert checkpoint["state_dict"]["backbone.stages.0.blocks.0.ffn.layers.0.0.weight"].shape == (192, 96)
    assert isinstance(PlateReader.from_checkpoint(best, device="cpu").predict(synth_dir / "000001.jpg"), list)


def test_training_takes_crops_and_reading_takes_the_whole_resized_image(smoke_workdir):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    import alpr.mmdet_ext  # noqa: F401  (registers the mask transform)

    register_all_modules()  # mmdet's transforms by their plain names, as the training config sets
    from alpr.model import build_config
    from steps.train import get_args_parser, settings_from_args

    args = get_args_parser().parse_args(["--dataset", "smoke", "--version", "1", "--run-id", "c", "--model", "smoke",
                                         "--img-size", "256", "--crop-size", "192", "--val-interval", "1"])
    data = smoke_workdir / "datasets/smoke/1"
    config = build_config(settings_from_args(args), data, smoke_workdir, {})
    train = DATASETS.build(config["train_dataloader"]["dataset"])[0]
    test = DATASETS.build(config["test_dataloader"]["dataset"])[0]
    assert tuple(train["inputs"].shape) == (3, 192, 192)
    # drawn in the loader's workers, and still so after packing picks the instances
    assert type(train["data_samples"].gt_instances.masks) is alpr.mmdet_ext.FilledPolygonMasks
    height, width = test["data_samples"].ori_shape
    factor = min(256 / width, 256 / height)
    resized = round(height * factor), round(width * factor)
    # the whole image with its longest side at 256 px, padded to a multiple of 32 only (not to a square)
    assert tuple(test["inputs"].shape[1:]) == tuple(-(-side // 32) * 32 for side in resized) == (192, 256)


def test_training_by_iterations_draws_from_one_endless_epoch(smoke_workdir):
    import itertools

    from mmdet.registry import DATA_SAMPLERS, DATASETS
    from mmdet.utils import register_all_modules

    from alpr.model import build_config
    from steps.train import get_args_parser, settings_from_args

    register_all_modules()

    def drawn(*flags: str) -> int:
        args = get_args_parser().parse_args(["--dataset", "smoke", "--version", "1", "--run-id", "c", "--model",
                                             "smoke", "--val-interval", "1", *flags])
        loader = build_config(settings_from_args(args), smoke_workdir / "datasets/smoke/1", smoke_workdir, {})[
            "train_dataloader"]
        dataset = DATASETS.build(loader["dataset"])
        sampler = DATA_SAMPLERS.build(loader["sampler"], default_args=dict(dataset=dataset, seed=0))
        return len(list(itertools.islice(sampler, 3 * len(dataset)))) / len(dataset)

    # a new epoch would stall the GPU while every loader worker makes its first batch again
    assert drawn("--iters", "10") == 3
    assert drawn("--minutes", "1") == 3
    assert drawn("--epochs", "2") == 1


def test_training_resumes_from_its_last_checkpoint(smoke_workdir, smoke_training):
    more = [a if a != "4" else "6" for a in SMOKE_TRAIN]
    result = run_step_script("train", "--workdir", str(smoke_workdir), *more)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "resumed" in log.lower() and "Iter(train) [1/6]" not in log
    assert "note: this run was started to train 4 iters; resumed, it trains 6 (--iters)" in result.stdout
    assert "glyph net: trained" not in log  # it was, before the first iteration
    assert (smoke_workdir / "runs" / "r1" / "train" / "iter_6.pth").is_file()
    # seeded anew at the step it resumed from (seed 0 + 4), or it would draw its first batches again,
    # and without mmengine's warning that the checkpoint's seed differs
    import torch

    saved = torch.load(smoke_workdir / "runs" / "r1" / "train" / "iter_6.pth", map_location="cpu", weights_only=False)
    assert saved["meta"]["seed"] == 4 and "random seed in the checkpoint" not in log


def test_a_run_stopped_while_validating_validates_first_and_a_copied_run_keeps_to_its_own_files(smoke_workdir,
                                                                                                 smoke_training):
    import torch

    runs = smoke_workdir / "runs"
    original = {p.name: p.stat().st_mtime_ns for p in (runs / "r1" / "train").glob("*.pth")}
    shutil.copytree(runs / "r1", runs / "cut")
    train, log = runs / "cut" / "train", runs / "cut" / "train" / "log.json"
    lines = log.read_text().splitlines()
    validations = [i for i, line in enumerate(lines) if '"EIR"' in line]
    step, before = (json.loads(lines[i])["step"] for i in validations[-1:-3:-1])
    # as if stopped during the last validation: nothing of it logged, marked or copied
    log.write_text("\n".join(lines[:validations[-1]] + lines[validations[-1] + 1:]) + "\n")
    assert (train / "validated_step").read_text() == f"{step}\n"
    (train / "validated_step").write_text(f"{before}\n")
    (train / "best.pth").unlink()
    (train / "glyph_net.pth").unlink()  # lost too: the checkpoint carries the one its weights read with
    more = [{"r1": "cut"}.get(a, a) for a in SMOKE_TRAIN]
    more[more.index("--iters") + 1] = str(step + 2)

    result = run_step_script("train", "--workdir", str(smoke_workdir), *more)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"validating the checkpoint of step {step}" in result.stdout + result.stderr
    assert "glyph net: trained" not in result.stdout + result.stderr and (train / "glyph_net.pth").is_file()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines() if '"EIR"' in line][-2:] == \
        [step, step + 2]
    assert (train / "best.pth").is_file() and (train / "validated_step").read_text() == f"{step + 2}\n"
    saved = torch.load(train / f"iter_{step + 2}.pth", map_location="cpu", weights_only=False)
    assert Path(saved["message_hub"]["runtime_info"]["best_ckpt"]).parent == train  # not the original's file
    assert {p.name: p.stat().st_mtime_ns for p in (runs / "r1" / "train").glob("*.pth")} == original


@pytest.mark.parametrize("flags, amp", [([], False), (["--amp"], True), (["--amp", "true"], True),
                                         (["--amp", "False"], False)])
def test_amp_is_a_switch_the_workflows_can_set_to_true_or_false(flags, amp):
    from steps.train import get_args_parser

    required = ["--dataset", "d", "--version", "1", "--run-id", "r"]
    assert get_args_parser().parse_args(required + flags).amp is amp


def test_amp_refuses_what_is_not_true_or_false(capsys):
    from steps.train import get_args_parser

    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--dataset", "d", "--version", "1", "--run-id", "r", "--amp", "yes"])
    assert "argument --amp: expected true or false, not 'yes'" in capsys.readouterr().err


@pytest.mark.parametrize("value, lr, img_size", [("", None, None), ("0.002", 0.002, None)])
def test_an_empty_workflow_parameter_means_the_models_own_value(value, lr, img_size):
    from steps.train import get_args_parser

    args = get_args_parser().parse_args(["--dataset", "d", "--version", "1", "--run-id", "r", "--lr", value,
                                         "--img-size", "", "--widen-factor", ""])
    assert (args.lr, args.img_size, args.widen_factor) == (lr, img_size, None)


def test_help_names_each_models_defaults_as_the_settings_resolve_them():
    from alpr.model import MODELS, TrainSettings
    from steps.train import get_args_parser

    parser = get_args_parser()
    for flag, setting in [("--lr", "learning_rate"), ("--img-size", "image_size"), ("--crop-size", "train_crop_size"),
                          ("--zoom-share", "crop_zoom_share"), ("--widen-factor", "width")]:
        help_text = next(action.help for action in parser._actions if flag in action.option_strings)
        for model in MODELS:
            value = getattr(TrainSettings(model=model), setting)
            if value is not None:  # Swin has no widen factor
                assert f"{value:g} for {model}" in help_text, (flag, model)


@pytest.mark.parametrize("has_bfloat16, wrapper", [(True, "CpuBFloat16OptimWrapper"), (False, "OptimWrapper")])
def test_mixed_precision_trains_on_the_cpu_in_bfloat16_where_it_has_the_instructions(smoke_workdir, has_bfloat16,
                                                                                     wrapper):
    import torch

    run = "amp-bfloat16" if has_bfloat16 else "amp-float32"
    # steps/train.py in a process that takes its CPU to have, or to lack, the instructions
    shim = (f"import runpy, sys, alpr.mmdet_ext; alpr.mmdet_ext.cpu_has_bfloat16 = lambda: {has_bfloat16}; "
            "sys.argv[0] = 'steps/train.py'; runpy.run_path('steps/train.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", shim, "--workdir", str(smoke_workdir),
                             *[{"r1": run}.get(a, a) for a in SMOKE_TRAIN], "--amp"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("--amp: this CPU has no bfloat16 instructions" in result.stderr) is not has_bfloat16
    saved = torch.load(smoke_workdir / f"runs/{run}/train/iter_4.pth", map_location="cpu", weights_only=False)
    assert f"type='{wrapper}'" in saved["meta"]["cfg"] and saved["meta"]["cfg"].count("OptimWrapper'") == 1
    assert saved["meta"]["alpr"]["settings"]["amp"] is True  # as asked: a resumed run asks the same
    assert all(w.dtype == torch.float32 for w in saved["state_dict"].values() if w.is_floating_point())
    losses = [json.loads(line)["loss"] for line in next((smoke_workdir / f"runs/{run}/train").rglob("log.json"))
              .read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 4 and all(math.isfinite(loss) and loss > 0 for loss in losses)


def test_a_run_resumes_only_with_the_settings_it_started_with(smoke_workdir, smoke_training):
    train = smoke_workdir / "runs" / "r1" / "train"
    before = sorted(train.glob("*.pth"))
    other = list(SMOKE_TRAIN)
    other[other.index("--batch-size") + 1] = "4"
    result = run_step_script("train", "--workdir", str(smoke_workdir), *other)
    assert result.returncode == 1 and "batch_size 2 -> 4" in result.stderr and "--run-id" in result.stderr
    assert sorted(train.glob("*.pth")) == before
    by_epochs = [a for a in SMOKE_TRAIN if a not in ("--iters", "4")] + ["--epochs", "1"]
    result = run_step_script("train", "--workdir", str(smoke_workdir), *by_epochs)
    assert result.returncode == 1 and "schedule 'iters' -> 'epochs'" in result.stderr


def test_a_run_resumes_only_on_the_data_it_started_on(tmp_path):
    """A dataset recorded again under its name and version, of other content: the checkpoint knows."""
    from alpr.errors import UsageError
    from alpr.model import TrainSettings
    from alpr.train import check_resumable

    settings = TrainSettings(iters=4)
    started = {"name": "ds", "version": "1", "content_sha256": "a" * 64}
    meta = {"alpr": {"settings": settings.to_dict(), "dataset": started}}
    check_resumable(tmp_path, meta, settings, dict(started))
    with pytest.raises(UsageError, match="other settings .*'content_sha256': 'aaa.*-> .*'content_sha256': 'bbb"):
        check_resumable(tmp_path, meta, settings, {**started, "content_sha256": "b" * 64})
    older = {"alpr": {"settings": settings.to_dict(), "dataset": {"name": "ds", "version": "1"}}}
    check_resumable(tmp_path, older, settings, {**started, "content_sha256": "b" * 64})  # kept no digest


def test_a_resumed_run_compares_the_values_its_settings_resolve_to():
    from alpr.errors import UsageError
    from alpr.model import TrainSettings
    from alpr.train import as_trained

    stored = {**TrainSettings(iters=4).to_dict(), "lr": None, "img_size": None}  # as older runs kept them
    cfg = "optim_wrapper = dict(optimizer=dict(type='AdamW', lr=0.001))\n"  # the default then
    explicit = TrainSettings(iters=4, lr=1e-3, img_size=TrainSettings().image_size)
    assert as_trained({"alpr": {"settings": stored}, "cfg": cfg}) == {**explicit.to_dict(), "schedule": "iters"}
    with pytest.raises(UsageError, match="--lr must be more than 0, got 0"):
        TrainSettings(lr=0)


@pytest.mark.parametrize("flag, value, message", [
    ("--log-interval", "0", "at least 1"), ("--window-size", "0", "at least 1"), ("--warmup-iters", "-1", "at least 0"),
    ("--workers", "-1", "at least 0"), ("--mlp-ratio", "0", "at least 1"), ("--drop-path-rate", "1.5", "from 0 to 1"),
    ("--zoom-share", "-0.1", "from 0 to 1")])
def test_a_training_flag_out_of_its_range_is_a_usage_error_naming_it(flag, value, message):
    from alpr.errors import UsageError
    from steps.train import get_args_parser, settings_from_args

    args = get_args_parser().parse_args(["--dataset", "d", "--version", "1", "--run-id", "r", flag, value])
    with pytest.raises(UsageError, match=f"{flag} must be {message}, got {value}"):
        settings_from_args(args)


def test_a_resumed_iteration_loop_skips_its_trained_batches_without_loading_them():
    import itertools
    from types import SimpleNamespace

    from mmengine.runner import IterBasedTrainLoop

    from alpr.mmdet_ext import AlprRunHook

    loaded = []

    def batches():
        for k in itertools.count():
            loaded.append(k)
            yield k

    loop = IterBasedTrainLoop.__new__(IterBasedTrainLoop)  # the attributes resuming uses, without a runner
    loop._iter, loop.dataloader_iterator = 3, batches()
    AlprRunHook({}).before_train_epoch(SimpleNamespace(train_loop=loop))
    assert [next(loop.dataloader_iterator) for _ in range(5)] == [None, None, None, 0, 1] and loaded == [0, 1]


def test_zoomed_crops_default_to_the_models_own_share_and_an_explicit_zero_turns_them_off(tmp_path):
    from alpr.model import TrainSettings, build_config

    def board_share(**settings) -> float:
        config = build_config(TrainSettings(val_interval=1, **settings), tmp_path, tmp_path, {})
        return next(step for step in config["train_dataloader"]["dataset"]["pipeline"]
                    if step["type"] == "PlateCrop")["board_share"]

    assert board_share(model="rtmdet-ins-tiny") == 0.25  # trains on crops of larger images
    assert board_share(model="smoke") == 0.0  # trains on whole images, as it reads them
    assert board_share(model="rtmdet-ins-tiny", zoom_share=0.0) == 0.0
    assert board_share(model="smoke", zoom_share=0.5) == 0.5
    assert TrainSettings(model="rtmdet-ins-tiny").to_dict()["zoom_share"] == 0.25  # recorded as trained


@pytest.mark.parametrize("crop", [300, 320])
def test_a_crop_size_off_the_largest_stride_trains_padded_to_it(tmp_path, crop):
    """RTMDet's neck joins each feature level to the one above it scaled twice: 300 px levels (38,
    19, 10) would not fit together, so crops are padded to 320."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import alpr.mmdet_ext  # noqa: F401  (registers the model's own parts)
    from alpr.model import TrainSettings, build_config

    register_all_modules()  # mmdet's parts by their plain names, as the training config sets
    config = build_config(TrainSettings(model="smoke", crop_size=crop, val_interval=1), tmp_path, tmp_path, {})
    [pad] = [step for step in config["train_dataloader"]["dataset"]["pipeline"] if step["type"] == "Pad"]
    assert pad["size"] == (320, 320)
    model = MODELS.build(config["model"]).eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, *pad["size"]), mode="tensor")  # raises where the levels do not fit


def test_validation_interval_defaults_to_every_epoch_or_an_epochs_worth_of_iterations():
    from alpr.model import TrainSettings, with_val_interval

    assert with_val_interval(TrainSettings(batch_size=8), 100).val_interval == 1
    assert with_val_interval(TrainSettings(batch_size=8, iters=500), 100).val_interval == 13
    assert with_val_interval(TrainSettings(batch_size=8, minutes=5), 100).val_interval == 13
    assert with_val_interval(TrainSettings(batch_size=8, iters=500, val_interval=50), 100).val_interval == 50


def test_an_unknown_best_metric_fails_before_training(smoke_workdir):
    result = run_step_script("train", "--workdir", str(smoke_workdir), *SMOKE_TRAIN, "--run-id", "bad-metric",
                             "--best-metric", "accuracy")
    assert result.returncode == 1 and "--best-metric 'accuracy': not a score" in result.stderr
    assert "char_accuracy_one_row" in result.stderr and not (smoke_workdir / "runs" / "bad-metric").exists()
    from alpr.errors import UsageError
    from alpr.metrics import check_metric

    with pytest.raises(UsageError, match="'plates': not a score"):  # a count of ground truth, not a score
        check_metric("--metric", "plates")


def test_a_layouts_score_is_refused_on_a_split_without_that_layouts_plates(tmp_path):
    import json

    from alpr.errors import UsageError
    from alpr.metrics import check_metric
    from alpr.plates import CLASSES

    split = tmp_path / "val.json"
    split.write_text(json.dumps({"annotations": [{"category_id": CLASSES.index("l_board") + 1}]}))  # one-row only
    check_metric("--best-metric", "EIR_one_row", split)
    check_metric("--best-metric", "EIR", split)
    with pytest.raises(UsageError, match=r"EIR_two_row: .*val.json has no two-row plates.*\(e.g. EIR\)"):
        check_metric("--best-metric", "EIR_two_row", split)


def test_evaluate_scores_each_saved_weight_set_once(tmp_path):
    import os

    from alpr.evaluate import saved_copies

    names = ["best_EIR_iter_1.pth", "iter_2.pth", "best_dv_mAP_iter_4.pth", "iter_4.pth", "best_EIR_iter_4.pth",
             "best.pth"]
    for age, name in enumerate(reversed(names)):  # newest first: a copy's times say nothing of the order
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (age, age))
    # iter_1.pth was deleted (max_keep_ckpts): its best_ copy is the only one left of those weights
    assert [[p.name for p in copies] for copies in saved_copies(tmp_path)] == \
        [["best_EIR_iter_1.pth"], ["iter_2.pth"], ["best_EIR_iter_4.pth", "best_dv_mAP_iter_4.pth", "iter_4.pth"]]


def test_the_test_step_uses_the_checkpoint_evaluate_picked(tmp_path):
    from alpr.errors import UsageError
    from alpr.visualize import TestOptions, best_checkpoint, test_run

    train = tmp_path / "runs" / "r" / "train"
    train.mkdir(parents=True)
    for name in ("iter_2.pth", "best.pth"):
        (train / name).write_bytes(b"")
    assert best_checkpoint(tmp_path, "r") == train / "best.pth"
    (tmp_path / "runs" / "r" / "eval").mkdir()
    (tmp_path / "runs" / "r" / "eval" / "metrics.json").write_text(json.dumps({"best_checkpoint": "/mnt/w/iter_2.pth"}))
    assert best_checkpoint(tmp_path, "r") == train / "iter_2.pth"  # by name: the volume may mount elsewhere
    (train / "iter_2.pth").unlink()  # pruned by later training: best.pth is another model
    with pytest.raises(UsageError, match="iter_2.pth: the checkpoint `alpr evaluate` picked .* is gone"):
        best_checkpoint(tmp_path, "r")
    (train / "best.pth").write_bytes(b"scored")
    (tmp_path / "runs" / "r" / "eval" / "metrics.json").write_text(json.dumps(
        {"best_checkpoint": "/mnt/w/best.pth", "best_sha256": hashlib.sha256(b"scored").hexdigest()}))
    assert best_checkpoint(tmp_path, "r") == train / "best.pth"
    (train / "best.pth").write_bytes(b"trained on")  # training resumed after evaluate and found a better one
    with pytest.raises(UsageError, match="best.pth: saved again since `alpr evaluate` picked it"):
        best_checkpoint(tmp_path, "r")
    with pytest.raises(UsageError, match="typo.pth: --checkpoint not found"):
        test_run(TestOptions(tmp_path, "r", checkpoint=tmp_path / "typo.pth"))
    with pytest.raises(UsageError, match="train: --checkpoint a folder, not a file"):
        test_run(TestOptions(tmp_path, "r", checkpoint=train))
    with pytest.raises(UsageError, match=r"best.pth: --images a file, not a folder \(a folder of images\)"):
        test_run(TestOptions(tmp_path, "r", images=train / "best.pth", checkpoint=train / "best.pth"))
    with pytest.raises(UsageError, match="run id"):
        test_run(TestOptions(tmp_path, "../r"))  # would write beside runs/



def test_time_budget_schedule_warms_up_then_anneals_over_the_time():
    from alpr.mmdet_ext import time_budget_lr_factor

    def factor(fraction, iteration):
        return time_budget_lr_factor(fraction, iteration, warmup_iters=10, start_factor=1e-3, min_lr_ratio=0.05)

    assert factor(0.0, 0) == pytest.approx(1e-3) and factor(0.0, 5) == pytest.approx(0.5005)
    assert factor(0.0, 10) == factor(0.0, 500) == pytest.approx(1.0)
    assert factor(0.05, 1) == pytest.approx(0.5005 * factor(0.05, 500))  # slow iterations: half the time's tenth
    assert factor(0.1, 1) == factor(0.1, 500)  # warmed up by a tenth of the time, whatever the iterations
    assert factor(0.5, 500) == pytest.approx(0.525)  # halfway down the cosine
    assert factor(1.0, 500) == factor(1.7, 500) == pytest.approx(0.05)  # annealed when the time is up, and after
    later = [factor(f / 10, 500) for f in range(11)]
    assert later == sorted(later, reverse=True)
    for none in (0, 1):  # --warmup-iters 0 or 1: no warm-up, as by iterations (warmup_end)
        assert time_budget_lr_factor(0.0, 0, none, start_factor=1e-3, min_lr_ratio=0.05) == 1.0


def test_training_by_minutes_ends_by_itself_annealed_and_a_finished_run_stays_finished(smoke_workdir):
    timed = [{"r1": "timed"}.get(a, a) for a in SMOKE_TRAIN if a not in ("--iters", "4")] + ["--minutes", "0.25"]
    timed += ["--glyph-epochs", "1"]  # its seconds count in the 15: the detector's must be most of them
    timed[timed.index("--val-interval") + 1] = "1000"  # validated at the end only
    result = run_step_script("train", "--workdir", str(smoke_workdir), *timed)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]  # no --iters: the time ended it
    train = smoke_workdir / "runs" / "timed" / "train"
    saved = sorted(train.glob("iter_*.pth"))
    assert len(saved) == 1 and (train / "best.pth").is_file()
    scalars = [json.loads(line) for line in next(train.rglob("log.json")).read_text().splitlines()]
    rates = [s["lr"] for s in scalars if "lr" in s]
    assert len(rates) == int(saved[0].stem.split("_")[1]) >= 3 and any("EIR" in s for s in scalars)
    assert rates[-1] == pytest.approx(2e-3 * 0.05)  # the smoke model's peak, annealed to its floor
    assert rates[2:] == sorted(rates[2:], reverse=True)  # warm-up (2 iterations), then down with the time
    assert rates[0] < 0.2 * 2e-3  # warming up from low: the glyph classifier's seconds are not the detector's
    import torch

    spent = torch.load(saved[0], map_location="cpu", weights_only=False)["message_hub"]["runtime_info"]
    assert spent["train_seconds"] >= 15

    again = run_step_script("train", "--workdir", str(smoke_workdir), *timed)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" in (again.stdout + again.stderr).lower() and sorted(train.glob("iter_*.pth")) == saved
    # a retried trial trains no more, and still tells Katib its metrics: the best validation's
    def metric_lines(out: str) -> list[str]:
        return [line for line in out.splitlines() if re.fullmatch(r"(mAP|dv_mAP|EIR)=\S+", line)]

    assert len(metric_lines(again.stdout)) == 3 and metric_lines(again.stdout) == metric_lines(result.stdout)[-3:]
    validations = [line for line in next(train.rglob("log.json")).read_text().splitlines() if '"EIR"' in line]
    assert len(validations) == len([s for s in scalars if "EIR" in s])  # the finished run was not validated again

    # given more minutes, it trains on at its schedule's floor rather than warming up again
    before = len(next(train.rglob("log.json")).read_text().splitlines())
    timed[timed.index("--minutes") + 1] = "0.4"
    longer = run_step_script("train", "--workdir", str(smoke_workdir), *timed)
    assert longer.returncode == 0, longer.stderr[-3000:]
    added = [json.loads(line) for line in next(train.rglob("log.json")).read_text().splitlines()[before:]]
    rates = [s["lr"] for s in added if "lr" in s]
    # (one iteration at least: on a loaded machine the 9 s added may hold no more; warming up again would start
    # at a thousandth of the peak, far under the floor)
    assert rates and rates == pytest.approx([2e-3 * 0.05] * len(rates))

def test_an_empty_split_is_not_scored_as_all_zeros(tmp_path):
    from alpr.errors import UsageError
    from alpr.evaluate import predict_split
    from alpr.plates import CLASSES

    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    (tmp_path / "test.json").write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    with pytest.raises(UsageError, match="test.json: no images in the test split to score"):
        predict_split(None, tmp_path, "test")


def test_evaluate_scores_the_checkpoints_it_can_read_and_names_the_others(smoke_workdir, smoke_training, tmp_path,
                                                                           capsys):
    """A kill while mmengine saved iter_N.pth again, in place, on a new best leaves it cut short."""
    import shutil

    from alpr.errors import UsageError
    from alpr.evaluate import checkpoints

    good = smoke_workdir / "runs" / "r1" / "train" / "iter_4.pth"
    shutil.copy(good, tmp_path / "iter_2.pth")
    (tmp_path / "iter_8.pth").write_bytes(b"cut short")
    assert checkpoints(tmp_path) == [tmp_path / "iter_2.pth"]
    assert "iter_8.pth: not a readable checkpoint" in capsys.readouterr().err
    shutil.copy(good, tmp_path / "best_EIR_iter_8.pth")  # the new best, written whole before iter_8.pth
    assert checkpoints(tmp_path) == [tmp_path / "iter_2.pth", tmp_path / "best_EIR_iter_8.pth"]
    for name in ("iter_2.pth", "best_EIR_iter_8.pth"):
        (tmp_path / name).unlink()
    with pytest.raises(UsageError, match="no readable checkpoint to score"):
        checkpoints(tmp_path)


def test_evaluate_keeps_its_scores_when_plotting_fails(smoke_workdir, smoke_training, tmp_path, monkeypatch):
    from alpr import evaluate

    shutil.copytree(smoke_workdir / "datasets", tmp_path / "datasets")
    (tmp_path / "runs" / "r" / "train").mkdir(parents=True)
    shutil.copy(smoke_workdir / "runs" / "r1" / "train" / "iter_4.pth", tmp_path / "runs" / "r" / "train")

    def no_room(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluate, "plot", no_room)
    with pytest.raises(OSError, match="No space left"):
        evaluate.evaluate_run(evaluate.EvaluateOptions(tmp_path, "r", device="cpu"), progress=False)
    report = json.loads((tmp_path / "runs" / "r" / "eval" / "metrics.json").read_text())
    assert list(report["checkpoints"]) == ["iter_4.pth"] and report["plots"] == [] and "EIR" in report["best"]


def test_evaluate_picks_by_the_metric_the_run_picked_its_best_by_unless_told(smoke_workdir, smoke_training,
                                                                               tmp_path, monkeypatch):
    import torch

    from alpr import evaluate

    shutil.copytree(smoke_workdir / "datasets", tmp_path / "datasets")
    (tmp_path / "runs" / "r" / "train").mkdir(parents=True)
    checkpoint = torch.load(smoke_workdir / "runs" / "r1" / "train" / "iter_4.pth", weights_only=False)
    checkpoint["meta"]["alpr"]["settings"]["best_metric"] = "dv_mAP"  # as trained with --best-metric dv_mAP
    torch.save(checkpoint, tmp_path / "runs" / "r" / "train" / "iter_4.pth")
    monkeypatch.setattr(evaluate, "plot", lambda *_: [])
    report = evaluate.evaluate_run(evaluate.EvaluateOptions(tmp_path, "r", device="cpu"), progress=False)
    assert report["key_metric"] == "dv_mAP"
    told = evaluate.evaluate_run(evaluate.EvaluateOptions(tmp_path, "r", key_metric="mAP", device="cpu"),
                                 progress=False)
    assert told["key_metric"] == "mAP"


def test_evaluate_writes_metrics_plots_and_database_rows(smoke_workdir, smoke_training):
    result = run_step_script("evaluate", "--workdir", str(smoke_workdir), "--run-id", "r1", "--device", "cpu",
                   "--store", (smoke_workdir / "bucket").as_uri())
    assert result.returncode == 0, result.stderr[-3000:]
    found = {m.group(1) for m in KATIB.finditer(result.stdout)}
    assert {"mAP", "dv_mAP", "EIR"} <= found
    eval_dir = smoke_workdir / "runs" / "r1" / "eval"
    report = json.loads((eval_dir / "metrics.json").read_text())
    assert set(report["best"]) >= {"mAP", "bbox_mAP", "dv_mAP", "EIR", "char_accuracy", "EIR_one_row"}
    # every ground-truth plate is accounted for: read, misread, not found or unread and why
    assert sum(report["best"]["outcomes"].values()) == report["best"]["plates"] > 0
    assert "plates: " in result.stdout and "misread characters (true->read): " in result.stdout
    ranked = {name: (m["EIR"], m["mAP"]) for name, m in report["checkpoints"].items()}
    assert ranked[Path(report["best_checkpoint"]).name] == max(ranked.values())  # ties on EIR go to mAP
    for plot in ("precision_recall.png", "confusion.png", "layouts.png", "widths.png"):
        assert (eval_dir / plot).stat().st_size > 1000
    misses = report["best"]["misses"]  # the smoke model reads few plates exactly
    assert len(misses) == report["best"]["plates"] - round(report["best"]["EIR"] * report["best"]["plates"]) > 0
    assert (eval_dir / "misses.png").stat().st_size > 1000 and "misses.png" in report["plots"]
    assert sum(b["plates"] for b in report["best"]["EIR_by_width"].values()) == report["best"]["plates"]
    assert "EIR by plate width: " in result.stdout
    # the pick is uploaded under its own sha256: other weights get another URL, so a redeploy rolls out
    picked_bytes = Path(report["best_checkpoint"]).read_bytes()
    # the weights alone, where training kept a best copy of them: not iter_N.pth's optimizer state too
    assert Path(report["best_checkpoint"]).name.startswith("best_") or not list(
        (smoke_workdir / "runs" / "r1" / "train").glob(f"best_*_{Path(report['best_checkpoint']).name}"))
    assert report["best_sha256"] == hashlib.sha256(picked_bytes).hexdigest()
    key = report["best_sha256"][:12]
    model_uri = (smoke_workdir / "bucket" / "runs" / "r1" / key / "best.pth").as_uri()
    assert report["uploaded"] == (eval_dir / "model-uri").read_text().strip() == model_uri
    assert (smoke_workdir / "bucket" / "runs" / "r1" / key / "best.pth").read_bytes() == picked_bytes
    from alpr import db
    from alpr.model import TrainSettings

    engine = db.connect(f"sqlite:///{smoke_workdir / 'alpr.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(db.run_metrics)).scalar()
        run = conn.execute(sa.select(db.runs)).one()
    assert run.run_id == "r1" and run.model == "smoke" and rows > 10
    params = json.loads(run.params)  # the settings as trained, the model's own values resolved
    assert (params["model"], params["batch_size"], params["img_size"]) == ("smoke", 2, 256)
    assert params["lr"] == TrainSettings(model="smoke").learning_rate
    again = run_step_script("evaluate", "--workdir", str(smoke_workdir), "--run-id", "r1", "--device", "cpu")
    assert again.returncode == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.run_metrics)).scalar() == rows
    # the test split reports beside the pick, and picks nothing
    picked = json.loads((eval_dir / "metrics.json").read_text())
    uploaded = sorted((smoke_workdir / "bucket" / "runs" / "r1").rglob("*.pth"))
    tested = run_step_script("evaluate", "--workdir", str(smoke_workdir), "--run-id", "r1", "--device", "cpu",
                             "--split", "test", "--store", (smoke_workdir / "bucket").as_uri())
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert json.loads((eval_dir / "metrics.json").read_text()) == picked
    test_report = json.loads((eval_dir.parent / "eval-test" / "metrics.json").read_text())
    assert test_report["split"] == "test" and list(test_report["checkpoints"]) == [
        Path(picked["best_checkpoint"]).name]  # only val's pick is scored on test
    assert f"metrics and plots: {eval_dir.parent / 'eval-test'}" in tested.stdout
    assert sorted((smoke_workdir / "bucket" / "runs" / "r1").rglob("*.pth")) == uploaded  # nothing new
    assert (smoke_workdir / "bucket" / "runs" / "r1" / "metrics-test.json").is_file()
    with engine.connect() as conn:
        assert conn.execute(sa.select(db.runs.c.best_checkpoint)).scalar() == run.best_checkpoint
        splits = conn.execute(sa.select(db.run_metrics.c.split).distinct()).scalars().all()
    assert sorted(splits) == ["test", "val"]


def test_test_step_writes_predictions_and_pictures(smoke_workdir, smoke_training):
    result = run_step_script("test", "--workdir", str(smoke_workdir), "--run-id", "r1", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    out = smoke_workdir / "runs" / "r1" / "test"
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    test_split = json.loads((smoke_workdir / "datasets" / "smoke" / "1" / "test.json").read_text())
    assert len(lines) == len(test_split["images"]) and all(set(line) == {"image", "plates"} for line in lines)
    assert len(list((out / "images").glob("*.jpg"))) == len(lines)


def test_an_empty_test_split_is_a_warning_not_the_pipelines_failure(smoke_workdir, smoke_training, tmp_path):
    """A small dataset's 10 % test split may be empty (record warned of it): after training and evaluating,
    the test step must not fail the pipeline before its deploy step."""
    from alpr.errors import UsageError
    from alpr.visualize import TestOptions, test_run

    shutil.copytree(smoke_workdir / "datasets", tmp_path / "datasets")
    test_json = tmp_path / "datasets" / "smoke" / "1" / "test.json"
    test_json.write_text(json.dumps({**json.loads(test_json.read_text()), "images": [], "annotations": []}))
    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    out = test_run(TestOptions(tmp_path, "r", checkpoint=best, device="cpu"), progress=False)
    assert (out / "predictions.jsonl").read_text() == "" and not list((out / "images").iterdir())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="empty: no images"):  # a folder given is one meant to hold some
        test_run(TestOptions(tmp_path, "r", images=tmp_path / "empty", checkpoint=best, device="cpu"))


def test_an_interrupted_test_step_leaves_the_earlier_outputs_and_nothing_half_written(smoke_workdir, smoke_training,
                                                                                        tmp_path, monkeypatch):
    from alpr import visualize

    shutil.copytree(smoke_workdir / "datasets", tmp_path / "datasets")
    out = tmp_path / "runs" / "r" / "test"
    (out / "images").mkdir(parents=True)
    (out / "images" / "old.jpg").write_bytes(b"an earlier test's picture")
    (out / "predictions.jsonl").write_text("an earlier test's lines\n")

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(visualize, "write_picture", interrupted)
    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    with pytest.raises(KeyboardInterrupt):
        visualize.test_run(visualize.TestOptions(tmp_path, "r", checkpoint=best, device="cpu"), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["images", "predictions.jsonl"]  # no .partial left
    assert (out / "predictions.jsonl").read_text() == "an earlier test's lines\n"
    assert [p.name for p in (out / "images").iterdir()] == ["old.jpg"]


def test_test_step_reads_past_an_image_it_cannot_read_and_replaces_its_outputs_whole(smoke_workdir, smoke_training,
                                                                                      synth_dir, tmp_path):
    import cv2

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    # three images whose names differ only by their format or folder: three pictures
    for name in ("a.jpg", "sub/a.jpg"):
        shutil.copy(synth_dir / "000001.jpg", folder / name)
    cv2.imwrite(str(folder / "a.png"), cv2.imread(str(synth_dir / "000002.jpg")))
    (folder / "b.jpg").write_bytes(b"not an image")
    test = ["--workdir", str(smoke_workdir), "--run-id", "r1", "--device", "cpu", "--images", str(folder)]
    out = smoke_workdir / "runs" / "r1" / "test"
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "images" / "old.jpg").write_bytes(b"an earlier test's picture")
    result = run_step_script("test", *test)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "1 of 4 images could not be read" in result.stderr and "b.jpg: not an image file" in result.stderr
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(Path(line["image"]).relative_to(folder).as_posix(), sorted(line)) for line in lines] == [
        ("a.jpg", ["image", "plates"]), ("a.png", ["image", "plates"]), ("b.jpg", ["error", "image"]),
        ("sub/a.jpg", ["image", "plates"])]
    pictures = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*") if p.is_file())
    assert pictures == ["a.jpg", "a.png", "sub/a.jpg"]  # the earlier test's old.jpg is gone
    assert "test: 4/4" in result.stdout  # progress as a log line: the output is no terminal


@pytest.mark.parametrize("precision", [[], ["--amp"]], ids=["float32", "mixed"])
def test_predict_prints_one_json_line_per_image(smoke_workdir, smoke_training, synth_dir, precision):
    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    result = subprocess.run([sys.executable, "-m", "alpr.cli", "predict", str(synth_dir / "000001.jpg"),
                             str(synth_dir / "000002.jpg"), "--model", str(best), "--json", "--device", "cpu",
                             *precision], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["image"]).name for line in lines] == ["000001.jpg", "000002.jpg"]


def test_predict_prints_a_file_name_that_is_not_utf8_with_its_bytes_escaped(smoke_workdir, smoke_training, synth_dir,
                                                                           tmp_path):
    """A name from a Windows archive (Korean CP949 bytes): printed as it was, it raised UnicodeEncodeError
    under a UTF-8 locale (or PYTHONIOENCODING=utf-8), and under the C locale wrote bytes that are not UTF-8."""
    image = tmp_path / os.fsdecode(b"\xc7\xd1\xb1\xdb.jpg")
    shutil.copy(synth_dir / "000001.jpg", image)
    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    for encoding in ({}, {"PYTHONIOENCODING": "utf-8"}):  # stdout as the locale sets it, and strict UTF-8
        result = subprocess.run([sys.executable, "-m", "alpr.cli", "predict", str(image), "--model", str(best),
                                 "--device", "cpu"], cwd=ROOT, capture_output=True, env={**os.environ, **encoding})
        assert result.returncode == 0, (encoding, result.stderr[-2000:])
        [line] = result.stdout.decode().splitlines()
        assert line.startswith(f"{tmp_path}/\\xc7\u0471\\xdb.jpg: "), encoding  # D1 B1 is UTF-8 too, for ѱ


def test_predict_reads_folders_and_goes_on_past_an_image_it_cannot_read(smoke_workdir, smoke_training, synth_dir,
                                                                       tmp_path):
    import cv2
    import numpy as np

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(synth_dir / "000001.jpg", folder / "a.jpg")
    cv2.imwrite(str(folder / "b_thin.png"), np.zeros((1, 2000, 3), np.uint8))
    (folder / "c.jpg").write_bytes(b"not an image")
    shutil.copy(synth_dir / "000002.jpg", folder / "d.jpg")
    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    predict = [sys.executable, "-m", "alpr.cli", "predict", "--model", str(best), "--json", "--device", "cpu"]
    result = subprocess.run([*predict, str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "b_thin.png: 2000x1 px is too thin to read" in result.stderr
    assert "c.jpg: not an image file (no known image format)" in result.stderr
    assert "2 of 4 images could not be read" in result.stderr
    lines = {Path(line["image"]).name: line for line in map(json.loads, result.stdout.splitlines())}
    assert list(lines) == ["a.jpg", "b_thin.png", "c.jpg", "d.jpg"]  # an error line for each that failed
    assert lines["c.jpg"]["error"].endswith("c.jpg: not an image file (no known image format)")
    assert "plates" in lines["d.jpg"]
    result = subprocess.run([*predict, str(folder / "a.jpg"), str(tmp_path / "missing.jpg")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "missing.jpg: image not found" in result.stderr and result.stdout == ""
    # `| head -1`: the reader goes once it has its line, and predict ends as a command SIGPIPE ends
    piped = subprocess.Popen([*predict, str(folder / "a.jpg"), str(folder / "d.jpg"), str(folder / "a.jpg")],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json.loads(piped.stdout.readline())["image"].endswith("a.jpg")
    piped.stdout.close()
    assert piped.wait(timeout=300) == 141 and "Traceback" not in piped.stderr.read()


def test_predict_takes_the_reading_flags_of_serve(synth_dir, tmp_path):
    # the flags reach ReadOptions, which refuses a character score above 1, before any model loads
    result = subprocess.run([sys.executable, "-m", "alpr.cli", "predict", str(synth_dir / "000001.jpg"),
                             "--model", str(tmp_path / "unused.pth"), "--zoom-widths", "256", "--sure-score", "2"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "sure score 2.0: a character score" in result.stderr, result.stderr


@pytest.mark.parametrize("command", [["train"], ["predict"], ["serve"], ["data", "pull"], ["synth"]])
def test_help_names_the_defaults(command):
    result = subprocess.run([sys.executable, "-m", "alpr.cli", *command, "--help"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    expected = {"train": "images per batch (default: 8)", "predict": "(default: [320, 256, 224, 192])",
                "serve": "HTTP port (default: 8080)", "data": "(default: work)",
                "synth": "the same seed gives the same files (default: 0)"}[command[0]]
    assert expected in text and "(default: None)" not in text and "(default: False)" not in text
    says = {"train": "Train a plate model; writes WORKDIR/runs/RUN/train.",
            "predict": "read the plates in images with a trained checkpoint",
            "serve": "Serve an alpr checkpoint as the KServe model 'alpr'.",
            "data": "restore datasets/NAME/VERSION into a workdir", "synth": "Draw synthetic plates on photos"}
    assert says[command[0]] in text  # what the command does, before its flags
    assert ("end its list with --" in text) == (command == ["predict"])  # the one that takes images after flags


def test_a_checkpoint_for_other_classes_is_refused(smoke_workdir, smoke_training, tmp_path):
    import torch

    from alpr import PlateReader
    from alpr.errors import AlprError

    checkpoint = torch.load(smoke_workdir / "runs" / "r1" / "train" / "best.pth", map_location="cpu",
                            weights_only=False)
    checkpoint["meta"]["alpr"]["classes"] = checkpoint["meta"]["alpr"]["classes"][::-1]
    torch.save(checkpoint, tmp_path / "reversed.pth")
    with pytest.raises(AlprError, match="reversed.pth: trained for the classes"):
        PlateReader.from_checkpoint(tmp_path / "reversed.pth", "cpu")


def test_wrong_classes_fail_before_training(smoke_workdir, tmp_path):
    import shutil

    bad = tmp_path / "work"
    shutil.copytree(smoke_workdir / "datasets", bad / "datasets")
    split = bad / "datasets" / "smoke" / "1" / "train.json"
    document = json.loads(split.read_text())
    document["categories"][0]["name"] = "zero"
    split.write_text(json.dumps(document))
    result = run_step_script("train", "--workdir", str(bad), *SMOKE_TRAIN)
    assert result.returncode == 1 and f"{split}: categories" in result.stderr
    assert not (bad / "runs" / "r1" / "train" / "iter_2.pth").exists()


def test_empty_validation_split_fails_before_training(smoke_workdir, tmp_path):
    import shutil

    bad = tmp_path / "work"
    shutil.copytree(smoke_workdir / "datasets", bad / "datasets")
    split = bad / "datasets" / "smoke" / "1" / "val.json"
    split.write_text(json.dumps({**json.loads(split.read_text()), "images": [], "annotations": []}))
    result = run_step_script("train", "--workdir", str(bad), *SMOKE_TRAIN)
    assert result.returncode == 1 and "the val split has no images" in result.stderr


def test_an_edited_split_or_manifest_is_an_error_naming_the_file(smoke_workdir, tmp_path):
    import shutil

    from alpr.errors import UsageError
    from alpr.train import check_dataset

    folder = tmp_path / "dataset"
    shutil.copytree(smoke_workdir / "datasets" / "smoke" / "1", folder)
    val, manifest = folder / "val.json", folder / "manifest.json"
    good_val, good_manifest = val.read_text(), manifest.read_text()
    for path, content, problem in [
        (val, "[]", "val.json: not a COCO file"),
        (val, json.dumps({**json.loads(good_val), "categories": [{"name": "0"}]}), "val.json: each category needs an id"),
        (manifest, json.dumps({"name": "smoke"}), "manifest.json: not a manifest `alpr record` wrote"),
        # the right ids and names in another order: mmdet would number the labels in the file's order
        (val, json.dumps({**json.loads(good_val), "categories": json.loads(good_val)["categories"][::-1]}),
         "val.json: categories .* are not alpr's classes"),
        (val, json.dumps({**json.loads(good_val), "annotations": []}), "val.json: the val split has no plates"),
        (val, json.dumps({**json.loads(good_val), "annotations": [{"id": 1}]}),
         r"val.json: annotation 0 is not an object of a whole-number image_id and a category_id from 1 to 21"),
        (val, json.dumps({**json.loads(good_val), "annotations": [{"image_id": 1, "category_id": 0}]}),
         "val.json: annotation 0 is not"),  # read as the last class, CLASSES[-1]
        (val, json.dumps({**json.loads(good_val), "annotations": [7]}), "val.json: annotation 0 is not"),
    ]:
        path.write_text(content)
        with pytest.raises(UsageError, match=problem):
            check_dataset(folder)
        val.write_text(good_val)
        manifest.write_text(good_manifest)
    assert check_dataset(folder)["content_sha256"]
    with pytest.raises(UsageError, match="typo: no recorded dataset here .*; versions recorded: dataset$"):
        check_dataset(tmp_path / "typo")  # a version that was never recorded: the recorded ones named
    with pytest.raises(UsageError, match="run `alpr record` first"):
        check_dataset(tmp_path / "none" / "1")


def _checkpoint(path: Path, iteration: int) -> Path:
    import torch

    torch.save({"meta": {"iter": iteration}, "state_dict": {}}, path)
    return path


def test_a_moved_run_folder_resumes_from_its_own_checkpoint(tmp_path):
    from alpr.train import resume_point

    old, moved = tmp_path / "old" / "train", tmp_path / "new" / "train"
    for folder in (old, moved):
        folder.mkdir(parents=True)
        _checkpoint(folder / "iter_4.pth", 4)
    (moved / "last_checkpoint").write_text(str(old / "iter_4.pth"))  # as mmengine wrote it before the move
    assert resume_point(moved) == (moved / "iter_4.pth", {"iter": 4})
    assert (moved / "last_checkpoint").read_text() == str(moved / "iter_4.pth")


def test_a_checkpoint_cut_short_gives_way_to_the_one_before(tmp_path, capsys):
    from alpr.errors import UsageError
    from alpr.train import resume_point

    work = tmp_path / "train"
    work.mkdir()
    assert resume_point(work) is None  # a fresh start
    for n in (2, 4, 6):
        _checkpoint(work / f"iter_{n}.pth", n)
    _checkpoint(work / "best_EIR_iter_8.pth", 8)  # not one to resume from
    (work / "iter_6.pth").write_bytes((work / "iter_6.pth").read_bytes()[:100])  # killed while saved again
    (work / "last_checkpoint").write_text(str(work / "iter_6.pth"))
    assert resume_point(work) == (work / "iter_4.pth", {"iter": 4})
    assert "iter_6.pth: not a readable checkpoint" in capsys.readouterr().err
    assert (work / "last_checkpoint").read_text() == str(work / "iter_4.pth")  # what mmengine then loads
    (work / "last_checkpoint").write_text("")  # killed while mmengine wrote it
    assert resume_point(work)[0] == work / "iter_4.pth"
    (work / "last_checkpoint").unlink()  # checkpoints but no marker: still a resume, not a fresh start
    assert resume_point(work)[0] == work / "iter_4.pth"
    for n in (2, 4):
        (work / f"iter_{n}.pth").write_bytes(b"")
    with pytest.raises(UsageError, match="no readable checkpoint to resume from"):
        resume_point(work)


def test_a_file_that_is_no_checkpoint_is_named_without_a_traceback(smoke_workdir, smoke_training, synth_dir,
                                                                    tmp_path):
    import torch

    from alpr.errors import UsageError
    from alpr.train import alpr_meta

    best = (smoke_workdir / "runs" / "r1" / "train" / "best.pth").read_bytes()
    (tmp_path / "half.pth").write_bytes(best[:len(best) // 2])
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    with pytest.raises(UsageError, match="half.pth: not a readable checkpoint"):
        alpr_meta(tmp_path / "half.pth")
    with pytest.raises(UsageError, match="foreign.pth: not an alpr checkpoint"):
        alpr_meta(tmp_path / "foreign.pth")
    image = synth_dir / "000001.jpg"
    result = subprocess.run([sys.executable, "-m", "alpr.cli", "predict", str(image), "--model", str(image)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "000001.jpg: not a readable checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_step_script("train", "--workdir", str(smoke_workdir), *SMOKE_TRAIN[:7], "load-bad",
                             *SMOKE_TRAIN[8:], "--load-from", str(tmp_path / "half.pth"))
    assert result.returncode == 1 and "half.pth: not a readable checkpoint" in result.stderr
    assert not (smoke_workdir / "runs" / "load-bad").exists()


def test_training_starts_from_the_load_from_checkpoints_weights(smoke_workdir, smoke_training):
    import torch

    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    result = run_step_script("train", "--workdir", str(smoke_workdir), *SMOKE_TRAIN[:7], "loaded", *SMOKE_TRAIN[8:],
                             "--iters", "1", "--val-interval", "1", "--lr", "1e-12", "--load-from", str(best))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    start = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    assert f"--load-from {best}: {len(start)} of this network's {len(start)} weights" in result.stdout
    after = torch.load(smoke_workdir / "runs" / "loaded" / "train" / "iter_1.pth", map_location="cpu",
                       weights_only=False)["state_dict"]
    # a step at a learning rate of 1e-12 leaves the weights as loaded (batch norm statistics move regardless)
    weights = [key for key in start if key.endswith((".weight", ".bias"))]
    assert len(weights) > 20 and all(torch.allclose(start[key], after[key], atol=1e-6) for key in weights)
    again = run_step_script("train", "--workdir", str(smoke_workdir), *SMOKE_TRAIN[:7], "loaded", *SMOKE_TRAIN[8:],
                            "--iters", "1", "--val-interval", "1", "--lr", "1e-12", "--load-from", str(best))
    assert again.returncode == 0 and "is not loaded: run loaded resumes" in again.stdout


def test_a_load_from_checkpoint_of_another_network_is_refused_before_training(smoke_workdir, smoke_training):
    from alpr.errors import UsageError
    from alpr.model import TrainSettings
    from alpr.train import check_start_checkpoint

    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"  # smoke: rtmdet-ins-tiny's network, narrower
    width = TrainSettings(model="smoke").width
    check_start_checkpoint(best, TrainSettings(model="smoke", lr=1e-4, window_size=12))  # the same network
    check_start_checkpoint(best, TrainSettings(model="rtmdet-ins-tiny", widen_factor=width))  # the same too
    with pytest.raises(UsageError, match=f"best.pth: its weights are of an RTMDet-Ins at widen factor {width}, this "
                                         f"run trains an RTMDet-Ins at widen factor {TrainSettings().width}"):
        check_start_checkpoint(best, TrainSettings(model="rtmdet-ins-tiny"))
    with pytest.raises(UsageError, match="this run trains a Swin-T Mask R-CNN"):
        check_start_checkpoint(best, TrainSettings(model="mask-rcnn-swin-t"))


def test_a_foreign_load_from_checkpoint_with_no_weight_that_fits_is_refused(smoke_workdir, smoke_training, tmp_path):
    import torch

    from alpr.errors import UsageError
    from alpr.model import TrainSettings, build_config
    from alpr.train import check_weights_fit

    train = smoke_workdir / "runs" / "r1" / "train"
    settings = TrainSettings(model="smoke", img_size=256, iters=4, val_interval=2)
    config = build_config(settings, smoke_workdir / "datasets" / "smoke" / "1", tmp_path / "w", {"name": "smoke"})
    weights = torch.load(train / "best.pth", map_location="cpu", weights_only=False)["state_dict"]
    torch.save({"state_dict": weights}, tmp_path / "bare.pth")  # not alpr's: no meta, but this network's weights
    check_weights_fit(tmp_path / "bare.pth", settings, config)
    with pytest.raises(UsageError, match="glyph_net.pth: none of its .* weights fit an RTMDet-Ins"):
        check_weights_fit(train / "glyph_net.pth", settings, config)
    result = run_step_script("train", "--workdir", str(smoke_workdir), *SMOKE_TRAIN[:7], "foreign",
                             *SMOKE_TRAIN[8:], "--load-from", str(train / "glyph_net.pth"))
    assert result.returncode == 1 and "none of its" in result.stderr and "Traceback" not in result.stderr
    assert not (smoke_workdir / "runs" / "foreign").exists()


def test_no_warm_up_is_a_schedule_of_its_own():
    from alpr.model import TrainSettings, _schedule

    for by_epoch in (True, False):
        # one iteration is none: LinearLR peaks at its end - 1, and one ending at 1 never leaves its start
        for warmup in (0, 1):
            settings = TrainSettings(model="smoke", epochs=3, iters=300, warmup_iters=warmup)
            assert [step["type"] for step in _schedule(settings, by_epoch, None)] == ["CosineAnnealingLR"]
        settings = TrainSettings(model="smoke", epochs=3, iters=300, warmup_iters=5)
        assert [step["type"] for step in _schedule(settings, by_epoch, None)] == ["LinearLR", "CosineAnnealingLR"]


def test_the_warm_up_ends_by_a_tenth_of_the_run():
    """A fine-tune of 3 epochs of 13 iterations would end inside a 100-iteration warm-up, its learning rate
    never near its peak."""
    from alpr.model import TrainSettings, warmup_end

    assert warmup_end(TrainSettings(batch_size=8, epochs=3), 100) == 4  # 3 x 13 iterations
    assert warmup_end(TrainSettings(batch_size=8, epochs=3), None) == 100  # the epoch's length unknown
    assert warmup_end(TrainSettings(batch_size=8, epochs=300), 100) == 100
    assert warmup_end(TrainSettings(batch_size=8, iters=500), 100) == 50
    assert warmup_end(TrainSettings(batch_size=8, iters=10), 100) == 2  # a tenth is 1: LinearLR's least
    assert warmup_end(TrainSettings(batch_size=8, iters=500, warmup_iters=1), 100) == 0  # it would never peak
    assert warmup_end(TrainSettings(batch_size=8, iters=500, warmup_iters=0), 100) == 0


def test_whether_a_run_warms_up_does_not_change_with_its_length():
    """A resumed run may train longer; mmengine loads each saved scheduler's state into the one at its
    place, so a warm-up that came or went with the length would take the cosine's state."""
    from alpr.model import TrainSettings, _schedule

    for warmup in (0, 1, 2, 100):
        settings = [TrainSettings(model="smoke", iters=iters, warmup_iters=warmup) for iters in (1, 4, 19, 21, 5000)]
        shapes = {tuple(step["type"] for step in _schedule(s, False, None)) for s in settings}
        assert len(shapes) == 1, (warmup, shapes)


def test_evaluate_checks_the_database_and_the_store_before_scoring(smoke_workdir, smoke_training, tmp_path):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(smoke_workdir / "runs" / "r1" / "train", work / "runs" / "r1" / "train")
    shutil.copytree(smoke_workdir / "datasets", work / "datasets")
    for flags, message in [(["--db-url", "nonsense"], "is not a SQLAlchemy URL"),
                           (["--store", "s3://bucket/alpr"], "unsupported storage URL"),
                           (["--require-store", "true"], "no --store, and deploy=true serves the model from it"),
                           (["--require-store", "true", "--store", (tmp_path / "bucket").as_uri()],
                            "and deploy=true serves the model from it: give the workflow a gs:// store")]:
        result = run_step_script("evaluate", "--workdir", str(work), "--run-id", "r1", "--device", "cpu", *flags)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
        assert not (work / "runs" / "r1" / "eval").exists()
    (tmp_path / "file").write_text("a file where the bucket should be")
    result = run_step_script("evaluate", "--workdir", str(work), "--run-id", "r1", "--device", "cpu", "--store",
                             (tmp_path / "file").as_uri())
    assert result.returncode == 1 and f"cannot write under {tmp_path / 'file'} (a file)" in result.stderr
    assert not (work / "runs" / "r1" / "eval").exists()  # refused before the scoring
    (tmp_path / "full" / "runs").mkdir(parents=True)
    (tmp_path / "full" / "runs" / "r1").write_text("a file where a folder should be: the upload fails after scoring")
    store = (tmp_path / "full").as_uri()
    earlier = work / "runs" / "r1" / "eval" / "model-uri"
    earlier.parent.mkdir()
    earlier.write_text("gs://bucket/alpr/runs/r1/0123456789ab/best.pth\n")  # an earlier evaluation's upload
    result = run_step_script("evaluate", "--workdir", str(work), "--run-id", "r1", "--device", "cpu", "--store", store)
    assert result.returncode == 1 and f"{store}/runs/r1/" in result.stderr and "Traceback" not in result.stderr
    report = json.loads((work / "runs" / "r1" / "eval" / "metrics.json").read_text())
    assert report["best"]["plates"] > 0 and "uploaded" not in report  # the scores kept, no upload claimed
    assert not earlier.exists()  # nor the earlier one's upload left as this one's


def test_the_validated_step_comes_from_its_marker_or_for_older_runs_from_the_log(tmp_path):
    from alpr.mmdet_ext import validated_step

    assert validated_step(tmp_path, 8) == 0
    (tmp_path / "log.json").write_text('{"mAP": 0.5, "dv_mAP": 0.4, "EIR": 0.3, "step": 0}\n')
    assert validated_step(tmp_path, 8) == 8  # no marker yet: as validated as alpr then took it to be
    (tmp_path / "validated_step").write_text("6\n")
    assert validated_step(tmp_path, 8) == 6
    (tmp_path / "validated_step").write_text("")  # cut short: validated again
    assert validated_step(tmp_path, 8) == 0


def test_the_last_validation_is_found_past_a_line_cut_short(tmp_path):
    from alpr.mmdet_ext import last_validation

    log = tmp_path / "log.json"
    log.write_text('{"mAP": 0.5, "dv_mAP": 0.4, "EIR": 0.3, "step": 2}\n{"loss": 1.0, "iter": 3}\n{"mAP": 0.')
    assert last_validation(log) == {"mAP": 0.5, "dv_mAP": 0.4, "EIR": 0.3, "step": 2}
    assert last_validation(tmp_path / "none.json") is None


def test_the_best_validation_is_the_latest_of_those_scoring_the_most():
    """What a resumed run prints for Katib first: the run's best may be in a pod before's output only."""
    import tempfile

    from alpr.mmdet_ext import best_validation

    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "log.json"
        log.write_text("".join(json.dumps({"mAP": m, "dv_mAP": 0.1, "EIR": e, "step": s}) + "\n"
                               for m, e, s in [(0.2, 0.5, 1), (0.3, 0.9, 2), (0.1, 0.9, 3), (0.5, 0.7, 4)]))
        assert best_validation(log, "EIR")["step"] == 3 and best_validation(log, "mAP")["step"] == 4
        assert best_validation(Path(folder) / "none.json", "EIR") is None
