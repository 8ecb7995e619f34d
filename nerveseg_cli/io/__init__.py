"""Files in and out, by concern (docs/formats.md is the contract they implement):

- :mod:`~nerveseg_cli.io.images`: decoding images and masks (the pixel rules), ``MaskReader``;
- :mod:`~nerveseg_cli.io.datasets`: ids and subjects, image-set discovery, CSVs and manifests;
- :mod:`~nerveseg_cli.io.outputs`: atomic writes and the checks on output folders and files;
- :mod:`~nerveseg_cli.io.parallel`: thread pools for file work and a prefetcher.
"""
