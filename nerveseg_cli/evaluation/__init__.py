"""Scoring (the "Submission and scoring" panel): ``score`` (:mod:`.score`, its several-class
side in :mod:`.score_classes`) and post-processing (:mod:`.postprocess`: threshold and min
area, their sweeps, ``postprocess.json``), which ``predict``, ``rle-encode`` and ``train``'s
validation apply too."""
