"""Data: on-disk layouts -> subject splits -> slice store -> augmentation -> loaders.

One path for every dataset (`datamodule.LesionDataModule`); what differs per dataset is its layout:

- `cases`: what a case and a layout are (`Case`, `CaseArrays`, `Layout`, `DataError`).
- `atlas`, `lgg`, `dicom_stroke`, `folder`: a layout per on-disk format (with their helper modules);
  `nifti` reads volumes and cuts them into axial slices.
- `validate`: the checks every decoded case passes (NaN/inf, shapes, mask values).
- `preprocess`: crop, resize/pad and intensity normalisation, applied once when a case is stored.
- `splits`: held-out test fraction + k-fold cross-validation, by subject.
- `store`: decoded cases as memory-mapped `.npy` files, rebuilt only when sources or parameters change.
- `slices`, `augment`: torch datasets over the store and joint image/mask augmentation.

Synthetic datasets in these layouts are written by `lesionseg.synthetic`.
"""
