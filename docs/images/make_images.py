"""Make the README's pictures from a real ``ask`` result: its overview.png, and the Slicer scene the module writes
for it, rendered by Slicer's own slice view (``MedSegReasoning.slicer.offscreen_view``: slice logic, segmentation
and markups displayable managers; Slicer's automatic window/level), beside the chat panel
(PySide2 offscreen) showing the same round.

    medseg-reasoning demo                      # builds ./medseg-sample
    medseg-reasoning ask medseg-sample/dicom "Segment the head of the left caudate nucleus." \
        --reasoner replay:MedSegReasoning/data/replay/demo-caudate.jsonl --out medseg-out/replay
    QT_QPA_PLATFORM=offscreen python docs/images/make_images.py medseg-out/replay

Needs slicer-core, SimpleITK, PySide2 (or PySide6) and Pillow. Writes docs/images/overview.png and
docs/images/slicer_scene.png (each kept under 300 kB: palette PNG where the full-colour one is larger).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HERE = Path(__file__).resolve().parent
MAX_BYTES = 300_000
VIEW_SIZE = (560, 560)
PANEL_WIDTH = 440
FIELD_OF_VIEW_MM = 120.0  # zoomed around the first target, as a reader would look at it (Slicer's own W/L)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path, help="an ask --out folder of a reasoner round (result.json, mask.nii.gz)")
    parser.add_argument("--series", type=Path, help="the input series (default: the path result.json records)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    result = json.loads((args.result / "result.json").read_text(encoding="utf-8"))
    from PIL import Image

    save_small(Image.open(args.result / "overview.png"), args.out / "overview.png")
    view = render_scene(args.result, result, args.series or Path(result["input"]["path"]))
    panel = chat_panel_picture(result, height=view.height)
    both = Image.new("RGB", (view.width + panel.width, view.height), "white")
    both.paste(view, (0, 0))
    both.paste(panel, (view.width, 0))
    save_small(both, args.out / "slicer_scene.png")


def render_scene(result_dir: Path, result: dict, series: Path):
    """The module's scene for this result (volume node read by Slicer's reader, segmentation and markups written
    by ``SessionScene``), rendered through Slicer's slice view at the first target's key slice."""
    import SimpleITK as sitk
    import slicer
    from PIL import Image

    from MedSegReasoning.dialogue.records import PALETTE
    from MedSegReasoning.slicer.offscreen_view import render_slice_view
    from MedSegReasoning.slicer.scene import SceneEntity, SessionScene
    from MedSegReasoning.volume import load_volume
    from MedSegReasoning.volume.itk_io import read_itk_image
    from MedSegReasoning.wire.masks import CompactMask

    volume = load_volume(series)
    labels = read_itk_image(result_dir / "mask.nii.gz").array
    folder = Path(tempfile.mkdtemp(prefix="medseg-images-"))
    image = sitk.GetImageFromArray(volume.array)  # LPS, as the engine reads it; Slicer converts to RAS itself
    image.SetOrigin(tuple(volume.geometry.origin))
    image.SetSpacing(tuple(volume.geometry.spacing))
    image.SetDirection(tuple(np.asarray(volume.geometry.direction_matrix).ravel()))
    sitk.WriteImage(image, str(folder / "input.nrrd"))

    scene = slicer.vtkMRMLScene()
    scene.RegisterNodeClass(slicer.vtkMRMLMarkupsJsonStorageNode())
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", Path(series).name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(folder / "input.nrrd"))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        raise SystemExit(f"Slicer could not read {folder / 'input.nrrd'}")
    session = SessionScene.create(scene, node, "docs")
    for n, target in enumerate(result["targets"]):
        mask = labels == target["value"]
        color = PALETTE[n % len(PALETTE)]
        entity_id = target.get("entity_id") or f"T{target['value']}"
        session.write_entity(
            SceneEntity(
                entity_id,
                target["label"],
                CompactMask.from_dense(mask),
                color,
                target["key_slice"],
                target.get("findings") or "",
            )  # fmt: skip
        )
    first = result["targets"][0]
    k = first["key_slice"]
    jj, ii = np.nonzero(labels[k] == first["value"])
    centre = volume.geometry.index_to_physical(np.array([[ii.mean(), jj.mean(), k]]))[0]
    ras = (-centre[0], -centre[1], centre[2])
    snapshot = render_slice_view(scene, node, ras, size=VIEW_SIZE, field_of_view_mm=FIELD_OF_VIEW_MM)
    return Image.fromarray(snapshot.rgb)


def chat_panel_picture(result: dict, height: int):
    """The module's chat panel after the same round: the question, the reasoning, the entity chip, the answer."""
    from PIL import Image

    from MedSegReasoning.dialogue.records import PALETTE
    from MedSegReasoning.slicer.chat_panel import ChatPanel, RoundEvent, qt_namespace

    for binding in ("PySide2", "PySide6"):
        try:
            q = qt_namespace(binding)
            break
        except ImportError:
            continue
    else:
        raise SystemExit("no PySide: pip install PySide2==5.13.2 (or PySide6-Essentials)")
    widgets = __import__(f"{binding}.QtWidgets", fromlist=["QtWidgets"])
    app = widgets.QApplication.instance() or widgets.QApplication([])
    events = [RoundEvent("reasoning", {"text": result["round"]["reasoning"]})]
    for n, target in enumerate(result["targets"]):
        entity = {
            "id": target.get("entity_id"),
            "name": target["label"],
            "color": list(PALETTE[n % len(PALETTE)]),
            "review": "proposed",
        }
        events.append(RoundEvent("target", {"entity": entity}))
    found = ", ".join(f"{t.get('entity_id')} ({t['label']}, {t['volume_ml']:.1f} mL)" for t in result["targets"])
    events.append(RoundEvent("done", {"answer": f"Found {found}."}))

    class Replayed:
        def ask(self, question, context):
            yield from events

        def cancel(self):
            pass

        def set_review(self, entity_id, review):
            pass

    panel = ChatPanel(Replayed(), qt=q)
    panel.widget.resize(PANEL_WIDTH, height)
    panel.widget.show()
    panel.input.setPlainText(result["question"])
    panel.send()
    deadline = time.monotonic() + 10
    while panel.busy and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)
    if panel._round_view is not None:  # show the reasoning, as one click on "Reasoning" does
        panel._round_view.toggle.setChecked(True)
    app.processEvents()
    path = Path(tempfile.mkdtemp(prefix="medseg-panel-")) / "panel.png"
    if not panel.widget.grab().save(str(path)):
        raise SystemExit("the chat panel could not be grabbed")
    return Image.open(path).convert("RGB")


def save_small(image, path: Path) -> None:
    """PNG under ``MAX_BYTES``: full colour when it fits, else a 256-colour palette."""
    image = image.convert("RGB")
    image.save(path, format="PNG", optimize=True)
    if path.stat().st_size > MAX_BYTES:
        image.quantize(256).save(path, format="PNG", optimize=True)
    if path.stat().st_size > MAX_BYTES:
        raise SystemExit(f"{path} is {path.stat().st_size} bytes, over {MAX_BYTES}")
    print(f"{path}: {image.width}x{image.height}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
