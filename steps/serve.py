"""Serve a trained model over HTTP with KServe: images in, plates out (V1 and V2 protocols).

    python steps/serve.py --model PATH_OR_URL [--http-port 8080]
"""

from __future__ import annotations

import argparse

from alpr.cli import HelpWithDefaults, add_reading_arguments, reading_options
from alpr.serve import KSERVE_MODEL_DIR, ServeOptions, serve

DEFAULTS = ServeOptions()


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve an alpr checkpoint as the KServe model 'alpr'.",
                                     add_help=add_help, formatter_class=HelpWithDefaults)
    parser.add_argument("--model", default=KSERVE_MODEL_DIR,
                        help="checkpoint path, a folder holding one, or a file:// or gs:// URL "
                             f"(default {KSERVE_MODEL_DIR}, where KServe puts the storageUri)")
    parser.add_argument("--http-port", type=int, default=DEFAULTS.http_port, help="HTTP port")
    parser.add_argument("--device", default=DEFAULTS.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true",
                        help="run the model in bfloat16 on the CPU (float16 on CUDA): faster where the CPU has "
                        "AVX512-BF16 or AMX")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULTS.max_batch_size,
                        help="most images run through the model together")
    parser.add_argument("--max-wait-ms", type=float, default=DEFAULTS.max_wait_ms,
                        help="how long a batch waits for more images after its first")
    parser.add_argument("--max-image-bytes", type=int, default=DEFAULTS.max_image_bytes,
                        help="largest encoded image accepted")
    parser.add_argument("--max-pixels", type=int, default=DEFAULTS.max_pixels,
                        help="largest image accepted, width x height")
    parser.add_argument("--max-images", type=int, default=DEFAULTS.max_images,
                        help="most images in one request")
    parser.add_argument("--max-held-images", type=int, default=DEFAULTS.max_held_images,
                        help="most images decoded and held across concurrent requests; more requests wait")
    parser.add_argument("--request-timeout-s", type=float, default=DEFAULTS.request_timeout_s,
                        help="a request not read within this many seconds is answered 503 (busy) and leaves the "
                             "line, as one whose client has gone would not; 0: no limit")
    add_reading_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> None:
    serve(ServeOptions(args.model, http_port=args.http_port, device=args.device, amp=args.amp,
                       max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                       max_image_bytes=args.max_image_bytes, max_pixels=args.max_pixels, max_images=args.max_images,
                       max_held_images=args.max_held_images, request_timeout_s=args.request_timeout_s,
                       read=reading_options(args)))


if __name__ == "__main__":
    from alpr.cli import run_step

    run_step(get_args_parser, main)
