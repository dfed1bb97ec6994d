"""SamSegmenter and the factory, on a tiny randomly initialised SAM saved as a real checkpoint file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.segmenter import TINY_SAM, save_tiny_sam

from MedSegReasoning.segmentation.base import Prompt2D
from MedSegReasoning.segmentation.factory import create_segmenter
from MedSegReasoning.wire.errors import InputError, ModelError

EMBEDDING_BYTES = 4 * TINY_SAM["prompt_dim"] * (TINY_SAM["img_size"] // TINY_SAM["patch_size"]) ** 2


@pytest.fixture(scope="module")
def tiny_sam_path(tmp_path_factory) -> Path:
    return save_tiny_sam(tmp_path_factory.mktemp("tiny-sam") / "tiny_sam.pth")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(48, 80, 3), dtype=np.uint8)  # not square: exercises resize + padding


def test_sam_spec_infers_the_architecture_and_predicts(tiny_sam_path, image):
    seg = create_segmenter(f"sam:{tiny_sam_path}")
    assert seg.architecture.embed_dim == TINY_SAM["embed_dim"]
    assert seg.architecture.global_attn_indexes == TINY_SAM["global_attn_indexes"]
    assert seg.architecture.window_size == TINY_SAM["window_size"]
    seg.set_image(image)
    for prompt in (
        Prompt2D(box=(10, 5, 40, 30)),
        Prompt2D(points=((20.0, 12.0),), labels=(1,)),  # points alone are fine for SAM
        Prompt2D(box=(10, 5, 40, 30), points=((20.0, 12.0), (60.0, 40.0)), labels=(1, 0)),
    ):
        prediction = seg.predict(prompt)
        assert prediction.mask.shape == image.shape[:2] and prediction.mask.dtype == bool
        assert isinstance(prediction.score, float)
    assert seg.stats.decoder_calls == 3 and seg.identity.extra["model_type"].startswith("custom")
    assert len(seg.identity.sha256) == 64


def test_matches_segment_anything_predictor(tiny_sam_path, image):
    """Our decoder path (coordinates, postprocessing, threshold) reproduces SamPredictor's logits."""
    import torch
    from segment_anything import SamPredictor

    from MedSegReasoning.segmentation.sam import load_sam

    seg = create_segmenter(f"sam:{tiny_sam_path}")
    reference = SamPredictor(load_sam(tiny_sam_path)[0])
    seg.set_image(image)
    reference.set_image(image)
    box = (10.0, 5.0, 40.0, 30.0)
    ours = seg.predict(Prompt2D(box=box, points=((20.0, 12.0),), labels=(1,)))
    with torch.inference_mode():
        masks, scores, _ = reference.predict(
            point_coords=np.array([[20.0, 12.0]]),
            point_labels=np.array([1]),
            box=np.array(box),
            multimask_output=False,
        )
    assert ours.score == pytest.approx(float(scores[0]), abs=1e-5)
    assert (ours.mask != masks[0]).mean() < 1e-3


def test_medsam_flavour_stretches_to_the_square_input(tiny_sam_path, image):
    seg = create_segmenter(f"medsam:{tiny_sam_path}")
    seg.set_image(image)
    frame = seg._encoded.frame
    assert frame.resized_hw == (TINY_SAM["img_size"],) * 2 and frame.original_hw == image.shape[:2]
    assert seg.identity.name == "MedSAM" and seg.predict(Prompt2D(box=(10, 5, 40, 30))).mask.shape == image.shape[:2]


def test_a_cached_key_skips_the_encoder_and_no_key_always_encodes(tiny_sam_path, image):
    seg = create_segmenter(f"sam:{tiny_sam_path}")
    key = ("volume-hash", 0, 7, "soft-tissue")
    seg.set_image(image, cache_key=key)
    seg.set_image(image, cache_key=key)
    assert (seg.stats.encoder_calls, seg.stats.cache_hits) == (1, 1)
    seg.set_image(image)
    seg.set_image(image)
    assert (seg.stats.encoder_calls, seg.stats.cache_hits) == (3, 1)


