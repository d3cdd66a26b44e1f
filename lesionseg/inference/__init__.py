"""After training: from checkpoints to trusted masks.

- `settings`: the `inference` config node as one `InferenceSettings` object.
- `tta`: flip test-time augmentation.
- `cleanup`: connected-component clean-up on the reassembled 3D volume (or per picture).
- `ensemble`: several checkpoints (the folds of a cross-validation) as one predictor; probabilities averaged.
- `predictor`: `Predictor`, the Python API under `lesionseg.predict`: a volume array, a file or a folder.

Import the submodules directly (`from lesionseg.inference.predictor import Predictor`); this
package file imports nothing, so the LightningModule can use `settings`/`cleanup`/`tta` without cycles.
"""
