"""The one start-up rule: which topics ``shelver consume`` needs before it serves.

``shelver consume`` checks exactly these topics before loading its models, and ``shelver doctor``
reports exactly these, so the doctor cannot pass where consume then exits 1: the input, replay
(when configured), output and dead-letter topics always, and the review topic whenever results
under a confidence threshold are copied there (``SHELVER_REVIEW_THRESHOLD``, or the calibrated
artifact's default when that is unset). The artifact's default is read from its
``calibration.json`` without TensorFlow.
"""
from __future__ import annotations

from consumer.config import Settings


def artifact_review_threshold(settings: Settings) -> float | None:
    """The artifact's suggested review threshold (None: uncalibrated, or no artifact to read)."""
    from models.calibration import load_calibration

    try:
        calibration = load_calibration(settings.resolved_artifact_dir())
    except (OSError, ValueError, KeyError, TypeError):  # a missing or damaged artifact is reported on its own
        return None
    return calibration.review_threshold if calibration is not None else None


def review_threshold(settings: Settings, artifact_threshold: float | None) -> float | None:
    """The threshold the service routes by: the setting, else the artifact's default."""
    return settings.review_threshold if settings.review_threshold is not None else artifact_threshold


def required_topics(settings: Settings, artifact_threshold: float | None) -> dict[str, str | None]:
    """Role → topic name (None: disabled) of every topic ``shelver consume`` requires at start."""
    topics: dict[str, str | None] = {"input": settings.input_topic, "replay": settings.replay_topic or None,
                                     "output": settings.output_topic, "dead letters": settings.dlq_topic}
    if settings.review_topic and review_threshold(settings, artifact_threshold) is not None:
        topics["review"] = settings.review_topic  # hitl: a missing topic would stop the service at its first review
    return topics


def extra_topics(settings: Settings, artifact_threshold: float | None) -> list[str]:
    """The required topics beyond the core four (``consumer.adapters.admin.core_topics``)."""
    from consumer.adapters.admin import core_topics

    core = set(core_topics(settings))
    return [t for t in required_topics(settings, artifact_threshold).values() if t and t not in core]