def test_the_byte_bound_evicts_the_least_recently_used_embedding(tiny_sam_path, image):
    seg = create_segmenter(f"sam:{tiny_sam_path}", cache_bytes=int(1.5 * EMBEDDING_BYTES))
    seg.set_image(image, cache_key="slice-1")
    seg.set_image(image[::-1].copy(), cache_key="slice-2")  # evicts slice-1
    seg.set_image(image, cache_key="slice-1")
    assert seg.stats.encoder_calls == 3 and seg.stats.cache_hits == 0 and seg.cache.evictions >= 1
    seg.set_image(image, cache_key="slice-1")
    assert seg.stats.cache_hits == 1


def test_model_type_is_checked_against_the_file(tiny_sam_path):
    with pytest.raises(ModelError, match="not vit_b"):
        create_segmenter(f"sam-vit_b:{tiny_sam_path}")


def test_missing_and_damaged_checkpoints_raise_model_error(tmp_path, tiny_sam_path):
    with pytest.raises(ModelError, match="does not exist"):
        create_segmenter(f"sam:{tmp_path / 'absent.pth'}")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny_sam_path.read_bytes()[:5000])
    with pytest.raises(ModelError, match="damaged"):
        create_segmenter(f"sam:{truncated}")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(ModelError, match="damaged"):
        create_segmenter(f"sam:{garbage}")


def _touch(path: str) -> None:
    Path(path).touch()


class _Payload:
    """Unpickling this with full pickle would run code (here: create a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return _touch, (self.marker,)


def test_pickled_python_objects_are_refused_without_running_them(tmp_path):
    import torch

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "payload": _Payload(marker)}, evil)
    with pytest.raises(ModelError, match="weights_only"):
        create_segmenter(f"sam:{evil}")
    assert not marker.exists()


def test_a_state_dict_of_another_model_is_refused(tmp_path):
    import torch

    other = tmp_path / "other.pth"
    torch.save({"backbone.weight": torch.zeros(3)}, other)
    with pytest.raises(ModelError, match="not a segment-anything"):
        create_segmenter(f"sam:{other}")


def test_bad_specs_and_inputs_raise_input_error(tiny_sam_path, image):
    with pytest.raises(InputError, match="litemedsam, litemedsam:PATH, sam:PATH"):
        create_segmenter("nnunet:/x.pth")
    with pytest.raises(InputError, match="needs a local checkpoint"):
        create_segmenter("sam")
    with pytest.raises(InputError, match="torch only"):
        create_segmenter(f"sam:{tiny_sam_path}", backend="onnx")
    seg = create_segmenter(f"sam:{tiny_sam_path}")
    with pytest.raises(InputError, match="set_image"):
        seg.predict(Prompt2D(box=(1, 1, 5, 5)))
    with pytest.raises(InputError, match=r"\(H, W, 3\) uint8"):
        seg.set_image(image[..., 0])
    seg.set_image(image)
    with pytest.raises(InputError, match="outside"):
        seg.predict(Prompt2D(box=(200, 200, 300, 300)))
    with pytest.raises(InputError, match="inverted"):
        seg.predict(Prompt2D(box=(30, 5, 10, 30)))
    with pytest.raises(InputError, match="outside"):
        seg.predict(Prompt2D(points=((500.0, 1.0),), labels=(1,)))


def test_cuda_without_a_gpu_is_an_input_error(tiny_sam_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(InputError, match="no CUDA GPU"):
        create_segmenter(f"sam:{tiny_sam_path}", device="cuda")


def test_importing_the_segmentation_package_does_not_import_torch():
    code = (
        "import sys, MedSegReasoning.segmentation, MedSegReasoning.segmentation.factory, "
        "MedSegReasoning.segmentation.cache, MedSegReasoning.segmentation.base; "
        "print('torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
