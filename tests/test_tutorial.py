"""docs/tutorial.ipynb runs as it is, on real MNIST, and prints what the tutorial prints."""

import json
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from conftest import REPO_ROOT
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK = REPO_ROOT / "docs" / "tutorial.ipynb"
PAIRED = NOTEBOOK.with_suffix(".md")


def code_cells(notebook) -> list[str]:
    return [cell.source.strip() for cell in notebook.cells if cell.cell_type == "code"]


def test_the_markdown_and_the_notebook_hold_the_same_code():
    assert code_cells(jupytext.read(PAIRED)) == code_cells(nbformat.read(NOTEBOOK, as_version=4))


def kernel_of_this_python(folder: Path) -> KernelManager:
    """This interpreter's ipykernel (a kernelspec named python3 may start another Python)."""
    spec = folder / "this-python"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "language": "python", "display_name": "this Python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    specs = KernelSpecManager(kernel_dirs=[str(folder)], ensure_native_kernel=False)
    return KernelManager(kernel_name="this-python", kernel_spec_manager=specs)


def printed(notebook) -> str:
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")


@pytest.mark.e2e
def test_the_tutorial_trains_to_the_tutorials_numbers(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LENET_DATA_DIR", str(mnist_dir))
    monkeypatch.delenv("TUTORIAL_EPOCHS", raising=False)  # the default, 3
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    kernel = kernel_of_this_python(tmp_path / "kernels")
    in_repo = {"metadata": {"path": str(REPO_ROOT)}}  # the kernel's working directory
    NotebookClient(notebook, km=kernel, timeout=600, resources=in_repo).execute()
    out = printed(notebook)

    losses = [(int(s), float(v)) for s, v in re.findall(r"^step (\d+): train loss ([\d.]+)$", out, re.M)]
    assert [s for s, _ in losses] == list(range(100, 2814, 100)), out  # 3 x 938 steps of 64 images
    assert all(abs(v - 2.30) < 0.05 for s, v in losses if s <= 1000), losses  # the sigmoid plateau
    assert losses[-1][1] < 1.0, losses

    accuracies = [float(a) for a in re.findall(r"^Accuracy Rate: (0\.\d{4})$", out, re.M)]
    total_losses = [float(t) for t in re.findall(r"^Test Total Loss: ([\d.]+)$", out, re.M)]
    assert len(accuracies) == len(total_losses) == 3, out
    assert accuracies[-1] >= 0.80, out
    assert 350 < total_losses[0] < 370, out  # ~2.30 x 157 test batches

    restored = re.search(r"^restored net_3: Test Total Loss: ([\d.]+), Accuracy Rate: (0\.\d{4})$", out, re.M)
    assert restored, out
    assert (float(restored[1]), float(restored[2])) == (total_losses[-1], accuracies[-1])

    out_dir = Path(re.search(r"^3 epochs; writing to (.+)$", out, re.M)[1])
    events = b"".join(path.read_bytes() for path in (out_dir / "tensorboard").glob("events.out.tfevents.*"))
    for tag in (b"Train Loss", b"Test Total Loss", b"Accuracy Rate"):
        assert tag in events, tag
