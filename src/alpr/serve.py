"""The model server: KServe's ModelServer with an ``alpr`` model that turns images into plates.

- V1: ``POST /v1/models/alpr:predict`` with ``{"instances": [{"image_b64": "..."}]}`` returns
  ``{"predictions": [{"plates": [...]}]}``, one entry per instance.
- V2 (Open Inference Protocol): ``POST /v2/models/alpr/infer`` with a ``BYTES`` input ``image``
  holding base64-encoded image files returns a ``BYTES`` output ``plates``: one JSON string per image.

Images from concurrent requests are batched on the device (``max_batch_size``, ``max_wait_ms``).
A request waits while other requests hold ``max_held_images`` decoded images, and is answered 503
at once when as many images already wait: a waiting request holds its body. One not read within
``request_timeout_s`` is answered 503 too: KServe does not stop a request whose client has gone.
Bad input raises kserve's InvalidInput, which the server answers with a 400 and a message; a body
larger than ``max_images`` images of ``max_image_bytes`` could hold gets a 413 before it is parsed,
and one that would take the bodies held at once past twice ``max_held_images`` such images a 503.
KServe's model repository API (``/v2/repository/``) answers 404: this server serves one model.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import json
import math
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alpr.errors import UsageError
from alpr.images import InvalidImage, decode
from alpr.postprocess import Plate, ReadOptions
from alpr.reader import check_image_size

KSERVE_MODEL_DIR = "/mnt/models"
# a model call running longer is stuck (a CUDA hang, a deadlock): the model reports itself unhealthy, so
# its readiness and liveness probes fail and Kubernetes restarts it; a batch reads in seconds
STUCK_AFTER_S = 300.0
V2_INPUT, V2_OUTPUT = "image", "plates"


@dataclass(frozen=True)
class ServeOptions:
    model: str = KSERVE_MODEL_DIR  # a checkpoint path or folder, file:// or gs:// URL
    name: str = "alpr"
    http_port: int = 8080
    device: str = "auto"
    amp: bool = False  # the model runs in bfloat16 on the CPU, float16 on CUDA
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_image_bytes: int = 8 * 2**20
    max_pixels: int = 4096 * 4096
    max_images: int = 16  # per request: all of them are decoded, and held, before the first is read
    max_held_images: int = 64  # decoded and held across concurrent requests, and as many waiting for room
    # a request not read by then is answered 503: KServe reads on for a client that has gone, in line too
    request_timeout_s: float = 60.0
    read: ReadOptions = ReadOptions()

    def __post_init__(self):  # named by their flags: `alpr serve` is how most set them
        if self.max_batch_size < 1 or self.max_wait_ms < 0:
            raise UsageError(f"--max-batch-size {self.max_batch_size} / --max-wait-ms {self.max_wait_ms}: "
                             "the batch size must be at least 1 and the wait at least 0")
        for flag, limit in (("--max-image-bytes", self.max_image_bytes), ("--max-pixels", self.max_pixels)):
            if limit < 1:  # else every image is over it, and each client is told its image is to blame
                raise UsageError(f"{flag} {limit}: the limit must be at least 1")
        if self.request_timeout_s < 0:
            raise UsageError(f"--request-timeout-s {self.request_timeout_s}: a number of seconds, or 0 for none")
        if not 1 <= self.max_images <= self.max_held_images:
            raise UsageError(f"--max-images {self.max_images} / --max-held-images {self.max_held_images}: a request "
                             "must be allowed at least one image, and no more than the server may hold")


def resolve_checkpoint(model: str, cache: Path) -> Path:
    """A local checkpoint file from a path, a folder holding one (KServe's /mnt/models), or a URL."""
    from alpr import storage

    if model.startswith("gs://") or model.startswith("file://"):
        target = cache / Path(model.split("://", 1)[1]).name
        storage.download_file(model, target)
        return target
    path = Path(model)
    if path.is_dir():
        from alpr.glyphs import GLYPH_NET

        found = sorted(p for p in path.rglob("*.pth") if p.name != GLYPH_NET)  # that one reads glyphs alone
        chosen = [p for p in found if p.name == "best.pth"] or found
        if len(chosen) != 1:
            names = ", ".join(str(p.relative_to(path)) for p in chosen)
            raise UsageError(f"{path}: no .pth checkpoint in this folder" if not chosen else
                             f"{path}: {len(chosen)} checkpoints ({names}) and no single best.pth; name the one to serve")
        return chosen[0]
    if not path.is_file():
        raise UsageError(f"{path}: checkpoint not found")
    return path


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> np.ndarray:
    """A BGR array from an encoded image file, or InvalidImage saying what is wrong with it."""
    if len(data) > max_bytes:
        raise InvalidImage(f"image of {len(data)} bytes is over the limit of {max_bytes} bytes")
    return decode(data, max_pixels)


def decode_base64_image(text: Any, max_bytes: int, max_pixels: int) -> np.ndarray:
    if isinstance(text, bytes):  # a V2 BYTES element as gRPC's bytes_contents hands it, and KServe in-process
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidImage("raw bytes, not base64 text: send the image file base64-encoded") from None
    if not isinstance(text, str):
        raise InvalidImage(f"expected a base64 string, got {type(text).__name__}")
    if text.startswith("data:") and ";base64," in text[:80]:  # a browser's data URL
        text = text.split(",", 1)[1]
    compact = "".join(text.split())  # `base64` wraps its lines at 76
    if len(compact) > 4 * math.ceil(max_bytes / 3) + 4:  # refused before decoding it takes memory
        raise InvalidImage(f"image of about {len(compact) * 3 // 4} bytes is over the limit of {max_bytes} bytes")
    urlsafe = "-" in compact or "_" in compact  # the URL-safe alphabet, often sent unpadded
    try:
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), altchars=b"-_" if urlsafe else None,
                                validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidImage(f"not valid base64 ({error})") from None
    return decode_image(data, max_bytes, max_pixels)


