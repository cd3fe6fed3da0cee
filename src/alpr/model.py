"""The models alpr trains, as mmengine configs built in code (no config files, no downloads).

- ``rtmdet-ins-tiny``: RTMDet-Ins tiny (CSPNeXt + PAFPN + instance kernels); the default, fast on CPU.
- ``mask-rcnn-swin-t``: Mask R-CNN with a Swin-T backbone and FPN; the seed-era model.
- ``smoke``: RTMDet-Ins at a quarter of tiny's width, small enough to train in CI on 2 cores.

All start from random weights unless ``load_from`` names a local checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from alpr.errors import UsageError
from alpr.glyphs import GLYPH_NET
from alpr.plates import CLASSES

MODELS = ("rtmdet-ins-tiny", "mask-rcnn-swin-t", "smoke")
PAD_VALUE = (114, 114, 114)
LARGEST_STRIDE = 32  # the backbones' deepest stride: inputs are padded to a multiple of it
WARMUP_START = 1e-3  # the warm-up's first learning rate, as a fraction of the peak
WARMUP_SHARE = 0.1  # the warm-up ends by a tenth of the run (its iterations, or its time), however short
MIN_LR_RATIO = 0.05  # where the cosine schedule ends, as a fraction of the peak
UNTIL_TIME_IS_UP = 2**31 - 1  # the iteration limit of a run trained by --minutes alone
# px: the plates of the --zoom-share crops are 0.8 to 1.25 times this wide, the widest of those
# PlateReader reads each plate again at (ReadOptions.zoom_widths).
ZOOM_BOARD_WIDTH = 320
ZOOM_BOARD_WIDTHS = (0.8 * ZOOM_BOARD_WIDTH, 1.25 * ZOOM_BOARD_WIDTH)
# Each model's image size and training crop. rtmdet-ins-tiny reads full-HD detail but trains on
# 448 px crops: trained so for 30 CPU minutes, it read 7-21 % of fresh plates, and none when trained
# on whole images padded to 640 px squares (benchmarks/RESULTS.md).
MODEL_SIZES = {"smoke": (320, 320), "rtmdet-ins-tiny": (1280, 448), "mask-rcnn-swin-t": (800, 800)}
# Each model's share of training crops zoomed so that their plate is about as wide as PlateReader reads
# it again (--zoom-share). rtmdet-ins-tiny's crops of 1280 px images: a quarter so read 0.952 and 0.969
# of fresh plates after 1,460 CPU iterations, where none so had read 0.946 after 2,248 (RESULTS.md, "A
# quarter of the crops at the reading's size"). The others train on whole images, as they read them.
MODEL_ZOOM_SHARES = {"rtmdet-ins-tiny": 0.25}
# AdamW at batch 8; 2e-3 read more plates than 1e-3 for three training seeds (RESULTS.md, "Twice the learning rate")
MODEL_LEARNING_RATES = {"smoke": 2e-3, "rtmdet-ins-tiny": 2e-3, "mask-rcnn-swin-t": 1e-4}
MODEL_WIDEN_FACTORS = {"smoke": 0.125, "rtmdet-ins-tiny": 0.375}  # the RTMDet models' width multiplier


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run is made of; stored in every checkpoint."""

    model: str = "rtmdet-ins-tiny"
    epochs: int = 30
    iters: int | None = None  # when set, train by iterations instead of epochs
    minutes: float | None = None  # when set, train by iterations until this much time is spent (see TimeBudgetHook)
    val_interval: int | None = None  # epochs, or iterations when by iterations; default: an epoch's worth
    batch_size: int = 8
    lr: float | None = None  # default: the model's own (MODEL_LEARNING_RATES)
    weight_decay: float = 0.05
    img_size: int | None = None  # default: the model's own
    crop_size: int | None = None  # square crops trained on, from images resized to img_size; default: the model's
    # share of training crops resized so that their plate is about as wide as PlateReader reads it again;
    # default: the model's own (MODEL_ZOOM_SHARES)
    zoom_share: float | None = None
    widen_factor: float | None = None  # rtmdet models
    drop_rate: float = 0.0  # swin
    drop_path_rate: float = 0.2  # swin
    window_size: int = 7  # swin
    mlp_ratio: int = 4  # swin; mmdet's Swin takes a whole ratio (its hidden width is ratio x width)
    warmup_iters: int = 100
    glyph_epochs: int = 6  # the glyph classifier's training (alpr.glyphs); 0: none, the detector's classes stand
    num_workers: int = 2
    amp: bool = False
    seed: int = 0
    best_metric: str = "EIR"
    log_interval: int = 10

    def __post_init__(self):
        if self.model not in MODELS:
            raise UsageError(f"--model {self.model!r}: expected one of {', '.join(MODELS)}")
        # None is "not given" (or the model's own); a flag's name is its field's, but --workers
        for names, valid, expected in [
            (("epochs", "iters", "batch_size", "val_interval", "window_size", "mlp_ratio", "log_interval"),
             lambda v: v >= 1, "at least 1"),
            (("warmup_iters", "glyph_epochs", "num_workers", "weight_decay"), lambda v: v >= 0, "at least 0"),
            (("minutes", "lr", "img_size", "crop_size", "widen_factor"), lambda v: v > 0, "more than 0"),
            (("zoom_share", "drop_rate", "drop_path_rate"), lambda v: 0 <= v <= 1, "from 0 to 1"),
        ]:
            for name in names:
                value = getattr(self, name)
                if value is not None and not valid(value):
                    flag = "workers" if name == "num_workers" else name.replace("_", "-")
                    raise UsageError(f"--{flag} must be {expected}, got {value}")

    @property
    def by_epoch(self) -> bool:
        return self.iters is None and self.minutes is None

    @property
    def image_size(self) -> int:
        return self.img_size or MODEL_SIZES[self.model][0]

    @property
    def train_crop_size(self) -> int:
        return self.crop_size or min(self.image_size, MODEL_SIZES[self.model][1])  # never larger than the image

    @property
    def crop_zoom_share(self) -> float:
        return MODEL_ZOOM_SHARES.get(self.model, 0.0) if self.zoom_share is None else self.zoom_share

    @property
    def learning_rate(self) -> float:
        return self.lr or MODEL_LEARNING_RATES[self.model]

    @property
    def width(self) -> float | None:
        """The rtmdet models' widen factor (None for Swin)."""
        if self.model not in MODEL_WIDEN_FACTORS:
            return None
        return self.widen_factor or MODEL_WIDEN_FACTORS[self.model]

    @property
    def schedule(self) -> str:
        return "minutes" if self.minutes else "iters" if self.iters else "epochs"

    def to_dict(self) -> dict:
        """The settings as trained: a run's meta, its database row and a resumed run's check name the
        values used, not None for "the model's own"."""
        return {**asdict(self), "lr": self.learning_rate, "img_size": self.image_size,
                "crop_size": self.train_crop_size, "zoom_share": self.crop_zoom_share, "widen_factor": self.width}


