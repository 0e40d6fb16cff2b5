"""``python -m pixpro_of viz pairs`` writes a picture of a sample; bad input is a one-line error."""

import os

import numpy as np
from PIL import Image

from pixpro_of.__main__ import main as cli


def test_viz_pairs_writes_a_png(tmp_path, capsys):
    out = tmp_path / "pairs.png"
    rc = cli(
        [
            "viz",
            "pairs",
            "--synthetic",
            "2",
            "--size",
            "128x72",
            "--frames",
            "3",
            "--image-size",
            "64",
            "--feature-size",
            "4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] == 2 * 64 * 7 + 16
    assert "positive pairs view1->view2" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.png"]  # no temporary left behind
    # the drawing has coloured lines on top of the views, not only the two images
    top = np.asarray(img.crop((0, 0, img.size[0], 64 * 7))).reshape(-1, 3)
    assert len(np.unique(top, axis=0)) > 100


def test_viz_pairs_bad_input_is_one_line(tmp_path, capsys):
    rc = cli(["viz", "pairs", "--shards", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == f"pixpro_of viz pairs: error: --shards: no such file: {tmp_path / 'missing.h5'}"
    rc = cli(["viz", "pairs", "--synthetic", "1", "--frames", "0", "--out", str(tmp_path / "x.png")])
    assert rc == 2 and "--frames must be >= 1, got 0" in capsys.readouterr().err
    assert not os.listdir(tmp_path)
