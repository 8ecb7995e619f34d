"""Submissions (the "Submission and scoring" panel): ``rle-encode`` and ``rle-decode``
(:mod:`.codec`, their several-class side in :mod:`.codec_classes`). The formats they speak
live in :mod:`nerveseg_cli.io`: Kaggle RLE (:mod:`nerveseg_cli.io.rle`) and the Kaggle CSV
forms (:mod:`nerveseg_cli.io.kaggle_csv`)."""
