"""Texture sources: a texture folder (DTD layout or flat) and the built-in procedural textures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pfadseg.data.textures import load_texture_folder, procedural_textures
from pfadseg.errors import PfadsegError


def test_procedural_textures_are_deterministic_and_varied() -> None:
    tex = procedural_textures(64, 256, seed=0)
    assert tex.dtype == torch.uint8 and tex.shape == (64, 3, 256, 256)
    assert torch.equal(tex[:8], procedural_textures(8, 256, seed=0))
    assert not torch.equal(tex[:8], procedural_textures(8, 256, seed=1))
    flat = tex.float().flatten(1)
    assert (flat.std(dim=1) > 5).all()  # no flat textures
    means = flat.view(64, 3, -1).mean(2)
    assert means.std(dim=0).min() > 15  # colours vary between textures


def test_texture_folder_flat_and_nested(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "a" / "x.jpg")
    Image.new("L", (20, 20), 128).save(tmp_path / "y.png")
    (tmp_path / "notes.txt").write_text("ignored")
    tex = load_texture_folder(tmp_path, 16)
    assert tex.shape == (2, 3, 16, 16) and tex.dtype == torch.uint8
    assert load_texture_folder(tmp_path, 16, limit=1).shape[0] == 1


def test_empty_texture_folder(tmp_path: Path) -> None:
    with pytest.raises(PfadsegError, match=str(tmp_path)):
        load_texture_folder(tmp_path, 16)
    with pytest.raises(PfadsegError, match="does not exist"):
        load_texture_folder(tmp_path / "missing", 16)


def test_dtd_subset(shared_data: Path) -> None:
    tex = load_texture_folder(shared_data / "dtd_subset" / "images", 64, limit=50)
    assert tex.shape == (50, 3, 64, 64)
