"""Hostile clients against the controller, the model worker and the web page (issue items 5-11).

Everything runs on loopback with bounded waits; each test takes a few seconds at most.
- Controller (real processes): registering a worker or sending heart beats needs the controller's
  secret, even from loopback, and what a worker reports is checked; workers that accept a
  connection and never answer delay nothing else; a worker silent for longer than 5 s (waiting for
  a free slot) still gets its answer relayed; bodies are bounded.
- Worker (in-process, FastAPI's TestClient on the reference phi-2 checkpoint, with a misbehaving
  HTTP server on a thread): image URLs are fetched only when allowed, only from public addresses
  (redirects included), within a total deadline and a size cap, with errors that don't tell one
  port state from another; request bodies, images, stop strings and prompts are bounded.
- Images: padding a thin picture to a square can't take gigabytes.
- Web page (launched on a free port): it serves no file of the log directory, yet shows the
  uploaded image.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator

import pytest
import requests
from fastapi.testclient import TestClient
from PIL import Image

from bunny.model.vision_tower.siglip import SiglipVisionTower
from bunny.serve import controller as controller_module
from bunny.serve import gradio_web_server as web
from bunny.serve import limits, model_worker
from bunny.serve.launch import free_port
from bunny.serve.secret import SECRET_DIR_ENV, SECRET_ENV, authorization
from bunny.util import image_fetch, mm_utils
from bunny.util.utils import server_error_msg
from servers import HERE, REPO, secret_file, stream, worker_headers
from test_serve_worker import CHECKPOINT, IMAGES, PROMPT, b64, chat_body, chunks_of, loaded, make_worker  # noqa: F401
from tiny import FIXTURES

PUBLIC = "93.184.216.34"  # a public address the tests' resolver gives made-up host names


@pytest.fixture(autouse=True)
def log_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("BUNNY_LOGDIR", str(tmp_path / "logs"))


# -- a misbehaving image server ---------------------------------------------------------------------
class HostileServer:
    """A loopback HTTP server whose paths misbehave; `paths` lists the request targets it got.

    /image.png a picture; /trickle-body a 200 whose body comes one byte every 0.2 s;
    /trickle-head the status line and headers one byte every 0.2 s; /huge a declared 10 GB body
    that never comes; /endless a chunked body that never ends; /garbage not HTTP at all; /silent
    no answer; /not-found a 404 with a secret body; /redirect?to=URL a 302 to URL.
    """

    SECRET = "SECRET-BODY-THE-CLIENT-MUST-NOT-SEE"

    def __init__(self, picture: bytes) -> None:
        self.picture = picture
        self.paths: list[str] = []
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while not self.closing.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(connection,), daemon=True).start()

    def trickle(self, connection: socket.socket, data: bytes) -> None:
        for i in range(len(data)):  # at most 40 bytes (8 s): an old client is let go eventually
            if i >= 40 or self.closing.wait(0.2):
                return
            connection.sendall(data[i : i + 1])

    def answer(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(10)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    piece = connection.recv(4096)
                    if not piece:
                        return
                    head += piece
                path = head.split(b" ")[1].decode()
                self.paths.append(path)
                self.respond(connection, path)
            except OSError:
                pass

    def respond(self, connection: socket.socket, path: str) -> None:
        if path == "/image.png":
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(self.picture))
            connection.sendall(self.picture)
        elif path == "/trickle-body":
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 10000\r\n\r\n")
            self.trickle(connection, b"\x89PNG" * 2500)
        elif path == "/trickle-head":
            self.trickle(connection, b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 10\r\n\r\n")
        elif path == "/huge":
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 10000000000\r\n\r\n")
            self.closing.wait(10)
        elif path == "/endless":
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
            piece = b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n"
            for _ in range(4000):  # 250 MiB at most
                if self.closing.is_set():
                    return
                connection.sendall(piece)
        elif path == "/garbage":
            connection.sendall(b"SSH-2.0-OpenSSH_9.6 " + self.SECRET.encode() + b"\r\n")
        elif path == "/silent":
            self.closing.wait(10)
        elif path.startswith("/redirect?to="):
            location = path[len("/redirect?to=") :]
            connection.sendall(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % location.encode())
        else:
            body = self.SECRET.encode()
            connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def close(self) -> None:
        self.closing.set()
        self.listener.close()


@pytest.fixture()
def hostile():
    server = HostileServer(open(IMAGES[0], "rb").read())
    yield server
    server.close()


def ask_with_url(worker: model_worker.ModelWorker, url: str, **extra):
    body = chat_body(max_tokens=2, **extra)
    body["messages"][0]["content"][0]["image_url"]["url"] = url
    with TestClient(model_worker.create_app(worker)) as client:
        return client.post("/v1/chat/completions", json=body)


def error_of(response) -> str:
    assert response.status_code == 400, response.text
    return response.json()["error"]["message"]


# -- 8. the web page does not serve the log directory -----------------------------------------------
def test_the_page_serves_no_file_of_the_log_directory_and_still_shows_the_uploaded_image(tmp_path, monkeypatch):
    import gradio as gr
    from gradio_client import Client, handle_file

    logs = tmp_path / "logs"
    private = [logs / "controller.log", logs / "2024-01-01-conv.json", logs / "serve_images" / "2024-01-01" / "a.jpg"]
    for path in private:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"ip": "203.0.113.9", "text": "someone else\'s conversation"}')
    built = []
    build_demo = web.build_demo
    monkeypatch.setattr(web, "build_demo", lambda server, embed=False: built.append(build_demo(server, embed)) or built[-1])
    monkeypatch.setattr(web, "get_model_list", lambda controller_url: ["m"])
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)  # launch() returns instead of serving forever
    port = free_port()
    web.main(["--port", str(port), "--max-upload-bytes", "100000"])  # the page as the command line starts it
    try:
        url = f"http://127.0.0.1:{port}"
        for path in private:
            for route in ("/gradio_api/file=", "/file="):
                response = requests.get(url + route + str(path), timeout=10)
                assert response.status_code in (403, 404) and "203.0.113.9" not in response.text, (route, path)
        # the chat shows the uploaded picture: the client downloads it through the page's own file route
        client = Client(url + "/", verbose=False, download_files=str(tmp_path / "downloads"))
        messages, *_ = client.predict("What is it?", handle_file(str(IMAGES[0])), "Default", api_name="/add_text")
        [shown] = [part["file"] for m in messages for part in m["content"] if part.get("type") == "file"]
        assert shown.startswith(str(tmp_path / "downloads"))
        assert Image.open(shown).size == Image.open(IMAGES[0]).size
        # uploads are bounded too
        response = requests.post(url + "/gradio_api/upload", files={"files": ("big.png", b"x" * 200_000)}, timeout=10)
        assert response.status_code == 413, response.text
    finally:
        for demo in built:
            demo.close()


# -- 9. padding a thin picture to a square ----------------------------------------------------------
@pytest.fixture()
def processor():
    return SiglipVisionTower(str(FIXTURES / "siglip-tiny")).image_processor


@pytest.fixture()
def no_huge_canvas(monkeypatch):
    """PIL's Image.new refuses canvases over 4096 x 4096 pixels, so a regression fails fast."""
    new = Image.new

    def bounded(mode, size, *args, **kwargs):
        assert size[0] * size[1] <= mm_utils.MAX_PADDED_SIDE**2, f"a {size[0]}x{size[1]} canvas"
        return new(mode, size, *args, **kwargs)

    monkeypatch.setattr(Image, "new", bounded)


