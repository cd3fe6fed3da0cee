"""The KServe model server, started for real on 127.0.0.1 and called over HTTP (V1 and V2)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from conftest import ROOT, free_port

MAX_PIXELS = 100_000  # the synthetic images are 320x240
MAX_BYTES = 200_000
LOW_THRESHOLDS = ["--board-threshold", "0", "--char-threshold", "0"]  # a 4-iteration model scores ~0.01
# At those thresholds a 4-iteration model reports 100 boards an image, each read again from its own
# window (minutes on the CPU); tests/test_reader.py covers the second reading.
ONE_READING = ["--zoom-widths"]  # none: no second reading


@pytest.fixture(scope="module")
def checkpoint(smoke_workdir, smoke_training, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("serve") / "model.pth"  # other tests go on training run r1
    shutil.copyfile(smoke_workdir / "runs" / "r1" / "train" / "iter_4.pth", copy)
    return copy


@pytest.fixture(scope="module")
def images(synth_dir) -> list[Path]:
    return sorted(synth_dir.glob("*.jpg"))[:6]


@pytest.fixture(scope="module")
def expected(checkpoint, images) -> dict[str, list[dict]]:
    """What PlateReader reads in-process, with the server's options."""
    from alpr import PlateReader
    from alpr.postprocess import ReadOptions

    reader = PlateReader.from_checkpoint(checkpoint, "cpu", ReadOptions(board_threshold=0, char_threshold=0,
                                                                         zoom_widths=()))
    plates = {path.name: [p.to_dict() for p in reader.predict(path)] for path in images}
    assert sum(map(len, plates.values())) > 0, "the model finds no boards at all: the comparison would prove nothing"
    return plates