def _rtmdet(widen: float, num_classes: int) -> dict:
    channels = [int(c * widen) for c in (256, 512, 1024)]
    width = int(256 * widen)
    norm, act = dict(type="BN"), dict(type="SiLU", inplace=True)
    return dict(
        type="RTMDet",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[103.53, 116.28, 123.675],
                               std=[57.375, 57.12, 58.395], bgr_to_rgb=False, batch_augments=None),
        backbone=dict(type="FastPoolingCSPNeXt", arch="P5", expand_ratio=0.5, deepen_factor=0.167,
                      widen_factor=widen, channel_attention=True, norm_cfg=norm, act_cfg=act),
        neck=dict(type="CSPNeXtPAFPN", in_channels=channels, out_channels=width, num_csp_blocks=1,
                  expand_ratio=0.5, norm_cfg=norm, act_cfg=act),
        bbox_head=dict(
            type="BatchedRTMDetInsHead", num_classes=num_classes, in_channels=width, stacked_convs=2,
            share_conv=True, pred_kernel_size=1, feat_channels=width, act_cfg=act, mask_priors_per_image=32,
            norm_cfg=dict(type="BN", requires_grad=True),
            anchor_generator=dict(type="MlvlPointGenerator", offset=0, strides=[8, 16, 32]),
            bbox_coder=dict(type="DistancePointBBoxCoder"),
            loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
            loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
            loss_mask=dict(type="DiceLoss", loss_weight=2.0, eps=5e-6, reduction="mean")),
        train_cfg=dict(assigner=dict(type="DynamicSoftLabelAssigner", topk=13), allowed_border=-1, pos_weight=-1,
                       debug=False),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.6),
                      max_per_img=100, mask_thr_binary=0.5),
    )


