"""The Training stage: ``nerveseg train``'s options (:mod:`.options`) and how the command line,
a recipe (:mod:`.recipes`) and ``--resume`` combine into them (:mod:`.resolution`), the loop
(:mod:`.engine`), its checkpoint (:mod:`.state`), schedules (:mod:`.schedule`), data,
augmentation and losses.

Nothing is imported here, so that :mod:`.options` can be read (by the CLI, for its defaults)
without importing torch.
"""
