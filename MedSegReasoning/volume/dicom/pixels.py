"""Pixel data of a sorted series: which transfer syntaxes can be decoded here, decoding, modality transform."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ...wire.errors import InputError
from .header import _damaged_message, _Header


def _check_decodable(headers: Sequence[_Header]) -> None:
    """A missing codec is an installation problem, not a damaged file: say which one, before decoding anything."""
    seen: set[str] = set()
    for header in headers:
        syntax = _transfer_syntax(header.ds)
        if syntax in seen:
            continue
        seen.add(syntax)
        name = _undecodable(syntax)
        if name:
            raise InputError(
                f"{header.path} is compressed as {name}, which this installation cannot decode: "
                "pip install python-gdcm, or convert the series to uncompressed DICOM (e.g. gdcmconv --raw)."
            )


def _transfer_syntax(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""


def _undecodable(syntax: str) -> str | None:
    """The transfer syntax's name when no installed plugin decodes it; None when it is fine."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    if not syntax:  # a bare dataset: uncompressed
        return None
    uid = UID(syntax)
    try:
        if not uid.is_compressed or get_decoder(uid).is_available:
            return None
    except (ValueError, NotImplementedError):  # not a transfer syntax pydicom knows at all
        pass
    return uid.name if uid.name != syntax else f"the unknown transfer syntax {syntax}"


def _read_pixels(ordered: Sequence[_Header]) -> np.ndarray:
    """Stored values through each slice's modality transform (HU for CT); int16 where that is exact.

    Decoding runs in threads: the codecs (Pillow/OpenJPEG, pyjpegls) release the GIL, and compressed series
    (JPEG 2000 here: ~60 ms a 512x512 slice) are decode-bound.
    """
    from concurrent.futures import ThreadPoolExecutor

    check_pixel_data_size(ordered)
    first = ordered[0].ds
    out = np.empty((len(ordered), int(first.Rows), int(first.Columns)), dtype=np.float32)

    def fill(k: int) -> bool:
        out[k], integral = _decode_slice(ordered[k])
        return integral

    workers = max(1, min(8, os.cpu_count() or 1, len(ordered)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        integral = all(list(pool.map(fill, range(len(ordered)))))
    return _compact(out, integral)


def check_pixel_data_size(headers: Sequence[_Header]) -> None:
    """An uncompressed file must hold the pixels its header announces: refuse a header that claims more (e.g.
    65535 x 65535) before memory for them is allocated, naming the file. Compressed files cannot be bounded so."""
    from pydicom.uid import UID

    for header in headers:
        syntax = _transfer_syntax(header.ds)
        if syntax and UID(syntax).is_compressed:
            continue
        ds = header.ds
        try:
            rows, columns = int(ds.Rows), int(ds.Columns)
            bits = int(getattr(ds, "BitsAllocated", 16) or 16)
            frames = header.number_of_frames
        except (TypeError, ValueError):
            raise InputError(
                f"DICOM image {header.path} has a Rows, Columns or BitsAllocated that is not a number: "
                "the header is damaged."
            ) from None
        needed = rows * columns * frames * max(1, int(getattr(ds, "SamplesPerPixel", 1) or 1)) * bits // 8
        size = header.path.stat().st_size
        if rows <= 0 or columns <= 0 or needed > size:
            raise InputError(
                f"DICOM image {header.path} is truncated or damaged: its header announces {rows} x {columns} pixels "
                f"({needed:,} bytes) but the file holds {size:,} bytes; copy it again from its source."
            )


def _decode_slice(header: _Header) -> tuple[np.ndarray, bool]:
    """One file's pixels in modality units, and whether its modality transform keeps integers integers."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = header.path
    try:
        ds = pydicom.dcmread(path, force=header.bare)
        if header.bare:
            _set_bare_transfer_syntax(ds)
        values = apply_modality_lut(ds.pixel_array, ds)
    except Exception as exc:  # truncated pixel data, unsupported compression, ...: name the file
        raise InputError(_damaged_message(path, exc)) from exc
    if values.ndim != 2:
        raise InputError(f"{path} holds {values.shape} pixels, not one greyscale frame: give a greyscale series.")
    return values, _modality_transform_is_integral(ds)


def _set_bare_transfer_syntax(ds) -> None:
    """A dataset without file meta is uncompressed in the encoding pydicom detected while parsing it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = ds.original_encoding
    if "TransferSyntaxUID" not in (getattr(ds, "file_meta", None) or {}):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )


def _modality_transform_is_integral(ds) -> bool:
    if "ModalityLUTSequence" in ds:
        return False
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return slope.is_integer() and intercept.is_integer()


def _compact(array: np.ndarray, integral: bool) -> np.ndarray:
    """int16 when every value is an integer in range (CT in HU, most MR): half the memory, same numbers."""
    if integral and array.size and array.min() >= -32768 and array.max() <= 32767:
        return array.astype(np.int16)
    return array