def _mask_rcnn_swin(settings: TrainSettings, num_classes: int) -> dict:
    def box_coder(stds):
        return dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=stds)

    def assigner(pos, neg, low):
        return dict(type="MaxIoUAssigner", pos_iou_thr=pos, neg_iou_thr=neg, min_pos_iou=low,
                    match_low_quality=True, ignore_iof_thr=-1)

    def roi_extractor(size):
        return dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=size, sampling_ratio=0),
                    out_channels=256, featmap_strides=[4, 8, 16, 32])

    return dict(
        type="MaskRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_mask=True,
                               pad_size_divisor=LARGEST_STRIDE),
        backbone=dict(type="SwinTransformer", embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                      window_size=settings.window_size, mlp_ratio=settings.mlp_ratio, qkv_bias=True, qk_scale=None,
                      drop_rate=settings.drop_rate, attn_drop_rate=0.0, drop_path_rate=settings.drop_path_rate,
                      patch_norm=True, out_indices=(0, 1, 2, 3), with_cp=False, convert_weights=False, init_cfg=None),
        neck=dict(type="FPN", in_channels=[96, 192, 384, 768], out_channels=256, num_outs=5),
        rpn_head=dict(
            type="RPNHead", in_channels=256, feat_channels=256,
            anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.25, 0.5, 1.0, 2.0],
                                  strides=[4, 8, 16, 32, 64]),
            bbox_coder=box_coder([1.0] * 4),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        roi_head=dict(
            type="StandardRoIHead",
            bbox_roi_extractor=roi_extractor(7),
            bbox_head=dict(type="Shared2FCBBoxHead", in_channels=256, fc_out_channels=1024, roi_feat_size=7,
                           num_classes=num_classes, bbox_coder=box_coder([0.1, 0.1, 0.2, 0.2]),
                           reg_class_agnostic=False,
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                           loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
            mask_roi_extractor=roi_extractor(14),
            mask_head=dict(type="FCNMaskHead", num_convs=4, in_channels=256, conv_out_channels=256,
                           num_classes=num_classes,
                           loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(assigner=assigner(0.7, 0.3, 0.3),
                     sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1,
                                  add_gt_as_proposals=False),
                     allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7),
                              min_bbox_size=0),
            rcnn=dict(assigner=assigner(0.5, 0.5, 0.5),
                      sampler=dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1,
                                   add_gt_as_proposals=True),
                      mask_size=28, pos_weight=-1, debug=False)),
        test_cfg=dict(
            rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100,
                      mask_thr_binary=0.5)),
    )


def model_config(settings: TrainSettings) -> dict:
    if settings.model == "mask-rcnn-swin-t":
        return _mask_rcnn_swin(settings, len(CLASSES))
    return _rtmdet(settings.width, len(CLASSES))


def _stride_multiple(size: int) -> int:
    return -(-size // LARGEST_STRIDE) * LARGEST_STRIDE


def train_pipeline(size: int, crop: int, zoom_share: float) -> list[dict]:
    """Images resized to about ``size``, then ``crop`` x ``crop`` pieces, each holding a whole plate:
    a crop smaller than the size trains at full detail (small plates stay readable) for the cost
    of a small image. A ``zoom_share`` of the pieces are resized instead so that their plate is
    about ZOOM_BOARD_WIDTH px wide, as ``PlateReader`` reads each plate again."""
    narrowest, widest = ZOOM_BOARD_WIDTHS
    widest = min(widest, crop)  # a board wider than the crop would be cut
    # No flips: a mirrored character is another character (or none).
    return [
        dict(type="LoadImageAsRead"),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True, poly2mask=False),
        # resized at random to about size, cut before resizing (only the crop is resized)
        dict(type="PlateCrop", crop_size=(crop, crop), scale=(size, size), ratio_range=(0.8, 1.25),
             board_width=(min(narrowest, widest), widest), board_share=zoom_share, recompute_bbox=True,
             allow_negative_crop=True),
        dict(type="YOLOXHSVRandomAug"),
        # to a multiple of the largest stride, as for reading: RTMDet's neck joins each level to the
        # next one up, scaled twice, so a 300 px crop (levels 38, 19, 10) would not fit together
        dict(type="Pad", size=(_stride_multiple(crop),) * 2, pad_val=dict(img=PAD_VALUE)),
        dict(type="FilterAnnotations", min_gt_bbox_wh=(1, 1)),
        dict(type="UseFilledPolygonMasks"),
        dict(type="PackDetInputs"),
    ]


