"""bench/isbi.py: the real serial sections the benches and tests are built on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import isbi


def test_load_gives_float_slices_in_index_order(isbi_dir: Path) -> None:
    from PIL import Image

    slices = isbi.load(isbi_dir)
    assert len(slices) == len(list(isbi_dir.glob("[0-9]*.png")))
    assert all(s.dtype == np.float32 and s.ndim == 2 for s in slices)
    assert all(float(s.min()) >= 0.0 and float(s.max()) <= 1.0 for s in slices)
    with Image.open(isbi_dir / "10.png") as im:
        tenth = np.asarray(im, dtype=np.float32) / 255
    np.testing.assert_allclose(slices[10], tenth)


def test_load_of_an_empty_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no ISBI slices"):
        isbi.load(tmp_path)


def test_the_folder_named_by_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOCUSWATCH_ISBI_DIR", str(tmp_path))
    assert isbi.default_dir() == tmp_path
