"""Train an instance-segmentation plate model on a recorded dataset (resumes by itself).

    python steps/train.py --workdir W --dataset NAME --version V --model rtmdet-ins-tiny --run-id R
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alpr.cli import HelpWithDefaults, or_default, true_or_false
from alpr.model import MODELS, ZOOM_BOARD_WIDTHS, TrainSettings
from alpr.train import DEVICES, TrainOptions, train


def per_model(setting: str) -> str:
    """Each model's default of a TrainSettings property as help text: "0.002 for smoke, ..."."""
    values = {model: getattr(TrainSettings(model=model), setting) for model in MODELS}
    return ", ".join(f"{value:g} for {model}" for model, value in values.items() if value is not None)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    defaults = TrainSettings()
    narrowest, widest = ZOOM_BOARD_WIDTHS
    parser = argparse.ArgumentParser(description="Train a plate model; writes WORKDIR/runs/RUN/train.",
                                     add_help=add_help, formatter_class=HelpWithDefaults)
    parser.add_argument("--workdir", type=Path, default=Path("work"), help="shared work directory")
    parser.add_argument("--dataset", required=True, help="dataset name")
    parser.add_argument("--version", required=True, help="dataset version")
    parser.add_argument("--model", default=defaults.model, choices=MODELS, help="model to train")
    parser.add_argument("--run-id", required=True, help="run folder name under WORKDIR/runs")
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help="epochs (ignored with --iters or --minutes)")
    parser.add_argument("--iters", type=int, default=None, help="train by iterations instead of epochs")
    parser.add_argument("--minutes", type=or_default(float), default=None,
                        help="train by iterations until this much time is spent, the learning rate annealed "
                             "over the time (--iters, if given, still caps the iterations)")
    parser.add_argument("--val-interval", type=int, default=None,
                        help="validate and checkpoint every N epochs, or iterations with --iters or --minutes "
                             "(default: every epoch, or an epoch's worth of iterations)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per batch")
    parser.add_argument("--lr", type=or_default(float), default=None,
                        help=f"learning rate (default, or empty: the model's: {per_model('learning_rate')})")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay")
    parser.add_argument("--img-size", type=or_default(int), default=None,
                        help="size images are resized to (longest side), in training and test (default, or "
                             f"empty: the model's: {per_model('image_size')})")
    parser.add_argument("--crop-size", type=int, default=None,
                        help="train on square crops of this size from the resized images (default: the model's: "
                             f"{per_model('train_crop_size')}; or --img-size where that is smaller)")
    parser.add_argument("--zoom-share", type=float, default=defaults.zoom_share,
                        help=f"share of training crops resized so that their plate is {narrowest:g}-{widest:g} px "
                             "wide, about the widest the reader reads it again at (0 to 1; default: the model's: "
                             f"{per_model('crop_zoom_share')})")
    parser.add_argument("--widen-factor", type=or_default(float), default=None,
                        help=f"RTMDet width multiplier (default, or empty: the model's: {per_model('width')})")
    parser.add_argument("--drop-rate", type=float, default=defaults.drop_rate, help="Swin dropout")
    parser.add_argument("--drop-path-rate", type=float, default=defaults.drop_path_rate, help="Swin drop path")
    parser.add_argument("--window-size", type=int, default=defaults.window_size, help="Swin window size")
    parser.add_argument("--mlp-ratio", type=int, default=defaults.mlp_ratio,
                        help="Swin MLP ratio: each block's hidden layer is this many times its width")
    parser.add_argument("--warmup-iters", type=int, default=defaults.warmup_iters,
                        help="linear warm-up iterations (at most a tenth of the run or its time; 0, 1: none)")
    parser.add_argument("--glyph-epochs", type=int, default=defaults.glyph_epochs,
                        help="epochs of the glyph classifier that reads each character again (0: none)")
    parser.add_argument("--workers", type=int, default=defaults.num_workers, help="data loader processes")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where to train")
    parser.add_argument("--amp", nargs="?", const=True, default=False, type=true_or_false, metavar="true|false",
                        help="mixed precision: float16 on CUDA, bfloat16 on the CPU (--amp alone: true)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument("--best-metric", default=defaults.best_metric,
                        help="validation metric that picks best.pth (EIR, mAP, dv_mAP, ...)")
    parser.add_argument("--log-interval", type=int, default=defaults.log_interval, help="iterations per log line")
    parser.add_argument("--load-from", type=Path, default=None, help="local checkpoint to start from")
    return parser


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    return TrainSettings(
        model=args.model, epochs=args.epochs, iters=args.iters, minutes=args.minutes,
        val_interval=args.val_interval, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        img_size=args.img_size, crop_size=args.crop_size, zoom_share=args.zoom_share,
        widen_factor=args.widen_factor,
        drop_rate=args.drop_rate, drop_path_rate=args.drop_path_rate, window_size=args.window_size,
        mlp_ratio=args.mlp_ratio,
        warmup_iters=args.warmup_iters, glyph_epochs=args.glyph_epochs, num_workers=args.workers, amp=args.amp,
        seed=args.seed,
        best_metric=args.best_metric, log_interval=args.log_interval)


def main(args: argparse.Namespace) -> Path:
    best = train(TrainOptions(args.workdir, args.dataset, args.version, args.run_id, settings_from_args(args),
                              args.device, args.load_from))
    print(f"best checkpoint: {best}")
    return best


if __name__ == "__main__":
    from alpr.cli import run_step

    run_step(get_args_parser, main)