def test_pipeline(size: int) -> list[dict]:
    return [
        dict(type="LoadImageAsRead"),
        dict(type="Resize", scale=(size, size), keep_ratio=True),
        # to a multiple of the largest stride only: a 16:9 image is not padded to a square
        dict(type="Pad", size_divisor=LARGEST_STRIDE, pad_val=dict(img=PAD_VALUE)),
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
    ]


def _dataset(dataset_dir: Path, split: str, pipeline: list[dict], train: bool) -> dict:
    return dict(type="CocoDataset", data_root=str(dataset_dir), ann_file=f"{split}.json",
                data_prefix=dict(img="images/"), metainfo=dict(classes=CLASSES),
                # training leaves out the images without plates, as mmdet does by default and as every
                # accuracy figure was measured (training on them too is untested: benchmarks/RESULTS.md)
                filter_cfg=dict(filter_empty_gt=train, min_size=1), pipeline=pipeline, test_mode=not train)


def _loader(dataset: dict, batch_size: int, workers: int, shuffle: bool, endless: bool = False) -> dict:
    """``endless``: one epoch without end, for training by iterations. Each new epoch would leave
    the GPU idle while every worker makes its first batch again (seconds, at 256 images a batch).
    A batch's tensors come from a worker in one block per dtype (``shared_storage_collate``)."""
    sampler = "InfiniteSampler" if endless else "DefaultSampler"
    return dict(batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0,
                sampler=dict(type=sampler, shuffle=shuffle), dataset=dataset,
                collate_fn=dict(type="shared_storage_collate"))


def warmup_end(settings: TrainSettings, train_images: int | None = None) -> int:
    """The iteration a run by epochs or iterations ends its linear warm-up at: --warmup-iters, or a tenth of
    the run's iterations where that is sooner, but not under 2 (a short fine-tune's learning rate would
    never peak; by epochs, with ``train_images`` unknown, --warmup-iters). LinearLR peaks at its end - 1:
    one that ends at 1 never leaves its start, so --warmup-iters 1 is none. Whether there is a warm-up
    depends on --warmup-iters alone, never on the run's length, which a resumed run may change: mmengine
    restores each saved scheduler's state (its end too) into the one at its place."""
    if settings.warmup_iters < 2:
        return 0
    epoch = math.ceil(train_images / settings.batch_size) if train_images else None
    run = settings.iters if not settings.by_epoch else settings.epochs * epoch if epoch else None
    return settings.warmup_iters if run is None else min(settings.warmup_iters, max(2, math.ceil(WARMUP_SHARE * run)))


def _schedule(settings: TrainSettings, by_epoch: bool, train_images: int | None) -> list[dict]:
    """Linear warm-up (``warmup_end``), then cosine annealing over the whole run."""
    total = settings.epochs if by_epoch else settings.iters
    end = warmup_end(settings, train_images)
    warmup = [dict(type="LinearLR", start_factor=WARMUP_START, by_epoch=False, begin=0, end=end)]
    return warmup * bool(end) + [
        dict(type="CosineAnnealingLR", eta_min=settings.learning_rate * MIN_LR_RATIO, begin=0, end=total,
             T_max=total, by_epoch=by_epoch, convert_to_iter_based=by_epoch),
    ]


def with_val_interval(settings: TrainSettings, train_images: int) -> TrainSettings:
    """The settings with the validation interval made explicit: by default every epoch, or when
    training by iterations, an epoch's worth of them (so a long run does not validate each one)."""
    if settings.val_interval is not None:
        return settings
    return replace(settings, val_interval=1 if settings.by_epoch else math.ceil(train_images / settings.batch_size))


def _optim_wrapper_type(amp: bool, device: str) -> str:
    """--amp: float16 with loss scaling on CUDA (mmengine's wrapper), bfloat16 on the CPU (alpr's)."""
    if not amp:
        return "OptimWrapper"
    return "AmpOptimWrapper" if device == "cuda" else "CpuBFloat16OptimWrapper"


