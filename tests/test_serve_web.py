"""The Gradio web server: its handlers in-process, and the whole page in headless Chromium.

The browser test starts controller, model worker (the reference phi-2 checkpoint) and web server
as real processes on loopback, then uploads an image, asks, and waits for the streamed answer.
It needs Debian's `chromium` (`.ci/run` installs it) and skips with a message when it is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil

import pytest
from PIL import Image

from bunny.conversation import get_conv_template
from bunny.serve import gradio_web_server as web
from bunny.util.utils import server_error_msg
from servers import REPO, free_port
from test_serve_worker import CHECKPOINT, IMAGES
from tiny import FIXTURES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = os.path.join(REPO, "outputs", "test-artifacts", "web-ui.png")


@pytest.fixture(autouse=True)
def log_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("BUNNY_LOGDIR", str(tmp_path / "logs"))


def args(**changes) -> argparse.Namespace:
    namespace = web.build_parser().parse_args([])
    vars(namespace).update(changes)
    return namespace


# -- handlers, in-process --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, status, template",
    [
        ("bunny-phi-2", {"conv_mode": "bunny"}, "bunny"),
        ("my-finetune", {"conv_mode": "llama"}, "llama"),  # the worker knows best
        ("bunny-llama3-8b-lora", None, "llama"),
        ("Bunny-v1.1-4B", None, "phi3"),
        ("Bunny-v1.0-3B-zh", None, "minicpm"),
        ("Bunny-v1.0-3B", None, "bunny"),
    ],
)
def test_template_comes_from_the_worker_or_the_model_name(name, status, template):
    assert web.template_for(name, status) == template


def test_a_message_with_an_image_shows_the_image_then_the_text_and_keeps_one_image_per_conversation():
    server = web.WebServer(args(), ["m"])
    picture = Image.open(IMAGES[0]).convert("RGB")
    state, messages, text, *_ = server.add_text(get_conv_template("bunny"), "What is it?", picture, "Default")
    assert state.messages[-2][1] == ("What is it?\n<image>", picture, "Default") and state.messages[-1][1] is None
    assert messages[0]["content"]["path"].endswith(web.image_md5(picture) + ".jpg") and os.path.isfile(messages[0]["content"]["path"])
    assert messages[1] == {"role": "user", "content": "What is it?"} and text == ""
    assert web.conversation_images(state) == [picture]  # what is sent to the worker, in "Default" mode
    state.messages[-1][1] = "A picture."
    state, *_ = server.add_text(state, "And this?", Image.open(IMAGES[1]).convert("RGB"), "Default")
    assert len(state.messages) == 2  # a second image starts a new conversation
    skipped, *_ = server.add_text(get_conv_template("bunny"), "  ", None, "Default")
    assert skipped.skip_next


def test_no_worker_for_the_model_shows_the_server_error(monkeypatch):
    server = web.WebServer(args(controller_url="http://127.0.0.1:%d" % free_port()), ["m"])
    state, *_ = server.add_text(get_conv_template("bunny"), "hello", None, "Default")
    *_, (state, messages, *_) = list(server.http_bot(state, "m", 0.2, 0.7, 64, 1.0))
    assert messages[-1] == {"role": "assistant", "content": server_error_msg}


def test_saved_conversation_is_html_with_the_image_inline():
    state = get_conv_template("bunny")
    state.append_message(state.roles[0], ("What is it?\n<image>", Image.open(IMAGES[0]).convert("RGB"), "Default"))
    state.append_message(state.roles[1], "A <b>test</b>.")
    page = web.conversation_html(state)
    assert "data:image/png;base64," in page and "A &lt;b&gt;test&lt;/b&gt;." in page and "<image>" not in page


def alphanumerics(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text)


# -- the page in headless Chromium ------------------------------------------------------------------
def test_the_page_uploads_an_image_and_streams_the_answer(processes, tmp_path):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    launch, started, env = processes
    controller = launch(["-m", "bunny.serve.controller"], "/list_models")
    launch(
        ["-m", "bunny.serve.model_worker", "--controller", controller, "--worker", "{url}", "--model-path", CHECKPOINT,
         "--model-name", "bunny-phi-2", "--model-type", "phi-2", "--device", "cpu"],
        "/worker_get_status", cwd=str(FIXTURES),
    )  # fmt: skip
    page_url = launch(["-m", "bunny.serve.gradio_web_server", "--controller", controller], "/", method="get")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_url + "/?model=bunny-phi-2")
            page.locator("input[type=file]").first.set_input_files(str(IMAGES[0]))
            page.wait_for_selector("img", timeout=30_000)
            page.get_by_placeholder("Enter text and press ENTER").fill("What is shown in this picture?")
            page.get_by_placeholder("Enter text and press ENTER").press("Enter")
            # the answer streams in (with the cursor), then the buttons come on when it is complete
            page.get_by_role("button", name="Regenerate").and_(page.locator(":enabled")).wait_for(timeout=120_000)
            shown = page.locator("[data-testid=bot]").last.inner_text().strip()
            os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
            page.screenshot(path=SCREENSHOT, full_page=True)
        finally:
            browser.close()

    logs = tmp_path / "logs"
    [conv_log] = list(logs.glob("*-conv.json"))
    record = json.loads(conv_log.read_text().splitlines()[-1])
    reply = record["state"]["messages"][-1][1]
    assert record["model"] == "bunny-phi-2" and len(record["images"]) == 1
    # the page shows the reply the worker streamed (rendered as markdown: compare letters and digits)
    assert reply and alphanumerics(shown) == alphanumerics(reply) and web.CURSOR not in shown
    assert record["state"]["messages"][0][1].startswith("What is shown in this picture?")
    assert len(list((logs / "serve_images").rglob("*.jpg"))) == 1
    assert os.path.getsize(SCREENSHOT) > 10_000


def test_launch_starts_the_three_servers_prints_the_url_and_stops_them_all(tmp_path):
    import signal
    import subprocess
    import sys

    import requests

    ports = [str(free_port()) for _ in range(3)]
    env = dict(os.environ, BUNNY_LOGDIR=str(tmp_path / "logs"), PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    env.update(BUNNY_SECRET_DIR=str(tmp_path / "secrets"), BUNNY_CONTROLLER_SECRET="")  # the controller's secret file goes here
    process = subprocess.Popen(
        [sys.executable, "-m", "bunny.serve.launch", "--model-path", CHECKPOINT, "--model-type", "phi-2",
         "--controller-port", ports[0], "--worker-port", ports[1], "--web-port", ports[2]],
        cwd=FIXTURES, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "web demo is up at" in line:
                break
        assert f"web demo is up at http://127.0.0.1:{ports[2]}" in lines[-1], "".join(lines)[-3000:]
        assert requests.get(f"http://127.0.0.1:{ports[2]}/", timeout=10).status_code == 200
        assert requests.post(f"http://127.0.0.1:{ports[0]}/list_models", timeout=10).json()["models"] == [
            "bunny-phi-2-siglip-full"
        ]  # the worker registered with the secret launch handed it
        assert (tmp_path / "secrets" / f"controller-{ports[0]}.secret").stat().st_mode & 0o777 == 0o600
        process.send_signal(signal.SIGTERM)  # as `kill` does; Ctrl-C (SIGINT) takes the same path
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    for port in ports:  # every server is gone
        with pytest.raises(requests.ConnectionError):
            requests.post(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_worker_killed_mid_answer_shows_an_error_and_the_page_keeps_serving(processes):
    import signal
    import subprocess
    import sys

    from servers import HERE

    launch, started, env = processes
    controller = launch(["-m", "bunny.serve.controller"], "/list_models")
    steady = launch([os.path.join(HERE, "fake_worker.py"), "--model", "steady"], "/worker_get_status")
    doomed = launch([os.path.join(HERE, "fake_worker.py"), "--model", "doomed", "--delay", "0.5", "--chunks", "10"], "/worker_get_status")
    for worker in (steady, doomed):
        subprocess.run(
            [sys.executable, "-m", "bunny.serve.register_worker", "--controller-address", controller, "--worker-name", worker],
            cwd=REPO, env=env, check=True, capture_output=True,
        )
    server = web.WebServer(args(controller_url=controller), web.get_model_list(controller))
    assert server.models == ["doomed", "steady"]

    state, *_ = server.add_text(get_conv_template("bunny"), "hello", None, "Default")
    replies = server.http_bot(state, "doomed", 0.2, 0.7, 64, 1.0)
    shown = []
    for state, messages, *buttons in replies:
        shown.append(messages[-1]["content"])
        if shown[-1].startswith("one"):
            started[2].send_signal(signal.SIGKILL)
    assert "one" + web.CURSOR in shown and shown[-1] == server_error_msg
    assert buttons[2]["interactive"] is True  # regenerate is offered again

    state, *_ = server.add_text(get_conv_template("bunny"), "hello again", None, "Default")
    *_, (state, messages, *_) = list(server.http_bot(state, "steady", 0.2, 0.7, 64, 1.0))
    assert messages[-1] == {"role": "assistant", "content": "one two three"}