def test_a_thin_picture_is_shrunk_before_it_is_padded(processor, monkeypatch, tmp_path, no_huge_canvas):
    seen = []
    preprocess = processor.preprocess
    monkeypatch.setattr(processor, "preprocess", lambda image, **kw: seen.append(image.size) or preprocess(image, **kw))
    thin = Image.new("RGB", (20000, 1), (200, 10, 10))  # a 140-byte PNG
    pixels = mm_utils.process_images([thin], processor, SimpleNamespace(image_aspect_ratio="pad"))
    assert seen == [(4096, 4096)] and pixels.shape == (1, 3, 32, 32)

    # training data goes through the same function
    from bunny.data.dataset import LazySupervisedDataset

    thin.rotate(90, expand=True).save(tmp_path / "thin.png")
    data = tmp_path / "data.json"
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A line."}]
    data.write_text(json.dumps([{"id": "thin", "image": "thin.png", "conversations": turns}]))
    dataset = LazySupervisedDataset(str(data), None, None, str(tmp_path), processor, "pad")
    assert dataset.load_image(0).shape == (3, 32, 32) and seen[-1] == (4096, 4096)

    # and the web page's hidden "Pad" mode
    state = web.get_conv_template("bunny")
    state.append_message(state.roles[0], ("What?\n<image>", thin, "Pad"))
    assert web.conversation_images(state)[0].size == (4096, 4096)


