"""Synthetic LGG: phantom patients in the Kaggle LGG kaggle_3m layout (`data=synthetic_lgg`).

`data=synthetic_lgg` generates, once per parameter set and deterministically from a seed, a
kaggle_3m folder in `<cache_dir>/synthetic/<params-hash>/` (one `TCGA_*` folder per patient, RGB
256x256 uint8 TIFF slices, {0, 255} mask TIFFs, `data.csv`) and reads it with exactly the `data=lgg`
code path (`LggLayout`, slice store, loaders).

What is generated, and why (so that the LGG recipes, mnv3_lgg, unet_lgg and unext_lgg, face the
decisions the real set asks of them):

- One lower-grade glioma per patient (`num_lesions=(1, 1)`), an irregular blob of radius 8-14 % of
  the slice (about 20-36 px at 256): 500-3000 px on the slices that cut its middle, as the real
  FLAIR abnormalities (a few % of a 256x256 slice), smaller at its ends.
- Thick slices: each patient is a 3D phantom of a 240 mm field of view with `slice_thickness` mm
  slices (6 mm: 24 slices cover the brain; kaggle_3m: ~0.9 mm pixels, 2.5-5 mm slices, 20-88 of
  them), so the tumour spans about a third of the slices at any `size` and the rest are tumour-free,
  as in kaggle_3m (1373 of 3929 slices have tumour). A
  recipe must therefore keep empty slices empty (per-subject 3D Dice punishes false positives there)
  rather than only outline a tumour it is sure to find.
- Contrast per channel as the three sequences stored as RGB: the tumour is bright on FLAIR (green,
  170 against white matter 110), slightly dark before contrast (red, 80) and barely enhancing after
  it (blue, 95: lower-grade gliomas rarely enhance), so the information is mostly in one channel.
- Each patient's RGB volume is rescaled to 0-255 as a whole, with the phantom's bias field and noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from lesionseg.data.nifti import axial_slices
from lesionseg.synthetic.phantom import phantom

# Lesion intensity per channel (white matter = 110): pre-contrast slightly dark, FLAIR bright, post-contrast barely enhancing.
LGG_LESION_INTENSITIES = (80.0, 170.0, 95.0)
LESION_RADIUS = (0.08, 0.14)
FIELD_OF_VIEW_MM = 240.0


def write_synthetic_lgg(
    root: str | Path,
    n_subjects: int,
    seed: int = 0,
    n_slices: int = 12,
    size: int = 256,
    slice_thickness: float = 6.0,
) -> Path:
    """Write phantom patients in the kaggle_3m layout under `root` (returns `root`).

    Each patient is one 3D phantom with one tumour, cut into `n_slices` axial RGB TIFFs (pre-contrast,
    FLAIR, post-contrast: one anatomy, the tumour's contrast per channel as `LGG_LESION_INTENSITIES`)
    with {0, 255} mask TIFFs, numbered from 1 so that lexical and numeric order differ from 10 slices
    on, plus the root `data.csv`. Slices are `slice_thickness` mm thick, pixels 240 mm / `size` wide.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    spacing = (1.0, 1.0, slice_thickness / (FIELD_OF_VIEW_MM / size))
    rows = []
    for index in range(n_subjects):
        patient = f"TCGA_{chr(65 + index // 26 % 26)}{chr(65 + index % 26)}_{1000 + index}"
        folder = root / f"{patient}_{19960909 + index}"
        folder.mkdir(exist_ok=True)
        anatomy_seed = int(rng.integers(2**32))
        channels = [
            phantom(
                (size, size, n_slices),
                np.random.default_rng(anatomy_seed),
                num_lesions=(1, 1),
                lesion_radius=LESION_RADIUS,
                lesion_intensity=intensity,
                spacing=spacing,
            )
            for intensity in LGG_LESION_INTENSITIES
        ]
        rgb = np.stack([axial_slices(channel.image) for channel in channels], axis=-1)
        rgb = np.clip(rgb * (255.0 / rgb.max()), 0, 255).astype(np.uint8)
        masks = axial_slices(channels[0].mask) * np.uint8(255)
        for number in range(1, n_slices + 1):
            tifffile.imwrite(folder / f"{folder.name}_{number}.tif", rgb[number - 1], photometric="rgb")
            tifffile.imwrite(folder / f"{folder.name}_{number}_mask.tif", masks[number - 1])
        rows.append({"Patient": patient, "RNASeqCluster": int(rng.integers(1, 5)), "death01": int(rng.integers(0, 2))})
    pd.DataFrame(rows).to_csv(root / "data.csv", index=False)
    return root
