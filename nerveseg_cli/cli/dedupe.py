"""``nerveseg dedupe``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from nerveseg_cli.cli._app import PANEL_DATA, command
from nerveseg_cli.cli._common import (
    ClassesOption,
    JsonOutput,
    Label,
    Overwrite,
    SubjectRegex,
    Workers,
    key_value_table,
    out_option,
    print_json,
    progress_bar,
    stderr,
    stdout,
)

# Kept in step with nerveseg_cli.data.dedupe (not imported here so that --help stays fast).
DEFAULT_NEAR_THRESHOLD = 0.005
DEFAULT_CONFLICT_DICE = 0.2


class Scope(str, Enum):
    subject = "subject"
    all = "all"


class Policy(str, Enum):
    report = "report"
    drop_conflicts = "drop-conflicts"
    drop_empty = "drop-empty"
    drop_both = "drop-both"
    propagate = "propagate"


SUMMARY_LABELS = {
    "images": "images", "with_nerve": "with a nerve", "exact_pairs": "exact pairs",
    "near_pairs": "near pairs", "duplicate_groups": "duplicate groups",
    "images_in_groups": "images in groups", "conflicting_pairs": "conflicting pairs",
    "conflicting_groups": "conflicting groups", "policy": "policy", "dropped": "dropped",
    "propagated": "masks propagated", "flagged": "flagged (kept, unresolved)",
    "kept": "kept", "scope": "near-duplicate scope", "near_threshold": "near threshold",
    "conflict_dice": "conflict Dice", "signature": "signature",
    "with_each_class": "with each class",
}


# One parameter per option: this is Typer's declaration of the command line.
@command("dedupe", PANEL_DATA)
def dedupe_command(
    images: Annotated[Path, typer.Argument(
        help="Image set: Kaggle folder, images/+masks/ folder or manifest CSV.")],
    out: Annotated[Path, out_option(
        help="Folder for manifest.csv, duplicates.csv, summary.json "
        "(and masks/ with --policy propagate).")],
    scope: Annotated[Scope, typer.Option(
        "--scope", help="Look for near duplicates within each subject, or across all images "
        "(exact duplicates are always found across all).")] = Scope.subject,
    near_threshold: Annotated[float, typer.Option(
        "--near-threshold", min=0.0, max=1.0,
        help="Cosine distance of 64x48 signatures at or below which two images are near "
        "duplicates; 0 finds exact duplicates only.")] = DEFAULT_NEAR_THRESHOLD,
    conflict_dice: Annotated[float, typer.Option(
        "--conflict-dice", min=0.0, max=1.0,
        help="A pair conflicts when its masks' Dice is below this (empty vs non-empty "
        "always does).")] = DEFAULT_CONFLICT_DICE,
    policy: Annotated[Policy, typer.Option(
        "--policy", help="report: keep all; drop-conflicts: drop conflicting exact-duplicate "
        "groups; drop-empty: drop the empty-mask members of conflicting groups; drop-both: "
        "drop conflicting groups, exact or near; propagate: give empty members the group's "
        "largest mask.")] = Policy.drop_conflicts,
    no_masks: Annotated[bool, typer.Option(
        "--no-masks", help="Find duplicates only; do not read masks (for unlabelled sets).")
    ] = False,
    montage: Annotated[Path | None, typer.Option(
        "--montage", help="PNG showing the conflicting pairs side by side, masks outlined.")
    ] = None,
    montage_pairs: Annotated[int, typer.Option(
        "--montage-pairs", min=1, help="Most pairs drawn in the montage.")] = 100,
    subject_regex: SubjectRegex = None,
    label: Label = None,
    classes: ClassesOption = None,
    overwrite: Overwrite = False,
    workers: Workers = 4,
    json_output: JsonOutput = False,
) -> None:
    """Find exact and near-duplicate images, their label conflicts, and repair them."""
    from nerveseg_cli.classes import parse_classes
    from nerveseg_cli.data.dedupe import dedupe, write_outputs
    from nerveseg_cli.io.outputs import Outputs

    # Refuse unusable outputs before the (possibly long) decoding pass.
    Outputs.preflight([images], folders=[out], files=[montage], overwrite=overwrite)
    with progress_bar(None, "dedupe") as advance:
        result = dedupe(images, scope=scope.value, near_threshold=near_threshold,
                        conflict_dice=conflict_dice, policy=policy.value,
                        use_masks=not no_masks, label=label, subject_regex=subject_regex,
                        classes=parse_classes(classes), workers=workers, progress=advance)
    written = write_outputs(result, out, overwrite=overwrite, montage=montage,
                            montage_pairs=montage_pairs, workers=workers)
    summary = result.summary
    if json_output:
        print_json(summary)
    else:
        stdout.print(key_value_table(f"dedupe: {images}",
                                     {_label(k, summary): _shown(v) for k, v in summary.items()}))
        stderr.print(f"wrote {out / 'manifest.csv'}, duplicates.csv and summary.json"
                     + (f", {summary['propagated']} masks in {out / 'masks'}"
                        if summary["propagated"] else ""), markup=False)
        if montage is not None:
            stderr.print(f"wrote {montage} ({written.montage_pairs} of "
                         f"{written.conflicting_pairs} conflicting pairs)", markup=False)


def _label(key: str, summary: dict) -> str:
    """A summary key's row label; with several classes an image "with a nerve" is one with
    any class (each class has its own row)."""
    if key == "with_nerve" and "with_each_class" in summary:
        return "with any class"
    return SUMMARY_LABELS[key]


def _shown(value: object) -> object:
    """A per-class count as ``nerve 12, vessel 9``; other values as they are."""
    if isinstance(value, dict):
        return ", ".join(f"{name} {count}" for name, count in value.items())
    return value