# a line break of wrapped base64 in a JSON string: a CRLF is escaped there as \r\n, four bytes
JSON_LINE_BREAK_BYTES = 4


def base64_size(size: int) -> int:
    """Bytes of ``size`` bytes in base64 wrapped at 76 characters (as ``base64`` prints it, each line ended,
    the last too) inside a JSON string, each line break escaped there (``\\n`` or ``\\r\\n``)."""
    characters = 4 * math.ceil(size / 3)
    return characters + JSON_LINE_BREAK_BYTES * math.ceil(characters / 76)


def max_body_bytes(options: ServeOptions) -> int:
    """The largest request body read: ``max_images`` images at their limit, and a MiB for the JSON around them."""
    return options.max_images * base64_size(options.max_image_bytes) + 2**20


def max_held_body_bytes(options: ServeOptions) -> int:
    """The request bodies held at once, received, waiting or read: the images the budget holds and as many
    waiting for room (``max_held_images`` each) at their limit."""
    return 2 * options.max_held_images * base64_size(options.max_image_bytes) + 2**20


class BodyLimit:
    """ASGI middleware that answers 413 to a body over ``limit`` bytes before KServe holds it whole and
    parses it: without it one request of gigabytes could take the server's memory (a cluster's ingress
    may limit bodies too; `alpr serve` alone has nothing else to). Bodies held at once, from their first
    byte to their answer, stay under ``held_limit``: past it a request is answered 503 (the image budget
    bounds them only once parsed, and holds as many waiting as read). The rest of a refused body is read and dropped, so that the client,
    still sending, gets the answer.

    It also answers 404 under /v2/repository/: KServe's unload there takes the one model out of the
    server for anyone who can reach it, and its load cannot bring it back."""

    def __init__(self, app, limit: int, held_limit: int):
        self.app, self.limit, self.held_limit, self.held = app, limit, held_limit, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"].startswith("/v2/repository/"):
            return await _answer(send, 404, "the model repository API is closed: this server serves one model")
        messages, size, counted = [], 0, 0
        try:
            while True:
                message = await receive()
                chunk = len(message.get("body", b""))
                size += chunk
                if size <= self.limit and counted == size - chunk and self.held + chunk <= self.held_limit:
                    messages.append(message)
                    self.held, counted = self.held + chunk, counted + chunk
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            if message["type"] != "http.request":  # the client has gone
                return
            if size > self.limit:
                return await _answer(send, 413, f"request body of {size} bytes is over the limit of {self.limit} "
                                                "bytes (--max-images images of --max-image-bytes each, in base64)")
            if counted < size:
                return await _answer(send, 503, f"busy: the request bodies held at once would pass {self.held_limit} "
                                                "bytes; retry later")
            waiting = collections.deque(messages)
            del messages, message  # each chunk is freed once the app has read it
            await self.app(scope, lambda: _next(waiting, receive), send)
        finally:
            self.held -= counted


