"""Latency and throughput of the KServe model server (V1, one 1280x720 JPEG per request).

    python benchmarks/serve_speed.py [--checkpoint PATH] [--requests 100] [--concurrency 1 8]
        [--device auto] [--amp] [--port 8085]

Without --checkpoint it trains rtmdet-ins-tiny for 2 iterations on synthetic images: such a model
finds no plate, so it times the first reading only. A trained model's boards are read again from
windows (alpr.reader), which its figures include; each line says how many plates a reply held.
The server runs in a subprocess on 127.0.0.1 with its default batching (--amp: in bfloat16 on the
CPU, float16 on CUDA, as ``alpr serve --amp``); each concurrency level is warmed up first.
"""

import argparse
import base64
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from model_speed import ROOT, bench_image_paths, bench_images, train_bench_model


def start_server(checkpoint: Path, port: int, device: str, amp: bool, log: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, str(ROOT / "steps/serve.py"), "--model", str(checkpoint),
                                "--http-port", str(port), "--device", device, *["--amp"] * amp],
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models/alpr", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the server did not start; its log:\n{log.read_text()[-3000:]}")


def measure(url: str, bodies: list[dict], requests: int, concurrency: int) -> tuple[list[float], float, float]:
    """Per-request latencies in ms, requests/s and plates per reply for ``requests`` calls,
    ``concurrency`` at a time."""
    with httpx.Client(timeout=300) as client:
        def call(index: int) -> tuple[float, int]:
            start = time.perf_counter()
            response = client.post(url, json=bodies[index % len(bodies)])
            response.raise_for_status()
            return (time.perf_counter() - start) * 1000, len(response.json()["predictions"][0]["plates"])

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(call, range(2 * concurrency)))  # warm-up
            start = time.perf_counter()
            latencies, plates = zip(*pool.map(call, range(requests)))
            elapsed = time.perf_counter() - start
    return list(latencies), requests / elapsed, sum(plates) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="alpr checkpoint (default: train a tiny one)")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="serve in mixed precision (alpr serve --amp)")
    parser.add_argument("--port", type=int, default=8085)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = train_bench_model(folder, "rtmdet-ins-tiny", 2, 2, args.device) / "runs/bench/train/best.pth"
        else:
            bench_images(folder, 16)
        bodies = [{"instances": [{"image_b64": base64.b64encode(p.read_bytes()).decode()}]}
                  for p in bench_image_paths(folder)]
        server = start_server(checkpoint, args.port, args.device, args.amp, folder / "server.log")
        try:
            url = f"http://127.0.0.1:{args.port}/v1/models/alpr:predict"
            for concurrency in args.concurrency:
                latencies, throughput, plates = measure(url, bodies, args.requests, concurrency)
                p95 = statistics.quantiles(latencies, n=20)[-1]
                print(f"concurrency={concurrency} requests={args.requests} latency_median_ms="
                      f"{statistics.median(latencies):.1f} latency_p95_ms={p95:.1f} "
                      f"throughput_rps={throughput:.2f} plates_per_reply={plates:.2f}  ({checkpoint.name}, "
                      f"{args.device}{', mixed precision' if args.amp else ''}, 1280x720 JPEG)")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
