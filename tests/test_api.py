"""The public API: the names `lenet_jax` exports, and the README's Python examples as written."""

import os
import re

import pytest
from conftest import REPO_ROOT

import lenet_jax


def test_every_public_name_imports_and_is_documented():
    for name in lenet_jax.__all__:
        value = getattr(lenet_jax, name)
        assert value is not None
        if callable(value):
            assert value.__doc__, name


def readme_python_blocks(section: str) -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


@pytest.mark.e2e
def test_readme_python_api_examples_run_as_written(mnist_dir, tmp_path, monkeypatch):
    blocks = readme_python_blocks("Python API")
    assert blocks, "the README's Python API section has no python block"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LENET_DATA_DIR", str(mnist_dir))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert os.path.isdir(tmp_path / "checkpoints")


def test_every_function_docs_from_pytorch_names_exists():
    import importlib

    text = (REPO_ROOT / "docs" / "from-pytorch.md").read_text()
    names = set(re.findall(r"`(lenet_jax(?:\.\w+)+)", text))
    assert len(names) > 15
    for dotted in sorted(names):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                value = importlib.import_module(".".join(parts[:cut]))
                break
            except ImportError:
                continue
        for attr in parts[cut:]:
            value = getattr(value, attr)  # AttributeError: the page names something that is gone