async def _answer(send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _next(waiting: collections.deque, receive) -> dict:
    """The body's messages as read, then what the connection sends next (its disconnect)."""
    return waiting.popleft() if waiting else await receive()


class Batcher:
    """Gathers images from concurrent requests and runs them through the model together.

    A batch closes when it holds ``max_size`` images or ``max_wait`` seconds after its first
    one; while the model runs, new images queue up for the next batch. One model call at a time,
    each on the same thread, the model thread, where ``call`` runs other work (loading the model).

    All of a model's torch work belongs on one thread: PyTorch's OpenMP (libgomp) gives each thread
    that runs torch operations a team of workers of its own, and once the teams' workers outnumber
    the cores, all of them stop spinning between operations. A model loaded on the main thread and
    run on this one read an image in 1.4-1.5 times the time on 2 cores (RESULTS.md, "Serving, CPU").
    """

    def __init__(self, run: Callable[[list], list], max_size: int, max_wait: float):
        self.run, self.max_size, self.max_wait = run, max_size, max_wait
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="alpr-model")
        self._running_since: float | None = None  # the event loop's time the model call began

    def call(self, function: Callable[..., Any], *args) -> Any:
        """``function(*args)`` on the model thread, waited for (not from within the event loop)."""
        return self._executor.submit(function, *args).result()

    async def submit(self, items: list) -> list:
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._serve())
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self._queue.put_nowait((item, future))
        results = await asyncio.gather(*futures, return_exceptions=True)  # every failure retrieved, the first raised
        failed = next((r for r in results if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed
        return list(results)

    async def _next_batch(self) -> list[tuple[Any, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:  # a batch is let go once answered, not held while the next one gathers
            await self._settle(loop, [(item, future) for item, future in await self._next_batch()
                                      if not future.done()])

    async def _settle(self, loop, batch: list[tuple[Any, asyncio.Future]]) -> None:
        if not batch:
            return
        try:
            results = await self._run(loop, [item for item, _ in batch])
        except Exception as error:
            if len(batch) == 1:
                results = [error]
            else:  # one bad item must not fail the others' requests: each is run again alone
                batch = [(item, future) for item, future in batch if not future.done()]
                results = [await self._run_alone(loop, item) for item, _ in batch]
        for (_, future), result in zip(batch, results):
            if not future.done():
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def running_for(self) -> float:
        """Seconds the model call now running has run; 0 between calls."""
        return 0.0 if self._running_since is None else asyncio.get_running_loop().time() - self._running_since

    async def _run(self, loop, items: list) -> list:
        self._running_since = loop.time()
        try:
            results = await loop.run_in_executor(self._executor, self.run, items)
        finally:
            self._running_since = None
        if len(results) != len(items):
            raise RuntimeError(f"the model returned {len(results)} results for {len(items)} images")
        return results

    async def _run_alone(self, loop, item):
        try:
            return (await self._run(loop, [item]))[0]
        except Exception as error:  # the server goes on; this item's request fails
            return error


class LineFull(RuntimeError):
    pass


class ImageBudget:
    """At most ``limit`` images held at once across requests; a request waits, in line, for room for all
    of its own (first come, first served: a large request is not overtaken for ever by small ones).
    Once ``limit`` images wait too, the next request is refused at once (LineFull).

    Each request's images stay decoded until the model has read the last of them, and a large photo is
    tens of megabytes of pixels; a waiting request holds its body. Without these bounds, a burst of
    requests could take the server's memory.
    """

    def __init__(self, limit: int):
        self.limit, self.held, self.waiting = limit, 0, 0
        self._room = asyncio.Condition()
        self._line: collections.deque = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, count: int):
        if count > self.limit:
            raise ValueError(f"{count} images can never fit a budget of {self.limit}")
        async with self._room:
            if self.waiting + count > self.limit:
                raise LineFull(f"busy: {self.waiting} image(s) already wait for room; retry later")
            ticket = object()
            self._line.append(ticket)
            self.waiting += count
            try:
                await self._room.wait_for(lambda: self._line[0] is ticket and self.held + count <= self.limit)
                self.held += count
            finally:  # also when the request is cancelled while it waits
                self._line.remove(ticket)
                self.waiting -= count
                self._room.notify_all()  # the next in line may fit too
        try:
            yield
        finally:
            async with self._room:
                self.held -= count
                self._room.notify_all()


def _flat(data: list) -> list:
    """A tensor's elements in row-major order: the Open Inference Protocol takes them flat or nested
    (walked without recursion: a body nested a thousand deep is a 400 from the shape check, not a 500)."""
    flat, pending, end = [], [iter(data)], object()
    while pending:
        item = next(pending[-1], end)
        if item is end:
            pending.pop()
        elif isinstance(item, list):
            pending.append(iter(item))
        else:
            flat.append(item)
    return flat


def _plates_json(plates: list[Plate]) -> list[dict]:
    return [plate.to_dict() for plate in plates]


def make_model(options: ServeOptions):
    """The kserve.Model subclass is built here so that importing alpr.serve does not import kserve."""
    import kserve
    from kserve.errors import InvalidInput, ServerNotReady
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class Busy(ServerNotReady):  # kserve answers ServerNotReady with a 503
        def __init__(self, detail: str):
            super().__init__()
            self.error_msg = detail

    class PlateModel(kserve.Model):
        def __init__(self):
            super().__init__(options.name)
            self.reader = None
            self.batcher: Batcher | None = None
            self.budget = ImageBudget(options.max_held_images)

        def load(self) -> bool:
            """Loads once: KServe calls it again, on the event loop, for a model not healthy (a call stuck)."""
            if self.ready:
                return True
            from alpr.reader import PlateReader

            self.batcher = Batcher(lambda images: self.reader.predict_batch(images), options.max_batch_size,
                                   options.max_wait_ms / 1000)
            with tempfile.TemporaryDirectory(prefix="alpr-model-") as cache:
                checkpoint = resolve_checkpoint(options.model, Path(cache))
                self.reader = self.batcher.call(PlateReader.from_checkpoint, checkpoint, options.device,
                                                options.read, options.amp)
            self.ready = True
            return self.ready

        async def _read(self, texts: list, where: Callable[[int], str]) -> list[list[Plate]]:
            """The plates of each base64 image; ``where(i)`` names the i-th in error messages."""
            if not texts:
                raise InvalidInput(f"{where(0).split('[')[0]}: no images in the request")
            if len(texts) > options.max_images:
                raise InvalidInput(f"{len(texts)} images in one request, over the limit of {options.max_images}: "
                                   "send them in several")

            def decode_all() -> list[np.ndarray]:
                images = []
                for index, text in enumerate(texts):
                    try:
                        images.append(decode_base64_image(text, options.max_image_bytes, options.max_pixels))
                        check_image_size(images[-1], self.reader.image_size)
                    except (InvalidImage, UsageError) as error:
                        raise InvalidInput(f"{where(index)}: {error}") from None
                return images

            try:
                async with asyncio.timeout(options.request_timeout_s or None):  # leaves the line, or the batch
                    async with self.budget.hold(len(texts)):
                        images = await asyncio.get_running_loop().run_in_executor(None, decode_all)
                        return await self.batcher.submit(images)
            except LineFull as error:
                raise Busy(str(error)) from None
            except TimeoutError:
                raise Busy(f"busy: not read within {options.request_timeout_s:g} s (--request-timeout-s); "
                           "retry later") from None

        async def _predict_v1(self, payload: Any) -> dict:
            if isinstance(payload, (bytes, str)):  # KServe parses JSON only if sent as application/json
                try:
                    payload = json.loads(payload)
                except ValueError:
                    raise InvalidInput("the request body is not JSON") from None
            if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
                raise InvalidInput('expected a JSON object {"instances": [{"image_b64": "<base64 image>"}, ...]}')
            texts = []
            for index, instance in enumerate(payload["instances"]):
                if not isinstance(instance, dict) or "image_b64" not in instance:
                    raise InvalidInput(f"instances[{index}]: missing field 'image_b64' (a base64-encoded image)")
                texts.append(instance["image_b64"])
            results = await self._read(texts, lambda i: f"instances[{i}].image_b64")
            return {"predictions": [{"plates": _plates_json(plates)} for plates in results]}

        async def _infer_v2(self, request: InferRequest) -> InferResponse:
            inputs = [i for i in request.inputs if i.name == V2_INPUT] or request.inputs[:1]
            if len(inputs) != 1 or inputs[0].datatype != "BYTES":
                raise InvalidInput(f"expected one BYTES input named {V2_INPUT!r} holding base64-encoded images")
            data = inputs[0].data
            texts = _flat(data.tolist() if hasattr(data, "tolist") else list(data or []))
            if math.prod(inputs[0].shape) != len(texts):
                raise InvalidInput(f"input {inputs[0].name!r}: shape {list(inputs[0].shape)} does not hold its "
                                   f"{len(texts)} image(s)")
            results = await self._read(texts, lambda i: f"inputs[{V2_INPUT}][{i}]")
            output = InferOutput(V2_OUTPUT, [len(results)], "BYTES",
                                 [json.dumps(_plates_json(plates)) for plates in results])
            return InferResponse(request.id or str(uuid.uuid4()), self.name, [output])

        async def healthy(self) -> bool:  # what KServe's model readiness (the chart's probes) answers
            return self.ready and self.batcher.running_for() < STUCK_AFTER_S

        async def predict(self, payload, headers=None, response_headers=None):
            if isinstance(payload, InferRequest):
                return await self._infer_v2(payload)
            return await self._predict_v1(payload)

        def get_input_types(self) -> list[dict]:
            return [{"name": V2_INPUT, "datatype": "BYTES", "shape": [-1]}]

        def get_output_types(self) -> list[dict]:
            return [{"name": V2_OUTPUT, "datatype": "BYTES", "shape": [-1]}]

    return PlateModel()


def serve(options: ServeOptions) -> None:
    """Loads the model, then serves it until interrupted: the server is ready only once loaded."""
    import kserve

    model = make_model(options)
    model.load()
    print(f"serving {options.name} on http://0.0.0.0:{options.http_port} "
          f"(V1 /v1/models/{options.name}:predict, V2 /v2/models/{options.name}/infer)", flush=True)
    from kserve.model_server import app  # the FastAPI app ModelServer serves

    app.add_middleware(BodyLimit, limit=max_body_bytes(options), held_limit=max_held_body_bytes(options))
    kserve.ModelServer(http_port=options.http_port, enable_grpc=False, workers=1).start([model])
