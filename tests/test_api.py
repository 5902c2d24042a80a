"""The public API: the names `lenet_jax` exports, and the README's Python examples as written."""

import contextlib
import io
import pkgutil
import re
import subprocess

import numpy as np
import pytest
from conftest import REPO_ROOT

import lenet_jax
from lenet_jax.evaluation import evaluate_checkpoint


def test_every_public_callable_is_documented():
    public = {name: getattr(lenet_jax, name) for name in lenet_jax.__all__}
    assert [name for name, value in public.items() if callable(value) and not value.__doc__] == []


@pytest.mark.e2e
def test_readme_python_api_example_prints_the_models_accuracy_and_a_prediction(
    mnist_dir, tmp_path, monkeypatch
):
    section = (REPO_ROOT / "README.md").read_text().split("## Python API\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LENET_DATA_DIR", str(mnist_dir))
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    accuracy = printed.getvalue().splitlines()[-2]  # after the run's own lines
    # The accuracy it prints is the trained model's on the 10,000 test images, as evaluated anew.
    (metrics_log,) = tmp_path.rglob("metrics.jsonl")  # the run's workdir, wherever the block puts it
    evaluated = evaluate_checkpoint(metrics_log.parent)
    assert evaluated["count"] == 10_000 and float(accuracy) == evaluated["test_accuracy"]
    # One row of 10 probabilities per image; as the block's comment promises, the first 8 digits right.
    probabilities = namespace["predict"](namespace["test"].images[:8])
    assert probabilities.shape == (8, 10) and np.allclose(probabilities.sum(-1), 1, atol=1e-5)
    labels = namespace["test"].labels[:8].tolist()
    assert probabilities.argmax(-1).tolist() == labels == [7, 2, 1, 0, 4, 1, 4, 9]


def test_every_function_docs_from_pytorch_names_exists():
    text = (REPO_ROOT / "docs" / "from-pytorch.md").read_text()
    names = set(re.findall(r"`(lenet_jax(?:\.\w+)+)", text))
    assert len(names) > 15
    for dotted in sorted(names):
        pkgutil.resolve_name(dotted)  # ImportError or AttributeError: the page names something gone


# README or a docs/ page, then a comma or "section", then a heading's title (quoted or not).
CROSS_REFERENCE = re.compile(r'(README|docs/[\w-]+\.md)(?:,|\s+section)\s+(?:"([^"]+)"|([A-Z][\w -]*\w))')


def test_every_cross_reference_names_an_existing_heading():
    command = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        path = REPO_ROOT / name
        if "fixtures" in path.parts or path.suffix not in (".py", ".md", ".toml", "", ".txt", ".cfg"):
            continue
        for document, quoted, bare in CROSS_REFERENCE.findall(path.read_text(errors="replace")):
            target = REPO_ROOT / ("README.md" if document == "README" else document)
            headings = re.findall(r"^#+ (.+)$", target.read_text(), re.M)
            found.append((name, document, " ".join((quoted or bare).split())))
            assert found[-1][2] in headings, f"{name} cites {document}, {found[-1][2]!r}: no such heading"
    assert len(found) >= 5  # the pattern still finds the references
