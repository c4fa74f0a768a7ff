"""Fixtures shared by the content tests: a video without a soundtrack (the ml-100k store,
`ml100k_store`, is in tests/conftest.py: the service's tests read it too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def silent_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of MPEG-4 video with no audio stream (the sample videos all have one)."""
    import av

    path = tmp_path_factory.mktemp("media") / "silent.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            pixels = np.full((48, 64, 3), 10 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)
    return path