@contextlib.contextmanager
def running_server(checkpoint: Path, log_path: Path, *options: str):
    """steps/serve.py on a free port of 127.0.0.1 until the block ends; yields its URL."""
    port = free_port()
    log = log_path.open("w+")
    process = subprocess.Popen(
        [sys.executable, "steps/serve.py", "--model", checkpoint.as_uri(), "--http-port", str(port), "--device", "cpu",
         "--max-pixels", str(MAX_PIXELS), "--max-image-bytes", str(MAX_BYTES), *options],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/v1/models/alpr", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        process.kill()
        log.seek(0)
        pytest.fail(f"the server did not become ready:\n{log.read()[-3000:]}")
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # requests still being read
            process.kill()
            process.wait(30)
        log.close()


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    # One image per model call: a smoke model's 100 detections per image all tie at the head's initial
    # score, and which tied ones survive turns on float noise that differs between batch sizes, so
    # only single-image calls can equal PlateReader's exactly. test_batcher_* covers the batching.
    with running_server(checkpoint, tmp_path_factory.mktemp("serve-log") / "server.log", "--max-batch-size", "1",
                        "--max-images", "6", *LOW_THRESHOLDS, *ONE_READING) as url:
        yield url


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v1(url: str, instances: list) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/alpr:predict", json={"instances": instances}, timeout=60)


def assert_same_plates(got: list[dict], want: list[dict]) -> None:
    """Equal reads; boxes and scores equal up to batched-versus-single float noise."""
    assert len(got) == len(want)
    order = lambda plates: sorted(plates, key=lambda p: (p["bbox"], p["score"]))  # noqa: E731  (ties may swap)
    for g, w in zip(order(got), order(want)):
        assert {k: g[k] for k in g if k not in ("bbox", "score", "char_scores")} == \
               {k: w[k] for k in w if k not in ("bbox", "score", "char_scores")}
        assert np.allclose(g["bbox"], w["bbox"], atol=1.0) and abs(g["score"] - w["score"]) < 1e-3
        assert np.allclose(g["char_scores"], w["char_scores"], atol=1e-3)


def test_v1_returns_the_plates_plate_reader_reads(server, images, expected):
    response = v1(server, [{"image_b64": b64(path.read_bytes())} for path in images])
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(images)
    for path, prediction in zip(images, predictions):
        assert_same_plates(prediction["plates"], expected[path.name])
        assert all(set(plate) >= {"text", "region", "vehicle_type", "serial", "layout", "bbox", "score",
                                  "char_scores"} for plate in prediction["plates"])


def test_v2_with_kserves_rest_client(server, images, expected):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def infer():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            request = InferRequest("alpr", [InferInput("image", [2], "BYTES",
                                                       [b64(p.read_bytes()) for p in images[:2]])])
            response = await client.infer(server, request, model_name="alpr")
            ready = await client.is_model_ready(server, "alpr")
        finally:
            await client.close()
        return response, ready

    response, ready = asyncio.run(infer())
    assert ready is True
    output = response.outputs[0]
    assert output.name == "plates" and output.datatype == "BYTES" and output.shape == [2]
    for path, text in zip(images[:2], output.data):
        assert_same_plates(json.loads(text), expected[path.name])
    metadata = httpx.get(f"{server}/v2/models/alpr", timeout=10).json()
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"][0]["name"] == "plates"


def test_v2_data_nested_as_its_shape_is_read(server, images, expected):
    """The Open Inference Protocol's data may be flat or nested by the tensor's shape (row-major)."""
    encoded = [b64(p.read_bytes()) for p in images[:2]]
    for shape, data in (([1, 2], [encoded]), ([2, 1], [[text] for text in encoded])):
        response = httpx.post(f"{server}/v2/models/alpr/infer", timeout=60, json={
            "inputs": [{"name": "image", "shape": shape, "datatype": "BYTES", "data": data}]})
        assert response.status_code == 200, (shape, response.text)
        for path, text in zip(images[:2], response.json()["outputs"][0]["data"]):
            assert_same_plates(json.loads(text), expected[path.name])


def _encoded(image: np.ndarray, ext: str) -> bytes:
    return cv2.imencode(ext, image)[1].tobytes()


def _gif() -> bytes:
    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", (4, 4)).save(data, "GIF")
    return data.getvalue()


def _corrupt_header() -> bytes:
    png = bytearray(_encoded(np.zeros((8, 8, 3), np.uint8), ".png"))
    png[8:12] = bytes(4)  # the IHDR chunk's length: Pillow raises ValueError, not OSError
    return bytes(png)


def _bad_requests(good: bytes) -> dict[str, tuple[dict, str]]:
    """name: (request kwargs for httpx.post, a phrase the error must contain)."""
    rng = np.random.default_rng(0)
    too_many_pixels = _encoded(np.zeros((400, 400, 3), np.uint8), ".png")
    too_many_bytes = _encoded(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8), ".png")
    assert len(too_many_bytes) > MAX_BYTES
    instances = lambda data: {"json": {"instances": [{"image_b64": b64(data)}]}}  # noqa: E731
    return {
        "not an image": (instances(b"hello, this is not an image"), "not an image file"),
        "truncated JPEG": (instances(good[: len(good) // 2]), "truncated"),
        "empty body": ({"content": b"", "headers": {"content-type": "application/json"}}, "Unrecognized request"),
        "not JSON": ({"content": b"{instances", "headers": {"content-type": "application/json"}},
                     "Unrecognized request"),
        "no instances": ({"json": {"inputs": []}}, '"instances"'),
        "missing field": ({"json": {"instances": [{"image": b64(good)}]}}, "missing field 'image_b64'"),
        "not base64": ({"json": {"instances": [{"image_b64": "@@not base64@@"}]}}, "not valid base64"),
        "empty image": (instances(b""), "empty image"),
        "too many pixels": (instances(too_many_pixels), "over the limit of 100000 pixels"),
        "too many bytes": (instances(too_many_bytes), f"over the limit of {MAX_BYTES} bytes"),
        "no images": ({"json": {"instances": []}}, "no images"),
        "too many images": ({"json": {"instances": [{"image_b64": b64(good)}] * 7}},
                            "7 images in one request, over the limit of 6"),
        "too thin": (instances(_encoded(np.zeros((1, 2000, 3), np.uint8), ".png")), "2000x1 px is too thin to read"),
        "GIF": (instances(_gif()), "GIF images are not read; use JPEG, PNG"),
        "corrupt PNG header": (instances(_corrupt_header()), "not a readable image file"),
    }


def test_v2_binary_data_holding_base64_is_read(server, images, expected):
    """The binary extension, as Triton-style clients send it (kserve 0.21 decodes each BYTES element
    as UTF-8 text, so the images go as base64 there too; README says so)."""
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def infer():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            image = InferInput("image", [2], "BYTES")
            image.set_data_from_numpy(np.array([b64(p.read_bytes()).encode() for p in images[:2]], dtype=object),
                                      binary_data=True)
            return await client.infer(server, InferRequest("alpr", [image]), model_name="alpr")
        finally:
            await client.close()

    response = asyncio.run(infer())
    assert len(response.outputs[0].data) == 2
    for path, text in zip(images[:2], response.outputs[0].data):
        assert_same_plates(json.loads(text), expected[path.name])


def test_v2_bytes_elements_as_grpc_hands_them_are_read_as_base64_and_raw_bytes_are_invalid_input(checkpoint, images,
                                                                                                 expected):
    """KServe's gRPC parsing hands BYTES elements to the model as bytes (REST as text): base64 text is read,
    and the bytes of an image file itself, no UTF-8, are kserve's InvalidInput (a 400), not a 500."""
    from kserve.errors import InvalidInput
    from kserve.protocol.grpc.grpc_predict_v2_pb2 import InferTensorContents, ModelInferRequest
    from kserve.protocol.infer_type import InferRequest

    from alpr.postprocess import ReadOptions
    from alpr.serve import ServeOptions, make_model

    def request(*elements: bytes) -> InferRequest:
        tensor = ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[len(elements)],
                                                   contents=InferTensorContents(bytes_contents=elements))
        return InferRequest.from_grpc(ModelInferRequest(model_name="alpr", inputs=[tensor]))

    model = make_model(ServeOptions(str(checkpoint), device="cpu", max_batch_size=1, max_images=6,
                                    read=ReadOptions(board_threshold=0, char_threshold=0, zoom_widths=())))
    assert model.load()
    good = request(*(b64(p.read_bytes()).encode() for p in images[:2]))
    assert all(isinstance(element, bytes) for element in good.inputs[0].data)  # as the model is handed them
    response = asyncio.run(model.predict(good))
    for path, text in zip(images[:2], response.outputs[0].data):
        assert_same_plates(json.loads(text), expected[path.name])
    with pytest.raises(InvalidInput, match=r"^inputs\[image\]\[1\]: raw bytes, not base64 text: send the image file "
                                           "base64-encoded$"):
        asyncio.run(model.predict(request(b64(images[0].read_bytes()).encode(), images[1].read_bytes())))


def test_bad_input_gets_a_4xx_that_says_why_and_the_server_goes_on(server, images, expected):
    good = images[0].read_bytes()
    for name, (kwargs, phrase) in _bad_requests(good).items():
        response = httpx.post(f"{server}/v1/models/alpr:predict", timeout=60, **kwargs)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert phrase in response.json()["error"], (name, response.text)
    v2_text = httpx.post(f"{server}/v2/models/alpr/infer", timeout=60, json={
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(b"not an image")]}]})
    assert v2_text.status_code == 400 and "inputs[image][0]: not an image file" in v2_text.text
    v2_type = httpx.post(f"{server}/v2/models/alpr/infer", timeout=60, json={
        "inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
    assert v2_type.status_code == 400 and "BYTES" in v2_type.text
    v2_shape = httpx.post(f"{server}/v2/models/alpr/infer", timeout=60, json={
        "inputs": [{"name": "image", "shape": [3], "datatype": "BYTES", "data": [b64(good)]}]})
    assert v2_shape.status_code == 400 and "shape [3] does not hold its 1 image(s)" in v2_shape.text
    response = v1(server, [{"image_b64": b64(good)}])
    assert response.status_code == 200
    assert_same_plates(response.json()["predictions"][0]["plates"], expected[images[0].name])


def test_a_body_larger_than_its_images_could_be_is_answered_413_before_it_is_parsed(server, images, expected):
    from alpr.serve import ServeOptions, max_body_bytes

    limit = max_body_bytes(ServeOptions(max_image_bytes=MAX_BYTES, max_images=6))  # the server's flags
    good = json.dumps({"instances": [{"image_b64": b64(images[0].read_bytes())}]}).encode()
    just_in = good[:-1] + b" " * (limit - len(good)) + b"}"  # read, in the many messages of a large body
    response = httpx.post(f"{server}/v1/models/alpr:predict", content=just_in, timeout=60)
    assert len(just_in) == limit and response.status_code == 200, response.text
    assert_same_plates(response.json()["predictions"][0]["plates"], expected[images[0].name])
    over = good[:-1] + b" " * (limit + 1 - len(good)) + b"}"
    chunked = iter([over[:1000], over[1000:]])  # no content-length: counted as it comes
    for content in (over, chunked):
        response = httpx.post(f"{server}/v1/models/alpr:predict", content=content, timeout=60)
        assert response.status_code == 413, response.text
        assert f"request body of {limit + 1} bytes is over the limit of {limit} bytes" in response.json()["error"]
    assert v1(server, [{"image_b64": b64(images[0].read_bytes())}]).status_code == 200


def test_a_body_of_the_most_images_at_their_limit_wrapped_as_base64_prints_them_fits_the_limit():
    """Inside a JSON string each line break of wrapped base64 is escaped: two bytes, a CRLF's four. At the
    default flags, 16 images of 8 MiB took their JSON-escaped line breaks past the MiB left for the JSON."""
    import os

    from alpr.serve import ServeOptions, max_body_bytes

    options = ServeOptions()
    limit = max_body_bytes(options)
    image = base64.encodebytes(os.urandom(options.max_image_bytes))  # lines of 76, each ended by "\n"
    sizes = {}
    for name, line_break in (("LF", b"\n"), ("CRLF", b"\r\n")):
        instance = json.dumps({"image_b64": image.replace(b"\n", line_break).decode()})
        sizes[name] = len('{"instances": [') + options.max_images * (len(instance) + len(", ")) - len(", ") + 2
    assert sizes["LF"] < sizes["CRLF"] <= limit, (sizes, limit)
    assert sizes["CRLF"] > limit - 2**20  # the MiB is for the JSON around the images: no more is let in


def test_bodies_held_at_once_stay_under_their_limit_and_the_repository_api_is_closed():
    """Bodies are held from their first byte to their answer, before the image budget sees them: past
    the limit of all held at once a request is answered 503, and the bytes of each answered request
    are given back. KServe's /v2/repository/ unload would take the one model out of the server."""
    import asyncio

    from alpr.serve import BodyLimit

    async def scenario():
        release, answers = asyncio.Event(), {}

        async def app(scope, receive, send):  # reads its body, then waits (a request in line for the model)
            body, more = b"", True
            while more:
                message = await receive()
                body, more = body + message["body"], message["more_body"]
            if scope["path"] == "/hold":
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"%d" % len(body)})

        limited = BodyLimit(app, limit=100, held_limit=150)

        async def request(name: str, path: str, chunks: list[bytes]):
            messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                        for i, c in enumerate(chunks)]
            sent = []

            async def receive():
                return messages.pop(0) if messages else {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            await limited({"type": "http", "path": path}, receive, send)
            answers[name] = (sent[0]["status"], sent[1]["body"])

        held = asyncio.create_task(request("held", "/hold", [b"a" * 60, b"a" * 40]))
        await asyncio.sleep(0.01)
        assert limited.held == 100
        await request("over", "/v1/models/alpr:predict", [b"b" * 30, b"b" * 30])  # 160 held: refused
        await request("fits", "/v1/models/alpr:predict", [b"c" * 50])
        await request("unload", "/v2/repository/models/alpr/unload", [b"{}"])
        release.set()
        await held
        await request("after", "/v1/models/alpr:predict", [b"d" * 100])
        return answers, limited.held

    answers, held = asyncio.run(scenario())
    assert answers["held"] == (200, b"100") and answers["fits"] == (200, b"50") and answers["after"] == (200, b"100")
    assert answers["over"][0] == 503 and b"busy: the request bodies held at once would pass 150 bytes" in answers["over"][1]
    assert answers["unload"][0] == 404 and b"repository API is closed" in answers["unload"][1]
    assert held == 0


def test_what_clients_commonly_send_is_read(server, images, expected):
    """curl -d sends JSON as a form; phones append data after a JPEG's end-of-image marker."""
    good = images[0].read_bytes()
    wrapped = "\n".join(textwrap.wrap(b64(good + b"\n" + b"MotionPhoto_Data\xff\xd8\x00"), 76))  # as base64 prints
    body = json.dumps({"instances": [{"image_b64": wrapped}]})
    for content_type in ("application/x-www-form-urlencoded", "application/json; charset=utf-8"):
        response = httpx.post(f"{server}/v1/models/alpr:predict", content=body.encode(), timeout=60,
                              headers={"content-type": content_type})
        assert response.status_code == 200, (content_type, response.text)
        assert_same_plates(response.json()["predictions"][0]["plates"], expected[images[0].name])
    response = v1(server, [{"image_b64": b64(_mpo(cv2.imread(str(images[0]))))}])  # a phone's HDR photo
    assert response.status_code == 200 and "plates" in response.json()["predictions"][0], response.text


def test_an_oversized_image_is_refused_before_it_is_decoded_and_in_the_servers_terms():
    from alpr.serve import InvalidImage, decode_base64_image, decode_image
    from test_reader import _png_header

    png = _encoded(np.full((16, 24, 3), 200, np.uint8), ".png")
    assert decode_base64_image(b64(png), len(png), 10**6).shape == (16, 24, 3)  # just at the limit: read
    with pytest.raises(InvalidImage, match=f"image of about 3000 bytes is over the limit of {len(png)} bytes"):
        decode_base64_image("A" * 4000, len(png), 10**6)  # the text alone says so
    # a header past Pillow's own bomb limit: refused as past the server's, not as an unreadable file
    with pytest.raises(InvalidImage, match="over the limit of 1000000 pixels"):
        decode_image(_png_header(20_000, 20_000), 10**6, 10**6)


def test_base64_as_browsers_and_url_safe_encoders_send_it_is_read():
    from alpr.serve import InvalidImage, decode_base64_image

    png = _encoded(np.full((16, 24, 3), 200, np.uint8), ".png")
    plain = b64(png)
    urlsafe = base64.urlsafe_b64encode(png).decode().rstrip("=")
    for text in (plain, f"data:image/png;base64,{plain}", urlsafe, f"{plain[:40]}\n{plain[40:]}"):
        assert decode_base64_image(text, 2**20, 10**6).shape == (16, 24, 3), text[:30]
    with pytest.raises(InvalidImage, match="not valid base64"):
        decode_base64_image("@@not base64@@", 2**20, 10**6)


def _mpo(image: np.ndarray) -> bytes:
    """A JPEG with a second picture in its multi-picture extension, which Pillow names MPO."""
    from PIL import Image

    data, frame = io.BytesIO(), Image.fromarray(image[..., ::-1])
    frame.save(data, "MPO", save_all=True, append_images=[frame.resize((frame.width // 4, frame.height // 4))])
    assert Image.open(io.BytesIO(data.getvalue())).format == "MPO"
    return data.getvalue()


def test_bounded_concurrent_load_returns_what_plate_reader_reads(server, images, expected):
    encoded = {path.name: b64(path.read_bytes()) for path in images}
    names = [images[i % len(images)].name for i in range(200)]

    with httpx.Client(timeout=120) as client:
        def call(name: str) -> tuple[str, httpx.Response]:
            return name, client.post(f"{server}/v1/models/alpr:predict",
                                     json={"instances": [{"image_b64": encoded[name]}]})

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, names))
    assert [r.status_code for _, r in results] == [200] * 200
    for name, response in results:
        assert_same_plates(response.json()["predictions"][0]["plates"], expected[name])


def test_a_request_past_the_waiting_room_is_answered_503_at_once(checkpoint, images, tmp_path):
    """With room for one image held and one waiting, of three requests sent together the one that comes
    last is refused at once, while the others wait: the first image waits a minute in its batch for a
    second that cannot come (held images are at their limit), whatever the model."""
    body = {"instances": [{"image_b64": b64(images[0].read_bytes())}]}
    with ThreadPoolExecutor(3) as pool:
        with running_server(checkpoint, tmp_path / "server.log", "--max-held-images", "1", "--max-images", "1",
                            "--max-batch-size", "2", "--max-wait-ms", "60000") as url:
            sent = []
            for _ in range(3):
                sent.append(pool.submit(httpx.post, f"{url}/v1/models/alpr:predict", json=body, timeout=600))
                time.sleep(1)
            done, _ = wait(sent, timeout=120, return_when=FIRST_COMPLETED)
            assert len(done) == 1, "no request was refused"
            refused = done.pop().result()
            assert refused.status_code == 503, refused.text
            assert "busy: 1 image(s) already wait for room; retry later" in refused.text
            assert httpx.get(f"{url}/v1/models/alpr", timeout=10).status_code == 200
            assert sum(future.done() for future in sent) == 1  # the other two still wait or are being read


def test_a_request_not_read_in_time_is_answered_503_and_leaves_its_room_to_the_next(checkpoint, images, tmp_path):
    """KServe reads on for a client that has gone; --request-timeout-s bounds how long. The first image
    waits in its batch for a second (it closes at 2, or in a minute) while holding the one image of
    room: timed out, it leaves the room to the next request, whose image closes the batch and is read."""
    body = {"instances": [{"image_b64": b64(images[0].read_bytes())}]}
    with running_server(checkpoint, tmp_path / "server.log", "--max-held-images", "1", "--max-images", "1",
                        "--max-batch-size", "2", "--max-wait-ms", "60000", "--request-timeout-s", "15") as url:
        first = httpx.post(f"{url}/v1/models/alpr:predict", json=body, timeout=120)
        assert first.status_code == 503 and "busy: not read within 15 s (--request-timeout-s)" in first.text
        second = httpx.post(f"{url}/v1/models/alpr:predict", json=body, timeout=120)
        assert second.status_code == 200, second.text


def test_batcher_groups_concurrent_items_and_returns_each_its_own_result():
    import asyncio

    from alpr.serve import Batcher

    batches = []

    def run(items: list) -> list:
        batches.append(list(items))
        return [item * 10 for item in items]

    async def scenario() -> list:
        batcher = Batcher(run, max_size=4, max_wait=0.05)
        singles = [batcher.submit([n]) for n in range(6)]
        return await asyncio.gather(batcher.submit([100, 101]), *singles)

    results = asyncio.run(scenario())
    assert results == [[1000, 1010], *[[n * 10] for n in range(6)]]
    assert sorted(x for batch in batches for x in batch) == [0, 1, 2, 3, 4, 5, 100, 101]
    assert max(map(len, batches)) == 4 and len(batches) == 2  # 8 items at once: two full batches


def test_v2_data_is_taken_flat_or_nested_however_deep():
    from alpr.serve import _flat

    assert _flat([[["a"], "b"], [], "c"]) == ["a", "b", "c"]
    deep = ["x"]
    for _ in range(5000):  # past Python's recursion limit: a 400 from the shape check, not a 500
        deep = [deep]
    assert _flat(deep) == ["x"]


def test_an_answered_batch_is_let_go_while_the_next_gathers():
    """A batch of decoded images (tens of MB each) is not held by the batcher once its requests have
    their answers: the server waits for the next request holding nothing."""
    import gc
    import weakref

    from alpr.serve import Batcher

    async def scenario():
        batcher = Batcher(lambda items: [len(items)] * len(items), max_size=2, max_wait=0.01)
        image = np.zeros((64, 64, 3), np.uint8)
        watched = weakref.ref(image)
        assert await batcher.submit([image]) == [1]
        del image
        await asyncio.sleep(0.05)  # the batcher waits for the next batch
        gc.collect()
        return watched() is None

    assert asyncio.run(scenario())


def test_batches_and_calls_run_on_one_model_thread():
    import threading

    from alpr.serve import Batcher

    threads = []

    def run(items: list) -> list:
        threads.append(threading.get_ident())
        return items

    async def scenario() -> list:
        return await asyncio.gather(*(batcher.submit([n]) for n in range(3)))

    batcher = Batcher(run, max_size=2, max_wait=0.01)
    loaded_on = batcher.call(threading.get_ident)
    assert asyncio.run(scenario()) == [[0], [1], [2]] and len(threads) >= 2
    assert set(threads) == {loaded_on} and loaded_on != threading.get_ident()


def test_a_model_call_that_runs_on_past_stuck_after_s_makes_the_model_unhealthy(monkeypatch):
    """A hung model call (a CUDA hang): readiness and liveness probes ask ``healthy``, which must say
    so, or the pod answers 200 to its probes while every request waits."""
    import threading

    from alpr import serve
    from alpr.serve import Batcher, ServeOptions, make_model

    monkeypatch.setattr(serve, "STUCK_AFTER_S", 0.2)
    release = threading.Event()
    model = make_model(ServeOptions())
    model.batcher, model.ready = Batcher(lambda items: release.wait(10) and items, max_size=1, max_wait=0), True

    async def scenario() -> list:
        health = [await model.healthy()]
        call = asyncio.ensure_future(model.batcher.submit(["a"]))
        await asyncio.sleep(0.4)
        health.append(await model.healthy())
        batcher = model.batcher
        assert model.load() and model.batcher is batcher  # KServe loads a model not ready: loaded once
        release.set()
        assert await call == ["a"]
        return [*health, await model.healthy()]

    assert asyncio.run(scenario()) == [True, False, True]


def test_an_item_the_model_fails_on_fails_only_its_own_request():
    from alpr.serve import Batcher

    def run(items: list) -> list:
        if "bad" in items:
            raise ValueError("cannot read bad")
        return [item.upper() for item in items]

    async def scenario() -> list:
        batcher = Batcher(run, max_size=4, max_wait=0.05)
        return await asyncio.gather(*(batcher.submit([item]) for item in ("a", "bad", "c")), return_exceptions=True)

    a, bad, c = asyncio.run(scenario())
    assert a == ["A"] and c == ["C"] and isinstance(bad, ValueError)


def test_image_budget_makes_requests_wait_in_line_while_their_images_would_not_fit():
    from alpr.serve import ImageBudget

    events = []

    async def request(name: str, count: int, budget: ImageBudget, release: asyncio.Event) -> None:
        async with budget.hold(count):
            events.append((name, budget.held))
            await release.wait()

    async def scenario() -> None:
        budget = ImageBudget(4)
        release_a, release_b, release_c = asyncio.Event(), asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(request("a", 3, budget, release_a))
        await asyncio.sleep(0.01)
        b = asyncio.create_task(request("b", 2, budget, release_b))  # 3 + 2 > 4: waits for a
        c = asyncio.create_task(request("c", 1, budget, release_c))  # 3 + 1 would fit, but b came first
        gone = asyncio.create_task(request("gone", 1, budget, asyncio.Event()))
        await asyncio.sleep(0.01)
        gone.cancel()  # a client gone while waiting leaves the line
        await asyncio.sleep(0.01)
        assert events == [("a", 3)] and budget.held == 3
        release_a.set()
        await asyncio.sleep(0.01)
        assert events[1:] == [("b", 2), ("c", 3)]
        release_b.set(), release_c.set()
        await asyncio.gather(a, b, c)
        assert budget.held == 0 and gone.cancelled()
        with pytest.raises(ValueError, match="5 images can never fit a budget of 4"):
            async with budget.hold(5):
                pass

    asyncio.run(scenario())


def test_image_budget_refuses_a_request_at_once_when_a_budgets_worth_already_waits():
    from alpr.serve import ImageBudget, LineFull

    async def scenario() -> None:
        budget, release = ImageBudget(4), asyncio.Event()

        async def request(count: int) -> None:
            async with budget.hold(count):
                await release.wait()

        held_and_waiting = [asyncio.create_task(request(n)) for n in (4, 3)]
        await asyncio.sleep(0.01)
        assert (budget.held, budget.waiting) == (4, 3)
        with pytest.raises(LineFull, match=re.escape("busy: 3 image(s) already wait")):
            async with budget.hold(2):
                pass
        release.set()
        await asyncio.gather(*held_and_waiting)
        assert (budget.held, budget.waiting) == (0, 0)

    asyncio.run(scenario())


def test_the_model_is_a_checkpoint_a_folder_holding_one_or_a_store_url(tmp_path):
    from alpr.errors import UsageError
    from alpr.serve import resolve_checkpoint

    models, cache = tmp_path / "models", tmp_path / "cache"  # KServe's storage initializer fills /mnt/models
    (models / "run").mkdir(parents=True)
    for name in ("run/iter_8.pth", "run/best.pth", "run/glyph_net.pth", "a.pth"):
        (models / name).write_bytes(name.encode())
    assert resolve_checkpoint(str(models), cache) == models / "run" / "best.pth"  # best.pth before any other
    (models / "run" / "best.pth").unlink()
    with pytest.raises(UsageError, match=r"models: 2 checkpoints \(a.pth, run/iter_8.pth\) and no single best.pth"):
        resolve_checkpoint(str(models), cache)  # the glyph classifier is not one of them
    assert resolve_checkpoint(str(models / "a.pth"), cache) == models / "a.pth"
    (models / "a.pth").unlink()
    assert resolve_checkpoint(str(models), cache) == models / "run" / "iter_8.pth"
    downloaded = resolve_checkpoint((models / "run" / "iter_8.pth").as_uri(), cache)
    assert downloaded.parent == cache and downloaded.read_bytes() == b"run/iter_8.pth"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="empty: no .pth checkpoint in this folder"):
        resolve_checkpoint(str(tmp_path / "empty"), cache)
    with pytest.raises(UsageError, match="missing.pth: checkpoint not found"):
        resolve_checkpoint(str(tmp_path / "missing.pth"), cache)


def test_a_request_limit_over_the_held_images_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "steps/serve.py", "--model", str(tmp_path / "none.pth"),
                             "--max-images", "20", "--max-held-images", "16"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--max-images 20 / --max-held-images 16" in result.stderr
    from alpr.errors import UsageError
    from alpr.serve import ServeOptions

    for limits in ({"max_images": 20, "max_held_images": 16}, {"max_images": 0}, {"max_batch_size": 0},
                   {"max_wait_ms": -1}):
        with pytest.raises(UsageError, match="must be"):  # from Python too, not a 500 on the first request
            ServeOptions(**limits)


@pytest.mark.parametrize("flag, field", [("--max-image-bytes", "max_image_bytes"), ("--max-pixels", "max_pixels")])
def test_an_image_limit_under_1_is_refused_before_the_model_loads(flag, field, tmp_path):
    """Else the server starts and answers every image with a 400 that blames its client."""
    from alpr.errors import UsageError
    from alpr.serve import ServeOptions

    for value in (0, -5):
        with pytest.raises(UsageError, match=f"^{flag} {value}: the limit must be at least 1$"):
            ServeOptions(**{field: value})
    assert getattr(ServeOptions(**{field: 1}), field) == 1
    result = subprocess.run([sys.executable, "steps/serve.py", "--model", str(tmp_path / "none.pth"), flag, "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and f"{flag} 0: the limit must be at least 1" in result.stderr
    assert "checkpoint not found" not in result.stderr  # refused before the model is looked for


def test_a_sure_score_that_is_no_character_score_is_refused_before_the_model_loads(tmp_path):
    result = subprocess.run([sys.executable, "steps/serve.py", "--model", str(tmp_path / "none.pth"),
                             "--sure-score", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "sure score 2.0: a character score" in result.stderr


@pytest.mark.parametrize("flags, amp", [([], False), (["--amp"], True)])
def test_serve_amp_reaches_the_reader(checkpoint, flags, amp, monkeypatch):
    """--amp travels from the step's flags through ServeOptions to the PlateReader the server loads."""
    import alpr.mmdet_ext
    from alpr.postprocess import ReadOptions
    from alpr.serve import ServeOptions, make_model
    from alpr.steps.serve import get_args_parser

    monkeypatch.setattr(alpr.mmdet_ext, "cpu_has_bfloat16", lambda: True)  # else --amp reads in float32

    args = get_args_parser().parse_args(["--model", str(checkpoint), *flags])
    model = make_model(ServeOptions(args.model, device="cpu", amp=args.amp, read=ReadOptions(zoom_widths=())))
    assert model.load() and model.reader.amp is amp
