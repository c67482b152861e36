"""Which CAD models may enter training, per category: the evaluation-only rule.

The synthetic cross-instance keypoint benchmarks (``cyclecorr evaluate --sets
synth-kp-<category>``, :func:`cyclecorr.evaluate.datasets.make_synthetic_pairs`) render the
PASCAL3D+ CAD models ``cad/pascal3d/<category>NN.json``, whose named 3D keypoints give the
ground truth. A model trained on renders of those very models would be measured on shapes it
has seen, so the rule, per category (:data:`EVALUATION_ONLY`):

==========  ===================  ================================================================
category    PASCAL3D+ models     why
==========  ===================  ================================================================
chair       evaluation only      ``synth-kp-chair`` is the chair model's only keypoint benchmark
aeroplane   evaluation only      ``synth-kp-aeroplane`` likewise
car         allowed in training  the shipped car model was trained with them (README, model
                                 card); its held-out benchmarks are real photos (FlowWeb,
                                 PF-WILLOW, TSS), and ``synth-kp-car`` is *not* held out for it
==========  ===================  ================================================================

A PASCAL3D+ model of a category is a PASCAL3D+ JSON model (``.json`` with ``vertices``,
``faces`` and named ``keypoints``) whose file name starts with the category's name, as the
benchmark and :func:`cyclecorr.data.quartets.collect_models` name them. ``cyclecorr prepare``
refuses them for an evaluation-only category with a :class:`~cyclecorr.data.io.DataError`
listing the files, unless ``--allow-evaluation-models`` is given (then the preparation's
``plan.json`` records which were let in).
"""
from __future__ import annotations

from pathlib import Path

from cyclecorr.data.io import DataError

__all__ = ["EVALUATION_ONLY", "TRAINING_ALLOWED", "pascal3d_models_of", "evaluation_only_models",
           "check_training_models", "OVERRIDE_FLAG"]

#: category → what makes its models evaluation-only (only PASCAL3D+ ones today)
EVALUATION_ONLY: dict[str, str] = {
    "chair": "PASCAL3D+ chair CAD models: the synth-kp-chair benchmark renders them",
    "aeroplane": "PASCAL3D+ aeroplane CAD models: the synth-kp-aeroplane benchmark renders them",
}

#: categories whose PASCAL3D+ models stay in training, with the reason (documented exception)
TRAINING_ALLOWED: dict[str, str] = {
    "car": "the shipped car model was trained with the PASCAL3D+ car models; synth-kp-car is "
           "therefore not held out for it",
}

#: the command-line flag that lets evaluation-only models into a preparation
OVERRIDE_FLAG = "--allow-evaluation-models"


def pascal3d_models_of(models, category: str) -> list[str]:
    """The PASCAL3D+ JSON models of ``category`` among ``models`` (paths; order kept)."""
    from cyclecorr.render.mesh import detect_source

    cat = category.lower()
    return [str(m) for m in models
            if detect_source(m) == "pascal3d" and Path(m).stem.lower().startswith(cat)]


def evaluation_only_models(models, category: str) -> list[str]:
    """The models among ``models`` that the rule keeps out of ``category``'s training."""
    if category.lower() not in EVALUATION_ONLY:
        return []
    return pascal3d_models_of(models, category)


def check_training_models(models, category: str, allow: bool = False, log=print) -> list[str]:
    """Apply the rule to the models of a preparation.

    Returns the evaluation-only models found (empty where none or the category has no such
    rule). Raises :class:`~cyclecorr.data.io.DataError` naming them when there are some and
    ``allow`` is False; with ``allow`` it logs a warning and lets them in.
    """
    held = evaluation_only_models(models, category)
    if not held:
        return []
    names = ", ".join(Path(m).name for m in held)
    if not allow:
        raise DataError(
            f"{len(held)} {category} CAD model(s) are evaluation-only and would enter training: "
            f"{names} ({EVALUATION_ONLY[category.lower()]}; cyclecorr.data.holdout). Leave "
            f"their folder out of --cad, or pass {OVERRIDE_FLAG} to train on them anyway "
            f"(the synth-kp-{category} numbers are then not held out)")
    log(f"warning: {len(held)} evaluation-only {category} CAD model(s) enter training "
        f"({OVERRIDE_FLAG}): {names}; synth-kp-{category} is not held out for this model")
    return held