def test_ordinary_pictures_give_exactly_the_pixels_they_gave_before(processor):
    pictures = [Image.open(path).convert("RGB") for path in IMAGES]
    # long and thin up to the bound, and a photograph larger than the bound but not thin
    sizes = [(1000, 300), (120, mm_utils.MAX_PADDED_SIDE), (5000, 3000)]
    pictures += [Image.effect_noise(size, 60).convert("RGB") for size in sizes]
    background = tuple(int(x * 255) for x in processor.image_mean)
    for picture in pictures:
        ours = mm_utils.process_images([picture], processor, SimpleNamespace(image_aspect_ratio="pad"))[0]
        before = processor.preprocess(mm_utils.expand2square(picture, background), return_tensors="pt")["pixel_values"][0]
        assert ours.equal(before), picture.size


# -- 10. image URLs ------------------------------------------------------------------------------------
def test_image_urls_are_not_fetched_unless_the_worker_allows_them(loaded, hostile):
    message = error_of(ask_with_url(make_worker(loaded), hostile.url + "/image.png"))
    assert "--allow-image-urls" in message and hostile.paths == []
    data_url = "data:image/png;base64," + b64(IMAGES[0])
    assert ask_with_url(make_worker(loaded), data_url).status_code == 200  # pictures still come in data: URLs


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0", "[::ffff:127.0.0.1]"])
def test_a_url_to_a_loopback_address_is_refused(loaded, hostile, host):
    worker = make_worker(loaded, allow_image_urls=True)
    message = error_of(ask_with_url(worker, f"http://{host}:{hostile.port}/image.png"))
    assert message == f"could not fetch image http://{host}:{hostile.port}/image.png"
    assert hostile.paths == []  # never even connected


@pytest.fixture()
def public_name(monkeypatch, hostile):
    """`images.example.com` resolves to a public address, and connections to that address reach
    `hostile` on loopback: a public web server, as far as the worker can tell."""
    resolve, open_socket = image_fetch.resolve, image_fetch.open_socket
    monkeypatch.setattr(
        image_fetch, "resolve", lambda host, port, timeout: [PUBLIC] if host == "images.example.com" else resolve(host, port, timeout)
    )
    monkeypatch.setattr(
        image_fetch, "open_socket",
        lambda address, port, timeout: open_socket("127.0.0.1" if address == PUBLIC else address, port, timeout),
    )
    return f"http://images.example.com:{hostile.port}"


def test_a_public_url_that_redirects_to_loopback_is_refused(loaded, hostile, public_name):
    assert image_fetch.fetch_image(public_name + "/image.png", 5, 10**6) == hostile.picture  # the public name works
    for target in (f"http://127.0.0.1:{hostile.port}/image.png", f"http://localhost:{hostile.port}/image.png"):
        url = public_name + "/redirect?to=" + target
        message = error_of(ask_with_url(make_worker(loaded, allow_image_urls=True), url))
        assert message == f"could not fetch image {url}"
    assert hostile.paths.count("/image.png") == 1  # only the public fetch above reached it