def build_config(settings: TrainSettings, dataset_dir: Path, work_dir: Path, dataset: dict,
                 load_from: str | None = None, resumed_at: int | None = None, device: str = "cpu",
                 amp: bool = False, spent_seconds: float = 0.0, train_images: int | None = None) -> dict:
    """The complete mmengine config of a training run. ``amp``: whether it trains in mixed precision, which
    ``settings.amp`` asks for and the device may not pay for (``mmdet_ext.mixed_precision_pays``);
    ``resumed_at``: the training step its checkpoint resumes from (None: a fresh start);
    ``spent_seconds``: of ``settings.minutes``, spent before the runner starts; ``train_images``: those
    trained on (``train.trained_images``), for the warm-up's length (``warmup_end``)."""
    size, crop = settings.image_size, settings.train_crop_size
    by_epoch = settings.by_epoch
    if settings.val_interval is None:
        raise ValueError("build_config needs the validation interval resolved: see with_val_interval")
    train_loop = (dict(type="EpochBasedTrainLoop", max_epochs=settings.epochs, val_interval=settings.val_interval)
                  if by_epoch else
                  dict(type="IterBasedTrainLoop", max_iters=settings.iters or UNTIL_TIME_IS_UP,
                       val_interval=settings.val_interval))
    optimizer = dict(type="AdamW", lr=settings.learning_rate, weight_decay=settings.weight_decay)
    val_file = str(dataset_dir / "val.json")
    glyph_net = str(work_dir / GLYPH_NET)  # where the training step saves the glyph classifier, if it trains one
    return dict(
        default_scope="mmdet",
        custom_imports=dict(imports=["alpr.mmdet_ext"], allow_failed_imports=False),
        model=model_config(settings),
        work_dir=str(work_dir),
        train_dataloader=_loader(_dataset(dataset_dir, "train", train_pipeline(size, crop, settings.crop_zoom_share),
                                          True), settings.batch_size, settings.num_workers, True, endless=not by_epoch),
        val_dataloader=_loader(_dataset(dataset_dir, "val", test_pipeline(size), False), 1, settings.num_workers,
                               False),
        test_dataloader=_loader(_dataset(dataset_dir, "test", test_pipeline(size), False), 1,
                                settings.num_workers, False),
        val_evaluator=dict(type="PlateMetric", ann_file=val_file, glyph_net=glyph_net),
        test_evaluator=dict(type="PlateMetric", ann_file=str(dataset_dir / "test.json"), glyph_net=glyph_net),
        train_cfg=train_loop,
        val_cfg=dict(type="ValLoop"),
        test_cfg=dict(type="TestLoop"),
        optim_wrapper=dict(type=_optim_wrapper_type(amp, device), optimizer=optimizer,
                           clip_grad=dict(max_norm=35, norm_type=2),
                           paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0, bypass_duplicate=True)),
        param_scheduler=None if settings.minutes else _schedule(settings, by_epoch, train_images),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            # validation metrics logged at the iteration when training by iterations, not at "epoch" 0
            logger=dict(type="LoggerHook", interval=settings.log_interval, log_metric_by_epoch=by_epoch),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="LatestBestCheckpointHook", interval=settings.val_interval, by_epoch=by_epoch,
                            save_best=settings.best_metric, rule="greater_or_equal", max_keep_ckpts=3),
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        custom_hooks=[dict(type="AlprRunHook", run_meta=dict(settings=settings.to_dict(), dataset=dataset),
                           priority="LOWEST")]
        + ([dict(type="TimeBudgetHook", minutes=settings.minutes, warmup_iters=settings.warmup_iters,
                 start_factor=WARMUP_START, min_lr_ratio=MIN_LR_RATIO, spent_seconds=spent_seconds)]
           if settings.minutes else []),
        # training crops all have one size, so cuDNN's search for the fastest kernels runs once (and
        # once more for each shape of validation image: one for a camera's images)
        env_cfg=dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="nccl")),
        visualizer=dict(type="DetLocalVisualizer", name="visualizer", vis_backends=[
            dict(type="LocalVisBackend", save_dir=str(work_dir), scalar_save_file="log.json"),
            dict(type="TensorboardVisBackend", save_dir=str(work_dir / "tensorboard")),
        ]),
        log_processor=dict(type="LogProcessor", window_size=settings.log_interval, by_epoch=by_epoch),
        # the runner's build logs its environment, the whole config (saved in the run folder anyway) and a
        # line per parameter group: hundreds of lines that buried alpr's; AlprRunHook.before_run logs on
        log_level="WARNING",
        # a run resumed at step N seeds its sampler, loader workers and crops with seed + N: the start's
        # seed would draw the start's first batches again
        randomness=dict(seed=settings.seed + (resumed_at or 0), deterministic=False),
        load_from=load_from,
        resume=resumed_at is not None,
    )
