"""Fuzz predict.py with odd and hostile inputs beside a good image: one line, the good one predicted."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import crafted_images as ci
import pytest
from conftest import run_cli, script_main, snapshot


def in_folder(name, maker):
    """A folder 'dir' holding good.png and `name`, made by maker(path)."""

    def make(root: Path) -> list[str]:
        (root / "dir").mkdir()
        (root / "dir" / "good.png").write_bytes(ci.encode(ci.digit_like()))
        maker(root / "dir" / name)
        return [str(root / "dir")]

    return make


def unix_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))  # the socket file stays


def symlink_to(target):
    return lambda path: path.symlink_to(target)


def made(name, maker):
    """root/name made by maker(path), given alone."""

    def make(root: Path) -> list[str]:
        maker(root / name)
        return [str(root / name)]

    return make


def file(name, data):
    return made(name, lambda path: path.write_bytes(data() if callable(data) else data))


def notes(path: Path) -> None:
    path.mkdir()
    (path / "readme.txt").write_text("no images here")


def symlink_loop(path: Path) -> None:
    path.symlink_to(path.with_name("b.png"))
    path.with_name("b.png").symlink_to(path)


TOO_LARGE = r"over the limit of 16,777,216 pixels \(4096x4096\): scale it down, or raise --max-pixels"
SKIP = r"note: skipping .*{}: not a regular file \({}\)"
CASES = [  # (id, maker of the inputs, extra flags, exit code, regex of the one stderr line or None)
    ("sparse ink in 3x100000", file("sparse.png", ci.sparse_ink), [], 2, r"sparse.png: too little ink"),
    ("zTXt decompression bomb", file("bomb.png", ci.ztxt_bomb), [], 2,
     r"bomb.png: cannot decode the image \(Decompressed data too large"),
    ("20000x20000 header", file("huge.png", ci.png_claiming(20000, 20000)), [], 2,
     r"huge.png: the image has 400,000,000 pixels, " + TOO_LARGE),
    ("10000x10000 header", file("big.png", ci.png_claiming(10000, 10000)), [], 2,
     r"big.png: the image is 10000x10000 = 100,000,000 pixels, " + TOO_LARGE),
    ("one pixel over the cap", file("over.png", ci.png_claiming(4097, 4096)), [], 2,
     r"over.png: the image is 4097x4096 = 16,781,312 pixels, " + TOO_LARGE),
    ("raised --max-pixels still checks", file("big.png", ci.png_claiming(10000, 10000)),
     ["--max-pixels", "20000000"], 2, r"big.png: .* over the limit of 20,000,000 pixels: scale"),
    ("text named .png", file("text.png", b"hello, not an image"), [], 2,
     r"text.png: not an image file: give PNG, JPEG"),
    ("empty file", file("empty.png", b""), [], 2, r"empty.png: not an image file"),
    ("truncated PNG", file("cut.png", ci.truncated), [], 2,
     r"cut.png: cannot decode the image \(image file is truncated"),
    ("blank page", file("blank.png", ci.blank), [], 2, r"blank.png: the image has no ink"),
    ("JPEG named .png", file("photo.png", ci.DRAWINGS["RGB JPEG"]), [], 0, None),
    ("palette with a transparent index", file("p.png", ci.DRAWINGS["P+transparency"]), [], 0, None),
    ("LA", file("la.png", ci.DRAWINGS["LA"]), [], 0, None),
    ("16-bit with a transparent grey", file("i16.png", ci.DRAWINGS["I;16+transparency"]), [], 0, None),
    ("CMYK JPEG", file("cmyk.jpg", ci.DRAWINGS["CMYK JPEG"]), [], 0, None),
    ("float TIFF", file("f.tif", ci.DRAWINGS["F"]), [], 0, None),
    ("pipe in a folder", in_folder("pipe.png", os.mkfifo), [], 0, SKIP.format("pipe.png", "a named pipe")),
    ("socket in a folder", in_folder("sock.png", unix_socket), [], 0, SKIP.format("sock.png", "a socket")),
    ("sub.png a folder", in_folder("sub.png", Path.mkdir), [], 0, SKIP.format("sub.png", "a directory")),
    ("broken link in a folder", in_folder("gone.png", symlink_to("nowhere.png")), [], 0,
     SKIP.format("gone.png", "a broken symbolic link")),
    ("named pipe given", made("pipe.png", os.mkfifo), [], 2,
     r"pipe.png: not a regular file \(a named pipe\): give image files"),
    ("device", lambda root: ["/dev/null"], [], 2, r"/dev/null: not a regular file \(a character device\)"),
    ("empty folder", made("empty", Path.mkdir), [], 2, r"empty: no image files \(.png, .jpg"),
    ("folder without images", made("notes", notes), [], 2, r"notes: no image files"),
    ("missing file", lambda root: [str(root / "typo.png")], [], 2, r"typo.png: no such file or directory"),
    ("broken link given", made("l.png", symlink_to("nowhere")), [], 2, r"l.png: broken symbolic link"),
    ("symlink loop", made("a.png", symlink_loop), [], 2,
     r"cannot use it \(Too many levels of symbolic links\): give"),
    ("--json, bad image", file("blank.png", ci.blank), ["--json"], 2, r"blank.png: the image has no ink"),
    ("--max-pixels 0", file("x.png", ci.blank), ["--max-pixels", "0"], 2,
     r"error: argument --max-pixels: expected at least 1, got 0"),
]  # fmt: skip


@pytest.mark.parametrize("make, flags, code, line", [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_predict_images_fuzz(make, flags, code, line, untrained_predictor, tmp_path, monkeypatch, capsys):
    inputs = make(tmp_path)
    if not (tmp_path / "dir" / "good.png").exists():  # else in the folder given
        (tmp_path / "good.png").write_bytes(ci.encode(ci.digit_like()))
        inputs.append(str(tmp_path / "good.png"))
    before = snapshot(tmp_path)
    main = script_main("predict.py")
    monkeypatch.setitem(main.__globals__, "load_predictor", lambda workdir, epoch=None: untrained_predictor)
    got, out, err = run_cli(capsys, "predict.py", *inputs, "--workdir", tmp_path / "unused", *flags)
    assert got == code and "Traceback" not in err + out, err
    if line is None:
        assert err == ""
    else:
        assert len(err.splitlines()) == 1 and re.search(line, err), err
    rows = [json.loads(row) for row in out.splitlines()] if "--json" in flags else None
    if "--max-pixels" in flags and code == 2 and "error:" in err:
        assert out == ""  # a bad flag: nothing predicted
    elif rows is not None:
        assert any(row["path"].endswith("good.png") and "prediction" in row for row in rows)
        assert any("error" in row for row in rows)
    else:
        assert "good.png: " in out  # the good image's prediction
    assert snapshot(tmp_path) == before