def test_https_is_pinned_to_the_checked_address_and_verified_for_the_url_host(tmp_path, monkeypatch):
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=images.example.com", "-addext", "subjectAltName=DNS:images.example.com"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    picture = open(IMAGES[0], "rb").read()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with server_context.wrap_socket(raw, server_side=True) as tls:
                    tls.settimeout(5)
                    while b"\r\n\r\n" not in tls.recv(4096):
                        pass
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(picture) + picture)
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setattr(image_fetch, "tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    monkeypatch.setattr(image_fetch, "resolve", lambda host, port, timeout: [PUBLIC])
    opened = []

    def open_socket(address: str, port: int, timeout: float) -> socket.socket:
        opened.append(address)
        return socket.create_connection(("127.0.0.1", port), timeout)

    monkeypatch.setattr(image_fetch, "open_socket", open_socket)
    try:
        assert image_fetch.fetch_image(f"https://images.example.com:{port}/image.png", 5, 10**6) == picture
        assert opened == [PUBLIC]  # the connection went to the address that was checked
        with pytest.raises(image_fetch.FetchError) as caught:  # the certificate is for images.example.com only
            image_fetch.fetch_image(f"https://elsewhere.example.com:{port}/image.png", 5, 10**6)
        assert "certificate" in caught.value.detail.lower()
    finally:
        listener.close()


def test_a_name_that_resolves_to_any_private_address_is_refused(monkeypatch, hostile):
    monkeypatch.setattr(image_fetch, "resolve", lambda host, port, timeout: [PUBLIC, "127.0.0.1"])
    with pytest.raises(image_fetch.FetchError, match="could not fetch image") as caught:
        image_fetch.fetch_image(f"http://rebinding.example.com:{hostile.port}/image.png", 5, 10**6)
    assert "127.0.0.1" in caught.value.detail and hostile.paths == []


@pytest.mark.parametrize("path", ["/trickle-body", "/trickle-head"])
def test_a_trickling_server_is_cut_off_at_the_total_deadline(loaded, hostile, path):
    worker = make_worker(loaded, allow_image_urls=True, allow_private_image_urls=True, image_fetch_timeout=1.0)
    start = time.monotonic()
    message = error_of(ask_with_url(worker, hostile.url + path))
    assert time.monotonic() - start < 3.0
    assert message == f"could not fetch image {hostile.url}{path}"


def test_the_terminal_cli_gets_the_total_deadline_too(hostile):
    start = time.monotonic()
    with pytest.raises(mm_utils.ImageLoadError, match="could not fetch image .*took longer than 1 s"):
        mm_utils.load_image(hostile.url + "/trickle-body", timeout=1.0)  # the operator's own URL: loopback is fine
    assert time.monotonic() - start < 3.0
    assert mm_utils.load_image(hostile.url + "/image.png").size == Image.open(IMAGES[0]).size


@pytest.mark.parametrize("path, max_bytes", [("/huge", 10**6), ("/endless", 10**6)])
def test_an_oversize_download_is_refused_without_waiting_for_it(loaded, hostile, path, max_bytes):
    worker = make_worker(
        loaded, allow_image_urls=True, allow_private_image_urls=True, max_image_bytes=max_bytes, image_fetch_timeout=3.0
    )
    start = time.monotonic()
    message = error_of(ask_with_url(worker, hostile.url + path))
    assert message == f"image {hostile.url}{path} is larger than {max_bytes} bytes"
    assert time.monotonic() - start < 2.0  # a declared size over the cap is refused before any body


def test_errors_do_not_tell_a_closed_port_from_an_open_one_nor_echo_the_answer(loaded, hostile):
    worker = make_worker(loaded, allow_image_urls=True, allow_private_image_urls=True, image_fetch_timeout=1.0)
    urls = [
        f"http://127.0.0.1:{free_port()}/image.png",  # closed
        hostile.url + "/garbage",  # open, not HTTP
        hostile.url + "/silent",  # open, never answers
        hostile.url + "/not-found",  # an HTTP error with a body
        hostile.url + "/redirect?to=/redirect?to=/redirect?to=/redirect?to=/redirect?to=/redirect?to=/image.png",
    ]
    messages = {error_of(ask_with_url(worker, url)).replace(url, "<url>") for url in urls}
    assert messages == {"could not fetch image <url>"}


def test_concurrent_image_downloads_are_bounded(loaded, hostile):
    worker = make_worker(
        loaded, allow_image_urls=True, allow_private_image_urls=True, image_fetch_timeout=2.0, max_concurrent_image_fetches=1
    )
    slow = threading.Thread(target=ask_with_url, args=(worker, hostile.url + "/silent"))
    slow.start()
    deadline = time.monotonic() + 5
    while "/silent" not in hostile.paths and time.monotonic() < deadline:
        time.sleep(0.02)
    refused = ask_with_url(worker, hostile.url + "/image.png")
    slow.join(10)
    assert refused.status_code == 429 and "try again" in refused.json()["error"]["message"]
    assert "/image.png" not in hostile.paths


# -- 11. size limits -----------------------------------------------------------------------------------
def png_b64(size=(4, 4)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture()
def small_client(loaded):
    with TestClient(model_worker.create_app(make_worker(loaded, max_request_bytes=4096))) as client:
        yield client


def test_a_body_over_the_limit_is_413_also_when_it_comes_chunked(small_client):
    big = {"prompt": PROMPT, "images": [png_b64()], "stop": "x" * 5000}
    response = small_client.post("/worker_generate_stream", json=big)
    assert response.status_code == 413
    assert chunks_of(response) == [{"text": "the request body is larger than the limit of 4096 bytes", "error_code": 1}]

    def chunked():  # no Content-Length: the bytes are counted as they come
        yield json.dumps(big).encode()

    response = small_client.post("/worker_generate_stream", content=chunked())
    assert response.status_code == 413
    response = small_client.post("/v1/chat/completions", content=chunked())
    assert response.status_code == 413 and "larger than the limit of 4096 bytes" in response.json()["error"]["message"]
    response = small_client.post("/v1/chat/completions", json={**chat_body(), "stop": "x" * 5000})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_the_body_is_refused_as_soon_as_it_passes_the_limit():
    consumed = []

    class Upload:  # a request streamed in 1000-byte pieces without a Content-Length
        headers: dict = {}

        async def stream(self):
            for _ in range(100):
                consumed.append(1000)
                yield b"x" * 1000

    with pytest.raises(limits.BodyTooLarge):
        asyncio.run(limits.read_body(Upload(), 4500))
    assert sum(consumed) == 5000
    declared = SimpleNamespace(headers={"content-length": str(10**12)}, stream=Upload().stream)
    consumed.clear()
    with pytest.raises(limits.BodyTooLarge):
        asyncio.run(limits.read_body(declared, 4500))
    assert consumed == []  # refused on the declared length, before reading


@pytest.fixture()
def client(loaded):
    with TestClient(model_worker.create_app(make_worker(loaded))) as client:
        yield client


def test_a_request_carries_at_most_four_images(client):
    five = [png_b64() for _ in range(5)]
    response = client.post("/worker_generate_stream", json={"prompt": PROMPT * 5, "images": five})
    assert response.status_code == 400
    assert chunks_of(response)[0]["text"] == "'images' holds 5 images; a request may carry at most 4"
    body = chat_body()
    body["messages"][0]["content"] = body["messages"][0]["content"][:1] * 5 + [{"type": "text", "text": "Which?"}]
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "'messages' holds 5 images; a request may carry at most 4"


@pytest.mark.parametrize(
    "stop, message",
    [
        (["</s>"] * 100_000, "'stop' must be a string or a list of at most 4 strings"),
        (["a", "b", "c", "d", "e"], "'stop' must be a string or a list of at most 4 strings"),
        ("x" * 257, "'stop' strings may be at most 256 characters long; one has 257"),
    ],
)
def test_stop_strings_are_bounded_in_number_and_length(client, stop, message):
    response = client.post("/worker_generate_stream", json={"prompt": PROMPT, "images": [b64(IMAGES[0])], "stop": stop})
    assert response.status_code == 400 and chunks_of(response)[0]["text"] == message
    response = client.post("/v1/chat/completions", json={**chat_body(), "stop": stop})
    assert response.status_code == 400 and response.json()["error"]["message"] == message


def test_the_flags_and_their_defaults():
    parser = model_worker.build_parser()
    args = parser.parse_args(["--model-path", "m", "--model-type", "phi-2"])
    assert (args.allow_image_urls, args.allow_private_image_urls, args.max_concurrent_image_fetches) == (False, False, 4)
    assert (args.max_request_bytes, args.max_images_per_request, args.image_fetch_timeout) == (64 * 1024 * 1024, 4, 10.0)
    args = parser.parse_args(["--model-path", "m", "--model-type", "phi-2", "--allow-image-urls", "--allow-private-image-urls"])
    assert args.allow_image_urls and args.allow_private_image_urls


# == the controller ==================================================================================
class SilentServer:
    """A loopback socket that accepts connections and never answers; counts them."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.socket.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.accept, daemon=True)
        self.thread.start()

    def accept(self) -> None:
        while not self.stopped.is_set():
            try:
                self.connections.append(self.socket.accept()[0])
            except TimeoutError:
                continue

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(2)
        for connection in self.connections:
            connection.close()
        self.socket.close()


@contextmanager
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def in_thread(results: list, function, *args, **kwargs) -> threading.Thread:
    """Run `function` in a thread, appending (seconds taken, its result or exception) to `results`."""

    def run() -> None:
        start = time.perf_counter()
        try:
            outcome = function(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - reported to the test
            outcome = err
        results.append((time.perf_counter() - start, outcome))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def poll_models(controller: str, seconds: float) -> list[tuple[float, list[str]]]:
    """Ask for /list_models every 0.1 s for `seconds`; each answer's latency and models."""
    answers = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        models = requests.post(controller + "/list_models", timeout=20).json()["models"]
        answers.append((time.perf_counter() - start, models))
        time.sleep(0.1)
    return answers


def register(controller: str, env: dict, worker: str, check_heart_beat: bool = False) -> None:
    """Register `worker` as its owner would (the controller asks it for its status)."""
    requests.post(
        controller + "/register_worker", json={"worker_name": worker, "check_heart_beat": check_heart_beat},
        headers=worker_headers(controller, env), timeout=10,
    ).raise_for_status()


# -- taking over traffic ---------------------------------------------------------------------------
def test_registration_and_heart_beats_without_the_secret_are_refused_even_from_loopback(processes, tmp_path):
    launch, _, env = processes
    controller = launch(["-m", "bunny.serve.controller"], "/list_models")
    real = launch([os.path.join(HERE, "fake_worker.py"), "--model", "bunny"], "/worker_get_status")
    secret = secret_file(controller, env).read_text().strip()
    assert stat.S_IMODE(secret_file(controller, env).stat().st_mode) == 0o600
    assert stat.S_IMODE(os.stat(env[SECRET_DIR_ENV]).st_mode) == 0o700

    with silent_server() as evil:
        takeover = {"worker_name": evil.url, "check_heart_beat": False, "worker_status": {"model_names": ["bunny"], "speed": 1000}}
        probe = {"worker_name": evil.url, "check_heart_beat": False}  # would make the controller POST to evil
        for headers, code in (({}, 401), (authorization("guessed"), 403), ({"Authorization": secret}, 401)):
            for body in (takeover, probe):
                refused = requests.post(controller + "/register_worker", json=body, headers=headers, timeout=10)
                assert refused.status_code == code, refused.text
                why = refused.json()["error"]
                assert "Authorization: Bearer" in why or "not this controller's" in why
                assert "--secret-file" in why and SECRET_ENV in why and secret not in refused.text
            beat = requests.post(
                controller + "/receive_heart_beat", json={"worker_name": evil.url, "queue_length": -100}, headers=headers, timeout=10
            )
            assert beat.status_code == code
        time.sleep(0.2)
        assert evil.connections == []  # the controller never went there
    assert requests.post(controller + "/list_models", timeout=10).json() == {"models": []}

    # register_worker run by someone without the controller's file is refused, and says how to give the secret
    stranger = dict(env, **{SECRET_DIR_ENV: str(tmp_path / "elsewhere")})
    result = subprocess.run(
        [sys.executable, "-m", "bunny.serve.register_worker", "--controller-address", controller, "--worker-name", real],
        cwd=REPO, env=stranger, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0 and "HTTP 401" in result.stderr
    assert "--secret-file" in result.stderr and SECRET_ENV in result.stderr
    # the same user on the same machine needs nothing
    subprocess.run(
        [sys.executable, "-m", "bunny.serve.register_worker", "--controller-address", controller, "--worker-name", real],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert requests.post(controller + "/list_models", timeout=10).json() == {"models": ["bunny"]}
    assert requests.post(controller + "/get_worker_address", json={"model": "bunny"}, timeout=10).json() == {"address": real}


def test_a_model_worker_without_the_secret_stops_at_start_naming_the_flag_and_the_variable(processes, tmp_path):
    launch, _, env = processes
    controller = launch(["-m", "bunny.serve.controller"], "/list_models")
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-the-secret\n")
    command = [sys.executable, "-m", "bunny.serve.model_worker", "--controller", controller, "--model-path", CHECKPOINT,
               "--model-type", "phi-2", "--device", "cpu", "--port", "0", "--secret-file", str(wrong)]  # fmt: skip
    result = subprocess.run(command, cwd=FIXTURES, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stderr[-2000:]
    assert f"the controller at {controller} refused this worker (HTTP 403)" in result.stderr
    assert f"--secret-file {wrong}" in result.stderr and SECRET_ENV in result.stderr
    assert requests.post(controller + "/list_models", timeout=10).json() == {"models": []}


def test_a_registration_with_the_secret_but_absurd_values_is_refused_naming_the_field(processes):
    launch, _, env = processes
    controller = launch(["-m", "bunny.serve.controller"], "/list_models")
    headers = dict(worker_headers(controller, env), **{"Content-Type": "application/json"})

    def registration(name: str = "http://127.0.0.1:9", **status) -> str:
        return json.dumps({"worker_name": name, "worker_status": {"model_names": ["bunny"], **status}})

    cases = [
        (registration(queue_length=-1_000_000), "queue_length"),
        (registration(queue_length=10**15), "queue_length"),
        (registration(speed=1e300), "speed"),
        (registration(speed=0), "speed"),
        (registration(speed=-1), "speed"),
        (registration().replace('"model_names"', '"speed": NaN, "model_names"'), "speed"),
        (registration().replace('"model_names"', '"speed": Infinity, "model_names"'), "speed"),
        (registration("file:///etc/passwd"), "worker_name"),
        (registration("ftp://127.0.0.1/worker"), "worker_name"),
        (registration("http://127.0.0.1/" + "x" * 1000), "worker_name"),
        (registration("127.0.0.1:40000"), "worker_name"),
        (json.dumps({"worker_name": "http://127.0.0.1:9", "worker_status": {"model_names": "bunny"}}), "model_names"),
        (json.dumps({"worker_name": "http://127.0.0.1:9", "worker_status": {"model_names": ["m"] * 10_000}}), "model_names"),
        (json.dumps({"worker_name": "http://127.0.0.1:9", "worker_status": {"model_names": ["m" * 100_000]}}), "model_names"),
        (json.dumps({"worker_name": "http://127.0.0.1:9", "worker_status": {"model_names": [{"a": 1}]}}), "model_names"),
    ]
    for body, field in cases:
        response = requests.post(controller + "/register_worker", data=body, headers=headers, timeout=10)
        assert response.status_code == 400 and f"'{field}'" in response.json()["error"], (body[:120], response.text)
    assert requests.post(controller + "/list_models", timeout=10).json() == {"models": []}

    assert requests.post(controller + "/register_worker", data=registration(), headers=headers, timeout=10).status_code == 200
    for queue_length in (-5, 10**12):
        beat = requests.post(
            controller + "/receive_heart_beat", json={"worker_name": "http://127.0.0.1:9", "queue_length": queue_length},
            headers=headers, timeout=10,
        )  # fmt: skip
        assert beat.status_code == 400 and "'queue_length'" in beat.json()["error"]


# -- freezing --------------------------------------------------------------------------------------
def test_registrations_at_a_socket_that_never_answers_neither_freeze_the_controller_nor_drop_workers(processes):
    launch, _, env = processes
    controller = launch(["-m", "bunny.serve.controller", "--heart-beat-expiration", "2"], "/list_models")
    real = launch([os.path.join(HERE, "fake_worker.py"), "--model", "real"], "/worker_get_status")
    headers = worker_headers(controller, env)
    register(controller, env, real, check_heart_beat=True)

    beats: list = []
    stop_beating = threading.Event()

    def beat() -> None:  # the real worker's heart beats, more often than its expiration
        while not stop_beating.wait(0.3):
            start = time.perf_counter()
            answer = requests.post(
                controller + "/receive_heart_beat", json={"worker_name": real, "queue_length": 0}, headers=headers, timeout=20
            )
            beats.append((time.perf_counter() - start, answer.json()["exist"]))

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    hostile: list = []
    with silent_server() as silent:
        threads = [
            in_thread(hostile, requests.post, controller + "/register_worker",
                      json={"worker_name": silent.url, "check_heart_beat": True}, headers=headers, timeout=30)
            for _ in range(3)
        ]  # fmt: skip
        answers = poll_models(controller, 3.0)  # longer than the heart-beat expiration
        for thread in threads:
            thread.join(15)
    stop_beating.set()
    beating.join(25)

    slowest = max(latency for latency, _ in answers)
    assert slowest < 1.0, f"/list_models took {slowest:.1f} s while workers were being asked for their status"
    assert all(models == ["real"] for _, models in answers)
    assert beats and all(exist for _, exist in beats) and max(latency for latency, _ in beats) < 1.0
    assert len(hostile) == 3
    for seconds, response in hostile:  # each is refused on its own after the status timeout, not one after another
        assert response.status_code == 502 and silent.url in response.json()["error"] and seconds < 9
    assert requests.post(controller + "/list_models", timeout=10).json() == {"models": ["real"]}


def test_a_refresh_with_workers_that_never_answer_keeps_serving_and_drops_only_them(processes):
    launch, _, env = processes
    controller = launch(["-m", "bunny.serve.controller"], "/list_models")
    real = launch([os.path.join(HERE, "fake_worker.py"), "--model", "real"], "/worker_get_status")
    headers = worker_headers(controller, env)
    register(controller, env, real)
    with silent_server() as silent:
        for path in ("/a", "/b", "/c"):  # registered with a status, so nothing asks them yet
            registration = {"worker_name": silent.url + path, "worker_status": {"model_names": ["ghost"]}}
            requests.post(controller + "/register_worker", json=registration, headers=headers, timeout=10).raise_for_status()
        refreshes: list = []
        threads = [in_thread(refreshes, requests.post, controller + "/refresh_all_workers", timeout=30) for _ in range(2)]
        answers = poll_models(controller, 2.0)
        for thread in threads:
            thread.join(15)
        asked = len(silent.connections)

    slowest = max(latency for latency, _ in answers)
    assert slowest < 1.0, f"/list_models took {slowest:.1f} s during a refresh"
    assert all("real" in models for _, models in answers)  # the registry keeps serving meanwhile
    assert [response.status_code for _, response in refreshes] == [200, 200]
    assert all(seconds < 9 for seconds, _ in refreshes)  # asked at once, not one after another
    assert asked == 3  # two refreshes at once share one round of status requests
    assert requests.post(controller + "/list_models", timeout=10).json() == {"models": ["real"]}
    assert stream(controller, {"model": "real", "prompt": "p"}, timeout=10)[-1]["text"] == "p one two three"


# -- busy workers ----------------------------------------------------------------------------------
def test_a_worker_silent_for_longer_than_5_s_before_it_streams_still_gets_its_answer_relayed(processes):
    launch, _, env = processes
    controller = launch(["-m", "bunny.serve.controller"], "/list_models")
    busy = launch([os.path.join(HERE, "fake_worker.py"), "--model", "busy", "--first-delay", "6"], "/worker_get_status")
    register(controller, env, busy)
    start = time.perf_counter()
    chunks = stream(controller, {"model": "busy", "prompt": "p"}, timeout=20)
    assert [c["text"] for c in chunks] == ["p one", "p one two", "p one two three"]
    assert time.perf_counter() - start >= 6


def test_the_worker_read_timeout_bounds_how_long_a_worker_may_stay_silent(processes):
    launch, _, env = processes
    controller = launch(["-m", "bunny.serve.controller", "--worker-read-timeout", "1"], "/list_models")
    stuck = launch([os.path.join(HERE, "fake_worker.py"), "--model", "stuck", "--first-delay", "30"], "/worker_get_status")
    register(controller, env, stuck)
    start = time.perf_counter()
    assert stream(controller, {"model": "stuck", "prompt": "p"}, timeout=20) == [{"text": server_error_msg, "error_code": 3}]
    assert time.perf_counter() - start < 5


def test_the_controller_refuses_a_body_over_the_limit_as_it_arrives(monkeypatch):
    monkeypatch.setattr(controller_module, "MAX_REQUEST_BYTES", 4096)
    app = controller_module.create_app(controller_module.Controller(), "a-secret")
    big = json.dumps({"model": "m", "prompt": "x" * 5000}).encode()

    def chunked():  # no Content-Length: the bytes are counted as they come
        yield big

    with TestClient(app) as client:
        for content in (big, chunked()):
            response = client.post("/worker_generate_stream", content=content)
            assert response.status_code == 413 and "larger than the limit of 4096 bytes" in response.json()["error"]
        assert client.post("/list_models", content=b"{}").status_code == 200


def test_a_prompt_longer_than_the_context_could_hold_is_refused_before_it_is_tokenised(loaded, monkeypatch):
    worker = make_worker(loaded)
    monkeypatch.setattr(model_worker, "tokenizer_image_token", lambda *a, **k: pytest.fail("tokenised"))
    prompt = "word " * (model_worker.MAX_CHARS_PER_POSITION * worker.context_len // 5 + 1)
    with TestClient(model_worker.create_app(worker)) as client:
        response = client.post("/worker_generate_stream", json={"prompt": prompt})
        assert response.status_code == 400
        assert chunks_of(response)[0]["text"] == (
            f"the prompt has {len(prompt)} characters, more than the model's context of {worker.context_len} "
            "positions can hold"
        )
        body = {"model": "bunny-phi-2", "messages": [{"role": "user", "content": prompt}]}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400 and "more than the model's context" in response.json()["error"]["message"]
