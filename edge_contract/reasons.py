"""Machine-readable reasons of refused or rolled-back updates (events, reported state, CLI).

Pure: shared by the agent and the fleet controller.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why an update was refused, deferred or rolled back."""

    # The release itself (TUF metadata and the target's custom fields).
    UNTRUSTED_METADATA = "untrusted_metadata"  # bad signature, unknown key, below threshold
    METADATA_ROLLBACK = "metadata_rollback"  # older timestamp / snapshot / targets than trusted
    METADATA_EXPIRED = "metadata_expired"  # freeze attack or a repository left unsigned
    NOT_A_TARGET = "not_a_target"  # desired names a file the signed metadata does not list
    MALFORMED_RELEASE = "malformed_release"  # custom fields missing or of the wrong shape
    RELEASE_ROLLBACK = "release_rollback"  # release counter below the installed one
    # No variant of the release fits this device's hardware id and runtimes.
    WRONG_HARDWARE = "wrong_hardware"
    AGENT_TOO_OLD = "agent_too_old"  # the release needs a newer agent
    # The bytes.
    TAMPERED = "tampered"  # a chunk or the whole file does not match the signed hashes
    TOO_LONG = "too_long"  # more bytes than the signed length
    TRANSPORT = "transport"  # the repository did not answer, or answered nonsense
    # The desired-state message.
    DESIRED_UNSIGNED = "desired_unsigned"  # no valid signature by the controller's online key
    DESIRED_REPLAYED = "desired_replayed"  # counter not above the last accepted one
    DESIRED_EXPIRED = "desired_expired"
    DESIRED_OTHER_DEVICE = "desired_other_device"
    MALFORMED_DESIRED = "malformed_desired"
    # Activation and the health window.
    GOLDEN_FAILED = "golden_failed"  # the new model loads but fails its golden check
    LOAD_FAILED = "load_failed"
    HEALTH_ERRORS = "health_errors"  # error rate in the health window above the limit
    HEALTH_NONFINITE = "health_nonfinite"
    HEALTH_LATENCY = "health_latency"  # p95 latency regressed against the previous version
    CRASH_LOOP = "crash_loop"  # the agent restarted too often while the update was pending
    # Time.
    CLOCK_UNSET = "clock_unset"  # deferred, not refused: the device has no trustworthy time
    # Operator.
    OPERATOR_ROLLBACK = "operator_rollback"
    NOTHING_TO_ROLL_BACK = "nothing_to_roll_back"
