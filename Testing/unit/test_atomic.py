"""Atomic writes: all-or-nothing replacement, and outputs readable like any other file the user creates."""

from __future__ import annotations

import os
import stat

import pytest

from MedSegReasoning.atomic import atomic_output, staged_outputs, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_output_has_the_users_default_permissions_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        os.umask(old)
        expected = 0o666 & ~old
        target = tmp_path / "result.json"
        write_text_atomic(target, "{}")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert _mode(target) == expected == _mode(plain)


def test_a_failed_write_leaves_the_previous_file_and_no_partial(tmp_path):
    target = tmp_path / "mask.nii.gz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]


def test_staged_outputs_move_in_only_when_all_succeeded(tmp_path):
    (tmp_path / "seg.dcm").write_bytes(b"earlier")
    with pytest.raises(ValueError), staged_outputs(tmp_path) as staging:
        (staging / "seg.dcm").write_bytes(b"new")
        raise ValueError("second writer failed")
    assert (tmp_path / "seg.dcm").read_bytes() == b"earlier"
    with staged_outputs(tmp_path) as staging:
        (staging / "seg.dcm").write_bytes(b"new")
    assert (tmp_path / "seg.dcm").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]
