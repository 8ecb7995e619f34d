"""The Data stage (``nerveseg --help``'s first panel): ``synth`` (:mod:`.synth`), ``dedupe``
(:mod:`.dedupe`) and ``split`` (:mod:`.split`), and the connected components both group items
with (:mod:`.groups`). The image sets they read are :mod:`nerveseg_cli.io.datasets`'."""
