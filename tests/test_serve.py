"""The draw-a-digit app: the page, the JSON endpoint, concurrency, stopping, and a real browser."""

import contextlib
import itertools
import json
import re
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import REPO_ROOT, run_cli, script_main, start_python
from crafted_images import encode
from PIL import Image

from lenet_jax.data import load_dataset
from lenet_jax.predict import UNSURE_BELOW
from lenet_jax.serve import create_app, uvicorn_server

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def serving(app, **bounds):
    """app under `uvicorn_server` in a thread, on a free port (yielded); its log goes to caplog."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn_server(app, log_config=None, **bounds)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(trained_run):
    with serving(create_app(trained_run)) as port:
        yield f"http://127.0.0.1:{port}"


def post(url, body, content_type="image/png", path="/predict"):
    request = urllib.request.Request(url + path, body, {"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_page_and_health_are_served(server):
    with urllib.request.urlopen(server + "/", timeout=30) as response:
        page = response.read().decode()
    assert response.status == 200 and '<canvas id="pad"' in page and "Clear" in page
    assert 'id="unsure" hidden' in page and "one digit, large and centred" in page
    with urllib.request.urlopen(server + "/healthz", timeout=30) as response:
        assert json.loads(response.read()) == {"status": "ok", "epoch": 1}


def test_predict_endpoint_answers_a_drawn_digit(server, mnist_dir):
    test = load_dataset(mnist_dir).test
    # Black ink on white, bigger: what the canvas sends.
    drawing = np.asarray(Image.fromarray(255 - test.images[0, ..., 0]).resize((280, 280)))
    status, answer = post(server, encode(drawing))
    assert status == 200, answer
    assert answer["prediction"] == test.labels[0] == 7
    assert len(answer["probabilities"]) == 10 and abs(sum(answer["probabilities"]) - 1) < 1e-3
    assert np.asarray(answer["input"]).shape == (28, 28)
    second = int(np.argsort(answer["probabilities"])[-2])  # predict.py's verdict: sure or not, runner-up
    assert answer["unsure"] is (max(answer["probabilities"]) < UNSURE_BELOW)
    assert answer["runner_up"] == second
    assert answer["runner_up_probability"] == answer["probabilities"][second]


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
def test_drawing_in_a_real_browser_shows_a_prediction(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    flags = "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --disable-sync --no-first-run"
    for flag in [*flags.split(), "--disable-background-networking", "--disable-component-update"]:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(server + "/")
        pad = driver.find_element(By.ID, "pad")
        actions = ActionChains(driver)  # a "1": one vertical stroke through the 280x280 canvas's middle
        actions.move_to_element_with_offset(pad, 0, -100).click_and_hold()
        for y in range(-90, 101, 10):
            actions.move_to_element_with_offset(pad, 2, y)
        actions.release().perform()
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "prediction").text.strip().isdigit())
        prediction = driver.find_element(By.ID, "prediction").text.strip()
        probabilities = [float(driver.find_element(By.ID, f"p{d}").text) for d in range(10)]
        assert abs(sum(probabilities) - 1) < 0.01 and int(prediction) == int(np.argmax(probabilities))
        assert prediction == "1" and not driver.find_element(By.ID, "unsure").is_displayed()
        # A doubtful answer's fields: "unsure" shows beside the digit, which stays alone in #prediction.
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return !pending && !again"))
        doubtful = {"prediction": 7, "probabilities": [0.1] * 10, "input": [[0] * 28] * 28, "unsure": True}
        driver.execute_script(
            "showAnswer(arguments[0])", {**doubtful, "runner_up": 1, "runner_up_probability": 0.4}
        )
        assert driver.find_element(By.ID, "prediction").text == "7"
        assert driver.find_element(By.ID, "unsure").text == "unsure"
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_concurrent_clients_are_answered_and_a_signal_stops_the_server_within_2_s(
    stop, trained_run, mnist_dir
):
    test = load_dataset(mnist_dir).test
    bodies = [encode(255 - test.images[i, ..., 0]) for i in range(12)]
    server = start_python(REPO_ROOT / "scripts" / "serve.py", "--workdir", trained_run, "--port", 0)
    url = "http://127.0.0.1:" + re.search(r":(\d+)/", server.stdout.readline())[1]
    answers, signalled = [], threading.Event()

    def client(k):  # a new connection for every request, until the server is gone
        for i in itertools.cycle(range(k, 12, 4)):
            try:
                status, answer = post(url, bodies[i])
            except (OSError, ValueError):
                status, answer = None, {}
            if not signalled.is_set():
                answers.append((status, answer.get("prediction") == test.labels[i]))
            elif server.poll() is not None:
                return

    for k in range(4):
        threading.Thread(target=client, args=(k,), daemon=True).start()
    deadline = time.monotonic() + 120
    while len(answers) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    signalled.set()
    server.send_signal(stop)
    try:
        code = server.wait(timeout=2)
    finally:
        server.kill()
    assert len(answers) >= 12 and {status for status, _ in answers} == {200}
    assert sum(correct for _, correct in answers) >= 0.8 * len(answers)
    assert code == -stop  # ended by the signal's default action: a shell says 130 or 143
    assert "Traceback" not in server.stderr.read()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--port", "70000"], "argument --port: a port is 0 to 65535 (0: any free one), got 70000"),
        (["--port", "-1"], "argument --port: a port is 0 to 65535"),
        (["--port", "http"], "argument --port: invalid int value: 'http'"),
        (["--max-predictions", "0"], "argument --max-predictions: expected at least 1, got 0"),
        (["--host", "not a host"], "cannot resolve --host not a host"),
        (["--host", "10.255.255.1"], "--host 10.255.255.1 is not an address of this machine"),
        (["--port", "TAKEN"], "is in use (Address already in use): pick another --port"),
    ],
)
def test_serve_refuses_bad_arguments_in_one_line(flags, message, untrained_predictor, monkeypatch, capsys):
    main = script_main("serve.py")
    monkeypatch.setitem(main.__globals__, "load_predictor", lambda workdir, epoch=None: untrained_predictor)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        flags = [taken.getsockname()[1] if f == "TAKEN" else f for f in flags]
        code, out, err = run_cli(capsys, "serve.py", "--workdir", "unused", *flags)
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert len(err.splitlines()) == 1 and out == ""
