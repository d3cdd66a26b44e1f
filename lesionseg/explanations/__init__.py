"""Saliency explanations of trained segmentation models, with faithfulness and plausibility scores.

One module per concern: `models` (the trained members and what is explained of them), `targets`
(what a map explains: the lesion logit over the predicted mask, or the documented fallback),
`methods` (Grad-CAM, Grad-CAM++, LIME, occlusion: the field's libraries behind one signature),
`scores` (ROAD / deletion, energy in the lesion, pointing game), `sanity` (cascading weight
randomisation), `figures` (overlays a person reads), `writer` (maps in each scan's geometry), and
`pipeline` (the per-scan loop the `lesionseg.explain` command runs).
"""
