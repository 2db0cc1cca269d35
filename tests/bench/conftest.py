"""The bench tests drive torch on the main thread, as the benchmark itself does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package", autouse=True)
def offline_hub() -> Iterator[None]:
    # transformers must never reach a hub from these tests; it reads this when first imported.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield
