import json

import numpy as np
import pytest
from scipy import ndimage

from refine_control.builtin import shapes
from refine_control.builtin.shapes import (
    COLOURS,
    SHAPES,
    SPLITS,
    TEXTURES,
    ShapeSpec,
    generate,
    make_sample,
    render,
    sample_specs,
    split_of,
    write_image_folder,
)
from refine_control.errors import ConfigError
from refine_control.preprocess import get_preprocessor


def test_factors_cover_the_issue():
    assert len(SHAPES) >= 5
    assert len(COLOURS) >= 6
    assert {"solid", "striped", "checkered", "dotted"} <= set(TEXTURES)


def test_captions_name_colour_texture_and_shape():
    assert ShapeSpec("circle", "red", "striped", 12, 30, 30).caption == "a red striped circle"
    assert ShapeSpec("square", "blue", "solid", 12, 30, 30).caption == "a blue square"


def test_same_seed_same_samples_other_seed_other_samples():
    first, again = generate("train", 20, seed=3), generate("train", 20, seed=3)
    for a, b in zip(first, again, strict=True):
        assert a.spec == b.spec
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.control, b.control)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert [s.spec for s in generate("train", 20, seed=4)] != [s.spec for s in first]


def test_a_longer_request_extends_a_shorter_one():
    assert sample_specs("test", 50, 0)[:10] == sample_specs("test", 10, 0)


def test_splits_never_overlap_for_any_seed():
    keys = {split: set() for split in SPLITS}
    for seed in (0, 1, 2):
        for split in SPLITS:
            specs = sample_specs(split, 400, seed)
            assert len(set(specs)) == len(specs), "a split stream repeats a sample"
            assert all(split_of(s) == split for s in specs)
            keys[split] |= {s.key() for s in specs}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not keys[a] & keys[b], f"{a} and {b} share samples"


def test_every_factor_value_appears_in_each_split():
    for split in SPLITS:
        specs = sample_specs(split, 600, 0)
        assert {s.shape for s in specs} == set(SHAPES)
        assert {s.colour for s in specs} == set(COLOURS)
        assert {s.texture for s in specs} == set(TEXTURES)


def test_render_mask_and_control_are_consistent():
    for spec in sample_specs("test", 60, 1):
        sample = make_sample(spec)
        assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
        assert sample.mask.dtype == bool and sample.mask.any() and not sample.mask.all()
        np.testing.assert_array_equal(sample.mask, np.any(sample.image != shapes.BACKGROUND, axis=-1))
        np.testing.assert_array_equal(sample.control, get_preprocessor("canny")(sample.image))
        # The whole shape lies inside the frame, so its outline is closed.
        assert not (
            sample.mask[0].any() or sample.mask[-1].any() or sample.mask[:, 0].any() or sample.mask[:, -1].any()
        )


def test_texture_is_invisible_to_canny():
    """The control carries the outline only: no edge lies more than 1.5 px from the shape's boundary."""
    for spec in sample_specs("train", 200, 5):
        if spec.texture == "solid":
            continue
        sample = make_sample(spec)
        boundary = sample.mask ^ ndimage.binary_erosion(sample.mask)
        distance = ndimage.distance_transform_edt(~boundary)
        edges = sample.control[..., 0] > 0.5
        assert edges.any()
        assert distance[edges].max() <= 1.5, spec


def test_textures_differ_inside_the_shape():
    base = ShapeSpec("square", "green", "solid", 20, 32, 32)
    solid = render(base)[0]
    for texture in TEXTURES[1:]:
        textured = render(ShapeSpec("square", "green", texture, 20, 32, 32))[0]
        changed = np.any(textured != solid, axis=-1)
        assert changed.any() and not changed.all()
        assert np.abs(textured.astype(int) - solid.astype(int)).max() == shapes.TEXTURE_CONTRAST


def test_unknown_split_or_factor_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown shapes split"):
        sample_specs("validation", 3, 0)
    with pytest.raises(ConfigError, match="unknown shape"):
        render(ShapeSpec("hexagon", "red", "solid", 12, 30, 30))


def test_write_image_folder_is_an_imagefolder(tmp_path):
    from refine_control.data.folders import read_image_folder

    out = write_image_folder(tmp_path / "train", "train", 12, seed=0)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    specs = sample_specs("train", 12, 0)
    assert [r["text"] for r in rows] == [s.caption for s in specs]
    records = read_image_folder(out)
    assert len(records) == 12 and all(r.text for r in records)
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(records[0].path)), render(specs[0])[0])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temp dir was left behind"


def test_unlabelled_folder_has_no_captions(tmp_path):
    from refine_control.data.folders import read_image_folder

    out = write_image_folder(tmp_path / "u", "unlabelled", 8, seed=0, captions=False)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert all(set(r) == {"file_name"} for r in rows)
    assert all(r.text is None for r in read_image_folder(out))
