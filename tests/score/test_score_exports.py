"""The scoring core's public names are deliberate."""

from __future__ import annotations

import focuswatch.score


def test_public_names() -> None:
    assert sorted(focuswatch.score.__all__) == [
        "CRITERIA",
        "MIN_SIZE",
        "MODES",
        "PAPER_SIGMAS",
        "RESOLUTIONS",
        "ScoreResult",
        "check_options",
        "float_dtype",
        "mhfd",
        "mhfd_detail",
        "patch_grid",
        "score_image",
        "score_patches",
        "sigma_schedule",
    ]
    for name in focuswatch.score.__all__:
        assert hasattr(focuswatch.score, name)
