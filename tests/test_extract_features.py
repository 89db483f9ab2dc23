"""Folder -> UNI-style CLS embeddings: transform, shape grouping, order, outputs and CLI errors."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from uniseg.inference import embed_batch, extract_features, resized_shape
from uniseg.models.backbones import create_encoder, get_encoder_spec
from uniseg.utils.imageio import ImageReadError

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL = REPO_ROOT / "tools/extract_features.py"

# Name -> (H, W) on disk, and the size the encoder must see: the shorter side becomes 224 as in the model
# card, the longer one int(224 * long / short), snapped to the nearest multiple of the 16 px patch.
IMAGES = {
    "a_square.png": ((64, 64), (224, 224)),
    "b_wide.png": ((48, 80), (224, 368)),  # 224 * 80 / 48 = 373.3 -> 373 -> 368
    "c_square.png": ((30, 30), (224, 224)),  # upsampled
    "d_wide.png": ((48, 80), (224, 368)),
    "e_square.png": ((100, 100), (224, 224)),
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _load_tool():
    spec = importlib.util.spec_from_file_location("_extract_features_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return _load_tool()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """uni-tiny weights in the encoder's own key layout, with layer scales large enough that the image matters.

    (At timm's init value 1e-5 the class token hardly depends on the image, and a swapped order would pass.)
    """
    torch.manual_seed(0)
    state = create_encoder("uni-tiny").state_dict()
    for key in state:
        if key.endswith((".ls1.gamma", ".ls2.gamma")):
            state[key] = torch.full_like(state[key], 0.5)
    path = tmp_path_factory.mktemp("ckpt") / "uni-tiny.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(0)
    for name, ((h, w), _) in IMAGES.items():
        # Smooth random images: resizing and patch embedding see real structure, not just noise.
        base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))
        Image.fromarray(img).save(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def _reference_features(folder: Path, checkpoint: Path) -> np.ndarray:
    """Each image on its own through create_encoder(...)(normalised, resized image), computed by hand."""
    model = create_encoder("uni-tiny", weights=str(checkpoint)).eval()
    rows = []
    for name, (_, size) in IMAGES.items():
        img = np.array(Image.open(folder / name).convert("RGB"))
        x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255.0
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        with torch.no_grad():
            rows.append(model(x)[0].numpy())
    return np.stack(rows)


@pytest.fixture(scope="module")
def reference(folder, checkpoint) -> np.ndarray:
    return _reference_features(folder, checkpoint)


def _assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hw,expected", [((64, 64), (224, 224)), ((48, 80), (224, 368)), ((96, 40), (544, 224)),
                                         ((448, 224), (448, 224)), ((224, 300), (224, 304)),
                                         ((2000, 1000), (448, 224))])
def test_resized_shape_follows_the_card_on_the_patch_grid(hw, expected):
    assert resized_shape(*hw, short_side=224, patch_size=16) == expected


def test_features_equal_direct_encoder_calls_in_input_order(folder, checkpoint, reference):
    paths = sorted(folder.glob("*.png"))
    features, names = extract_features("uni-tiny", paths, weights=str(checkpoint), batch_size=2, progress=False,
                                       root=folder)
    assert names == list(IMAGES)
    assert features.dtype == np.float32 and features.shape == (5, get_encoder_spec("uni-tiny").embed_dim)
    # The comparison has power: different images give clearly different embeddings.
    distances = np.linalg.norm(reference[:, None] - reference[None], axis=-1)
    assert distances[~np.eye(5, dtype=bool)].min() > 1e-2
    _assert_close(features, reference)


def test_module_input_with_workers_and_other_batch_size(folder, checkpoint, reference):
    model = create_encoder("uni-tiny", weights=str(checkpoint)).train()
    paths = [folder / name for name in IMAGES]
    features, names = extract_features(model, paths, batch_size=3, num_workers=2, progress=False)
    assert names == [str(p) for p in paths]
    _assert_close(features, reference)
    assert model.training  # the caller's mode is restored


def test_bf16_autocast_stays_close(folder, checkpoint, reference):
    paths = [folder / name for name in IMAGES]
    features, _ = extract_features("uni-tiny", paths, weights=str(checkpoint), batch_size=5, progress=False,
                                   amp="bf16")
    assert features.dtype == np.float32
    cos = (features * reference).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() > 0.99


def test_shape_groups_bound_memory_and_keep_every_image():
    from uniseg.inference.features import _shape_groups

    shapes = [(3, 16, 16 * (1 + i % 5)) for i in range(23)]  # five shapes, interleaved
    fed = []

    def loader():
        for start in range(0, len(shapes), 3):
            chunk = [(i, torch.full(shapes[i], float(i))) for i in range(start, min(start + 3, len(shapes)))]
            fed.extend(i for i, _ in chunk)
            yield chunk

    seen = []
    for indices, batch in _shape_groups(loader(), batch_size=4, max_pending=6):
        assert len(indices) <= 4 and batch.shape[0] == len(indices)
        assert [int(batch[k, 0, 0, 0]) for k in range(len(indices))] == indices  # rows stay with their index
        seen.extend(indices)
        assert len(fed) - len(seen) <= 6 + 2  # at most max_pending waiting, plus the rest of one loader chunk
    assert sorted(seen) == list(range(23))


def test_corrupt_image_raises_naming_it(folder, checkpoint, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(np.random.default_rng(1).bytes(300))
    with pytest.raises(ImageReadError, match="broken.png"):
        extract_features("uni-tiny", [folder / "a_square.png", bad], weights=str(checkpoint), progress=False)


def test_random_init_warns():
    with pytest.warns(UserWarning, match="randomly initialised"):
        features, names = extract_features("uni-tiny", [], progress=False)
    assert features.shape == (0, 64) and names == []


def test_full_uni_cls_feature_shape_on_meta():
    with torch.device("meta"):
        model = create_encoder("uni")
        square = embed_batch(model, torch.empty(3, 3, 224, 224))
        wide = embed_batch(model, torch.empty(2, 3, *resized_shape(1000, 1500, 224, 16)))
    assert square.shape == (3, 1024) and wide.shape == (2, 1024)
    assert get_encoder_spec("uni").embed_dim == 1024


def test_embed_batch_rejects_token_outputs():
    with pytest.raises(ValueError, match=r"expected one embedding per image \[B, D\]"):
        embed_batch(torch.nn.Identity(), torch.zeros(1, 3, 32, 32))  # e.g. a model that returns feature maps


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_writes_npz(folder, checkpoint, reference, tmp_path):
    out = tmp_path / "feats.npz"
    proc = subprocess.run([sys.executable, str(TOOL), str(folder), str(out), "--encoder", "uni-tiny",
                           "--weights", str(checkpoint), "--batch-size", "2", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as data:
        assert data["features"].dtype == np.float32
        _assert_close(data["features"], reference)
        assert data["names"].tolist() == list(IMAGES)
        assert str(data["encoder"]) == "uni-tiny" and str(data["weights"]) == str(checkpoint)
    assert [p.name for p in tmp_path.iterdir()] == ["feats.npz"]  # no temporary file left behind


def test_cli_writes_pt(tool, folder, checkpoint, reference, tmp_path):
    out = tmp_path / "feats.pt"
    assert tool.main([str(folder), str(out), "--encoder", "uni-tiny", "--weights", str(checkpoint),
                      "--no-progress"]) == 0
    data = torch.load(out, weights_only=True)
    assert set(data) == {"features", "names", "encoder", "weights"}
    assert data["features"].dtype == torch.float32
    _assert_close(data["features"].numpy(), reference)
    assert data["names"] == list(IMAGES) and data["encoder"] == "uni-tiny"


def test_cli_corrupt_image_leaves_existing_output_untouched(folder, checkpoint, tmp_path):
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    (tiles / "a_good.png").write_bytes((folder / "a_square.png").read_bytes())
    (tiles / "b_bad.png").write_bytes(np.random.default_rng(2).bytes(500))
    out = tmp_path / "feats.npz"
    out.write_bytes(b"previous result")
    proc = subprocess.run([sys.executable, str(TOOL), str(tiles), str(out), "--encoder", "uni-tiny",
                           "--weights", str(checkpoint), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "b_bad.png" in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.npz", "tiles"]


def test_cli_corrupt_image_creates_no_output(tool, folder, checkpoint, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(np.random.default_rng(3).bytes(200))
    out = tmp_path / "out" / "feats.pt"
    code = tool.main([str(tmp_path), str(out), "--encoder", "uni-tiny", "--weights", str(checkpoint),
                      "--no-progress"])
    assert code != 0
    assert "x.png" in capsys.readouterr().err
    assert not out.exists()


def test_cli_empty_folder(tool, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no tiles here")
    out = tmp_path / "feats.npz"
    assert tool.main([str(empty), str(out), "--encoder", "uni-tiny", "--weights", "unused.pth"]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: no images found" in err and ".png" in err and ".tif" in err
    assert not out.exists()


def test_cli_missing_folder_bad_suffix_and_bad_weights(tool, folder, tmp_path, capsys):
    out = tmp_path / "feats.npz"
    assert tool.main([str(tmp_path / "nope"), str(out), "--encoder", "uni-tiny"]) == 2
    assert "nope: input folder not found" in capsys.readouterr().err

    assert tool.main([str(folder), str(tmp_path / "feats.csv"), "--encoder", "uni-tiny"]) == 2
    assert "must end with .npz or .pt" in capsys.readouterr().err

    assert tool.main([str(folder), str(out), "--encoder", "uni-tiny", "--weights", str(tmp_path / "missing.pth"),
                      "--no-progress"]) == 2
    assert "missing.pth: checkpoint file not found" in capsys.readouterr().err

    assert tool.main([str(folder), str(out), "--encoder", "uni-tiny", "--weights", "hub", "--no-progress"]) == 2
    assert "has no published weights" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_list_images_sorted_recursive_and_skips_hidden(tool, tmp_path):
    for rel in ("b.PNG", "a.jpg", "sub/c.tif", ".hidden.png", "sub/._d.png", "notes.txt"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert [p.name for p in tool.list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    assert [p.relative_to(tmp_path).as_posix() for p in tool.list_images(tmp_path, recursive=True)] == [
        "a.jpg", "b.PNG", "sub/c.tif"]
