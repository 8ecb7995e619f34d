"""The Inference stage: ``predict`` (:mod:`.predict`) and the engines it runs models with
(:mod:`.engines`; ONNX Runtime in :mod:`.ort`), ``export`` (:mod:`.export`; the exported-model
format in :mod:`.exported`), ``bench`` (:mod:`.bench`), the merge rules of TTA and ensembles
(:mod:`.merging`, seed 000's ASME in :mod:`.asme`), ``ensemble`` (:mod:`.ensemble`) and ``crf``
(:mod:`.crf`)."""
