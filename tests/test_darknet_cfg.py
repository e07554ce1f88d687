"""Darknet cfg files of the YOLOv3 family: the cfg dvcm writes for standard YOLOv3 has the published
``cfg/yolov3.cfg``'s sections, order and values (the facts below, in our words), parses back into exactly
today's network, keeps what only training reads, and refuses what dvcm does not build, naming the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvcm.darknet_cfg import layer_facts, parse_cfg, read_cfg, write_cfg, yolov3_cfg
from dvcm.errors import DarknetCfgError
from dvcm.yolo import YOLOv3, darknet_float_count, yolov3_layers


def test_the_written_yolov3_cfg_parses_into_todays_network() -> None:
    text = write_cfg(yolov3_cfg())
    parsed = parse_cfg(text)
    assert parsed.layers == yolov3_layers() and parsed.num_classes == 80
    assert write_cfg(parsed) == text  # a fixed point
    assert darknet_float_count(YOLOv3()) == 62_001_757


def test_the_written_cfg_has_the_published_structure() -> None:
    text = write_cfg(yolov3_cfg())
    kinds = [ln.strip("[]") for ln in text.splitlines() if ln.startswith("[")]
    # darknet's cfg/yolov3.cfg: [net], then 107 layers: 75 convolutional, 23 shortcut, 4 route, 2 upsample, 3 yolo
    assert kinds[0] == "net" and len(kinds) == 108
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "net": 1,
        "convolutional": 75,
        "shortcut": 23,
        "route": 4,
        "upsample": 2,
        "yolo": 3,
    }
    facts = layer_facts(parse_cfg(text).layers)
    assert facts[0] == ("convolutional", 32, 3, 1, "leaky", ())
    assert facts[1] == ("convolutional", 64, 3, 2, "leaky", ())  # the first downsample
    assert facts[4] == ("shortcut", None, None, None, "linear", (1,))  # from=-3
    assert facts[12] == ("convolutional", 256, 3, 2, "leaky", ())  # the split point: s has 256 channels at stride 8
    assert facts[36] == ("shortcut", None, None, None, "linear", (33,)) and facts[61][0] == "shortcut"
    # the three heads: a linear 1x1 conv of 255 filters, then [yolo] with masks 6,7,8 / 3,4,5 / 0,1,2
    for conv, yolo, mask in ((81, 82, (6, 7, 8)), (93, 94, (3, 4, 5)), (105, 106, (0, 1, 2))):
        assert facts[conv] == ("convolutional", 255, 1, 1, "linear", ()) and facts[yolo] == ("yolo",) + (None,) * 4 + (
            mask,
        )
    # the routes: back 4 layers (to 79 and 91), then the upsample with Darknet-53's stage outputs 61 and 36
    assert [(i, f[5]) for i, f in enumerate(facts) if f[0] == "route"] == [
        (83, (79,)),
        (86, (85, 61)),
        (95, (91,)),
        (98, (97, 36)),
    ]
    assert [(i, f[5]) for i, f in enumerate(facts) if f[0] == "upsample"] == [(85, (61,)), (97, (36,))]
    # values of [net] and [yolo] as published
    assert "batch=64\nsubdivisions=16\nwidth=608\nheight=608\nchannels=3\n" in text
    assert (
        "learning_rate=0.001\nburn_in=1000\nmax_batches=500200\npolicy=steps\nsteps=400000,450000\nscales=.1,.1\n"
        in text
    )
    assert "anchors = 10,13,  16,30,  33,23,  30,61,  62,45,  59,119,  116,90,  156,198,  373,326" in text
    assert "classes=80\nnum=9\njitter=.3\nignore_thresh=.7\ntruth_thresh=1\nrandom=1" in text
    assert "[route]\nlayers = -4\n" in text and "[route]\nlayers = -1, 61\n" in text and "layers = -1, 36" in text


def test_training_only_settings_are_kept(tmp_path: Path) -> None:
    text = (
        write_cfg(yolov3_cfg())
        .replace("learning_rate=0.001", "learning_rate=0.0005")
        .replace("jitter=.3", "jitter=.2", 1)
    )
    path = tmp_path / "mine.cfg"
    path.write_text(text)
    cfg = read_cfg(path)
    assert ("learning_rate", "0.0005") in cfg.net and cfg.yolo_training[0][0] == ("jitter", ".2")
    assert cfg.layers == yolov3_layers()
    assert write_cfg(cfg) == text


@pytest.mark.parametrize(
    ("old", "new", "line_of", "message"),
    [
        ("[upsample]", "[maxpool]", "[maxpool]", "is not in the YOLOv3 family"),
        ("activation=leaky", "activation=mish", "activation=mish", "activation=mish"),
        ("filters=32\n", "filters=32\ngroups=2\n", "groups=2", "groups=2 changes the network"),
        ("from=-3", "from=-30", "from=-30", "does not come before it"),
        ("classes=80", "classes=3", None, "needs filters=24"),  # every [yolo] section (see below)
        ("stride=2\n\n[route]", "stride=4\n\n[route]", None, "stride other than 2"),
        ("mask = 6,7,8", "mask = 6,7,x", "mask = 6,7,x", "is not a list of integers"),
        ("mask = 6,7,8", "mask = 6,7,12", "mask = 6,7,12", "names anchors beyond the 9 given"),
        ("num=9", "num=8", "num=8", "must count the 9 anchors"),
    ],
)
def test_what_dvcm_does_not_build_is_refused_naming_file_and_line(
    tmp_path: Path, old: str, new: str, line_of: str | None, message: str
) -> None:
    text = write_cfg(yolov3_cfg()).replace(old, new, -1 if old.startswith("classes") else 1)
    assert text != write_cfg(yolov3_cfg())
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(DarknetCfgError, match=message) as info:
        read_cfg(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    if line_of is not None:
        line = next(i for i, ln in enumerate(text.splitlines(), start=1) if line_of in ln)
        assert f"{path}:{line}:" in str(info.value)


def test_a_narrow_member_of_the_family_builds_from_its_cfg_and_refuses_other_weights(tmp_path: Path) -> None:
    import warnings

    import torch

    from dvcm.darknet_cfg import YOLOV3_NET, DarknetCfg
    from dvcm.errors import DarknetWeightsError
    from dvcm.yolo import ANCHORS, build_yolov3, save_darknet_weights

    narrow = yolov3_layers(num_classes=8, width=0.25)
    assert len(narrow) == 107 and narrow[12].filters == 64  # C_s = 256 x width
    assert [type(a) for a in narrow] == [type(b) for b in yolov3_layers()]  # the same graph
    cfg_path = tmp_path / "mini.cfg"
    cfg_path.write_text(write_cfg(DarknetCfg(narrow, 8, ANCHORS, list(YOLOV3_NET))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mini = build_yolov3(None, seed=3, cfg=cfg_path)
    assert mini.num_classes == 8 and mini.front.out_channels == 64
    assert mini.provenance["feature_channels"] == 64 and mini.provenance["cfg"] == str(cfg_path)
    x = torch.rand(1, 3, 64, 96)
    assert mini.front(x).shape == (1, 64, 8, 12)
    assert [h.shape[1] for h in mini(x)] == [39, 39, 39]  # 3 x (5 + 8)
    save_darknet_weights(mini, tmp_path / "mini.weights")
    again = build_yolov3(tmp_path / "mini.weights", cfg=cfg_path)
    assert torch.equal(again.front(x), mini.front(x))
    # standard YOLOv3's network does not take the narrow weights: both float counts are named
    n_mini = darknet_float_count(mini)
    with pytest.raises(
        DarknetWeightsError, match=f"yolov3.cfg, 80 classes\\) expects 62,001,757 floats, the file holds {n_mini:,}"
    ):
        build_yolov3(tmp_path / "mini.weights")
