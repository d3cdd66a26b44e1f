"""Synthetic data in every on-disk format the project reads, generated deterministically from a seed.

Brain phantoms with lesions (`phantom`) written as real datasets, so that each is read back by the
very layout code a downloaded dataset goes through:

- `cache`: generate a dataset once per parameter set into `<cache_dir>/<name>/<params-hash>/`
  (atomically) and a DataModule whose root is that folder.
- `atlas`: ATLAS R2.0 / R1.x trees (`data=synthetic`, the project's default dataset).
- `lgg`: the Kaggle LGG kaggle_3m layout (`data=synthetic_lgg`).
- `folder`: the generic `images/` + `masks/` layout.
- `dicom`: stroke DICOM series with colour-drawn labels (`data=synthetic_dicom`).
"""
