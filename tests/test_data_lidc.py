"""LIDC: slices layout (zip and folder), pickle format, restricted unpickling, patient splits, real data."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ambiseg.data import build, safe_load
from ambiseg.errors import ConfigError, DataError

# the repository sits at <work>/main, the shared data at <work>/shared/data
REAL_ZIP = Path(
    os.environ.get("AMBISEG_LIDC", Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc-idri-slices.zip")
)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def make_slices(root: Path, *, patients: int = 5, slices: int = 2, raters: int = 4, size: int = 16) -> Path:
    """LIDC-IDRI-slices/LIDC-IDRI-000p/nodule-0/{images,mask-k}/slice-s.png under `root`; pixel
    values encode (patient, slice, rater) so tests can check what was read."""
    base = root / "LIDC-IDRI-slices"
    for p in range(patients):
        for s in range(slices):
            nodule = base / f"LIDC-IDRI-{p + 1:04d}" / "nodule-0"
            image = np.full((size, size), 10 * p + s, dtype=np.uint8)
            image[0, 0] = 255
            _png(nodule / "images" / f"slice-{s}.png", image)
            for k in range(raters):
                mask = np.zeros((size, size), dtype=np.uint8)
                mask[: k + 1, : s + 1] = 255
                _png(nodule / f"mask-{k}" / f"slice-{s}.png", mask)
    return base


def zip_tree(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as archive:
        for path in sorted(folder.rglob("*.png")):
            archive.write(path, path.relative_to(folder.parent).as_posix())
    return out


@pytest.fixture
def slices_zip(tmp_path: Path) -> Path:
    return zip_tree(make_slices(tmp_path / "src"), tmp_path / "lidc.zip")


def test_zip_and_folder_give_the_same_items(tmp_path: Path, slices_zip: Path):
    folder = tmp_path / "src"
    roots = [slices_zip, folder, folder / "LIDC-IDRI-slices"]
    single = tmp_path / "holder"
    single.mkdir()
    os.link(slices_zip, single / "lidc.zip")
    roots.append(single)  # a folder holding just the zip
    sets = [build("lidc", root=r, split="all") for r in roots]
    for ds in sets:
        assert (len(ds), ds.num_annotators, ds.in_channels, ds.image_size) == (10, 4, 1, 16)
        assert ds.ids == sets[0].ids
        for i in (0, 7):
            a, b = ds[i], sets[0][i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"])
    item = sets[0][3]  # patient 2, slice 1 (sorted patient, nodule, slice)
    assert (item["id"], item["group"]) == ("LIDC-IDRI-0002/nodule-0/slice-1", "LIDC-IDRI-0002")
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 16, 16)
    assert item["image"][0, 1, 1] == pytest.approx(11 / 255) and item["image"][0, 0, 0] == 1.0
    assert item["masks"].dtype == torch.uint8 and item["masks"].shape == (4, 16, 16)
    assert item["masks"].sum(dim=(1, 2)).tolist() == [2, 4, 6, 8]  # rater k marks (k + 1) x 2 pixels


def test_slice_order_is_natural_and_rater_count_is_free(tmp_path: Path):
    make_slices(tmp_path, patients=3, slices=11, raters=3)
    ds = build("lidc", root=tmp_path, split="all")
    assert ds.num_annotators == 3 and ds[0]["masks"].shape[0] == 3
    assert ds.ids[:3] == [f"LIDC-IDRI-0001/nodule-0/slice-{s}" for s in (0, 1, 2)] and ds.ids[10].endswith("slice-10")


def test_unequal_rater_counts_need_num_annotators(tmp_path: Path):
    make_slices(tmp_path, patients=3, raters=3)
    make_slices(tmp_path / "more", patients=0)
    extra = tmp_path / "LIDC-IDRI-slices" / "LIDC-IDRI-0009" / "nodule-0"
    _png(extra / "images" / "slice-0.png", np.zeros((16, 16)))
    for k in range(2):
        _png(extra / f"mask-{k}" / "slice-0.png", np.zeros((16, 16)))
    with pytest.raises(DataError, match="num_annotators"):
        build("lidc", root=tmp_path, split="all")
    two = build("lidc", root=tmp_path, split="all", num_annotators=2)
    assert len(two) == 7 and two[0]["masks"].shape[0] == 2
    assert len(build("lidc", root=tmp_path, split="all", num_annotators=3)) == 6


def test_patient_splits_are_disjoint_seeded_and_cover_everything(tmp_path: Path):
    make_slices(tmp_path, patients=10, slices=3)
    parts = {s: build("lidc", root=tmp_path, split=s) for s in ("train", "val", "test")}
    groups = {s: set(ds.groups) for s, ds in parts.items()}
    assert [len(g) for g in groups.values()] == [6, 2, 2]
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    assert sum(len(ds) for ds in parts.values()) == 30 == len(build("lidc", root=tmp_path, split="all"))
    assert set(build("lidc", root=tmp_path, split="test").groups) == groups["test"]  # deterministic
    others = [set(build("lidc", root=tmp_path, split="test", seed=s).groups) for s in range(1, 6)]
    assert any(g != groups["test"] for g in others)
    half = build("lidc", root=tmp_path, split="train", fractions=(0.5, 0.3, 0.2))
    assert len(set(half.groups)) == 5
    sub = build("lidc", root=tmp_path, split="train", limit=4)
    assert len(sub) == 4 and set(sub.ids) <= set(parts["train"].ids)
    assert sub.ids == build("lidc", root=tmp_path, split="train", limit=4).ids


def test_the_zip_opens_lazily_and_works_in_worker_processes(slices_zip: Path):
    ds = build("lidc", root=slices_zip, split="all")
    state = pickle.loads(pickle.dumps(ds))
    assert state.source.store._zip is None
    assert torch.equal(state[5]["masks"], ds[5]["masks"])
    batches = list(DataLoader(ds, batch_size=5, num_workers=2))
    assert torch.equal(torch.cat([b["image"] for b in batches]), torch.stack([ds[i]["image"] for i in range(len(ds))]))


def test_layout_errors_name_the_file(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        build("lidc", root=tmp_path / "nowhere")
    not_data = tmp_path / "notes.zip"
    with zipfile.ZipFile(not_data, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(DataError, match="holds no LIDC slices"):
        build("lidc", root=not_data)
    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    with pytest.raises(DataError, match="not a zip file"):
        build("lidc", root=fake)

    base = make_slices(tmp_path / "missing", patients=3)
    (base / "LIDC-IDRI-0002" / "nodule-0" / "mask-3" / "slice-1.png").unlink()
    with pytest.raises(DataError, match="LIDC-IDRI-0002/nodule-0/mask-3/slice-1.png is missing"):
        build("lidc", root=base, split="all")

    base = make_slices(tmp_path / "orphan", patients=3)
    (base / "LIDC-IDRI-0001" / "nodule-0" / "images" / "slice-0.png").unlink()
    with pytest.raises(DataError, match="has no image"):
        build("lidc", root=base, split="all")

    with pytest.raises(DataError, match="split 'test' is empty"):
        build("lidc", root=make_slices(tmp_path / "two", patients=2), split="test")


def test_bad_pixels_are_caught_when_read(tmp_path: Path):
    base = make_slices(tmp_path / "grey", patients=3)
    _png(base / "LIDC-IDRI-0003" / "nodule-0" / "mask-1" / "slice-0.png", np.full((16, 16), 128))
    ds = build("lidc", root=base, split="all")
    ds[0]  # other slices are fine
    with pytest.raises(DataError, match=r"mask-1/slice-0.png: mask is not binary \(values 128\)"):
        ds.verify()

    base = make_slices(tmp_path / "sizes", patients=3)
    nodule = base / "LIDC-IDRI-0003" / "nodule-0"
    _png(nodule / "images" / "slice-1.png", np.zeros((20, 20)))
    with pytest.raises(DataError, match=r"images/slice-1.png: image has shape \(20, 20\) but \(16, 16\)"):
        build("lidc", root=base, split="all").verify()

    base = make_slices(tmp_path / "shape", patients=3)
    _png(base / "LIDC-IDRI-0001" / "nodule-0" / "mask-0" / "slice-1.png", np.zeros((16, 12)))
    with pytest.raises(DataError, match=r"mask-0/slice-1.png: mask has shape \(16, 12\)"):
        build("lidc", root=base, split="all")[1]


# ---- pickle format -------------------------------------------------------------------------


def _entries(patients: int = 5, per: int = 2, annotators: int = 4, size: int = 8) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for p in range(patients):
        for s in range(per):
            masks = [(rng.random((size, size)) > 0.5).astype(np.float32) for _ in range(annotators)]
            out[f"p{p}_s{s}"] = {
                "image": rng.random((size, size)).astype(np.float32),
                "masks": masks,
                "series_uid": f"1.2.{p}",
                "pixel_spacing": np.float64(0.7),
            }
    return out


def _dump(obj: object, path: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def test_pickle_format_groups_by_series_and_keeps_values(tmp_path: Path):
    entries = _entries()
    first = dict(list(entries.items())[:6])
    _dump(first, tmp_path / "a.pickle", protocol=2)
    _dump({k: v for k, v in entries.items() if k not in first}, tmp_path / "b.pkl", protocol=5)
    ds = build("lidc", root=tmp_path, split="all")
    assert (len(ds), ds.num_annotators, ds.image_size) == (10, 4, 8)
    index = ds.ids.index("p3_s1")
    item = ds[index]
    assert item["group"] == "1.2.3"
    assert np.array_equal(item["image"][0].numpy(), entries["p3_s1"]["image"])
    assert np.array_equal(item["masks"].numpy(), np.stack(entries["p3_s1"]["masks"]).astype(np.uint8))
    item["image"].fill_(0)  # items are copies
    assert ds[index]["image"].sum() > 0
    train, test = (set(build("lidc", root=tmp_path, split=s).groups) for s in ("train", "test"))
    assert len(train) == 3 and len(test) == 1 and not train & test
    single = build("lidc", root=tmp_path / "a.pickle", split="all")
    assert len(single) == 6


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda e: e["p0_s0"].pop("series_uid"), r"\['p0_s0'\]: missing key\(s\) series_uid"),
        (
            lambda e: e["p1_s0"].update(image=np.full((8, 8), np.nan, np.float32)),
            r"\['p1_s0'\]\['image'\]: image contains NaN",
        ),
        (lambda e: e["p1_s1"].update(image=np.full((8, 8), 3.0, np.float32)), r"values in \[3, 3\]; expected \[0, 1\]"),
        (
            lambda e: e["p2_s0"]["masks"].__setitem__(2, np.zeros((8, 9))),
            r"\['p2_s0'\]\['masks'\]\[2\]: mask has shape \(8, 9\)",
        ),
        (lambda e: e["p2_s1"]["masks"].__setitem__(0, np.full((8, 8), 0.5)), r"\['masks'\]\[0\]: mask is not binary"),
        (
            lambda e: e["p3_s0"].update(image=np.zeros((10, 10), np.float32), masks=[np.zeros((10, 10))] * 4),
            r"\['p3_s0'\]: image has shape \(10, 10\) but \(8, 8\)",
        ),
        (lambda e: e.update(p4_s0=[1, 2]), r"\['p4_s0'\]: entry is a list"),
    ],
)
def test_pickle_content_errors(tmp_path: Path, change, match):
    entries = _entries()
    change(entries)
    _dump(entries, tmp_path / "bad.pickle")
    with pytest.raises(DataError, match=match):
        build("lidc", root=tmp_path, split="all")


def test_pickle_structure_errors(tmp_path: Path):
    _dump([1, 2, 3], tmp_path / "list.pickle")
    with pytest.raises(DataError, match="holds a list; expected a dict"):
        build("lidc", root=tmp_path / "list.pickle")
    entries = _entries()
    (tmp_path / "x").mkdir()
    _dump(entries, tmp_path / "x" / "a.pickle")
    _dump({"p0_s0": entries["p0_s0"]}, tmp_path / "x" / "b.pickle")
    with pytest.raises(DataError, match="slice name also used in"):
        build("lidc", root=tmp_path / "x", split="all")
    _dump({}, tmp_path / "empty.pickle")
    with pytest.raises(DataError, match="empty.pickle: no items; the pickle dict is empty"):
        build("lidc", root=tmp_path / "empty.pickle")
    (tmp_path / "trunc.pickle").write_bytes(pickle.dumps(entries)[:50])
    with pytest.raises(DataError, match="not a readable pickle"):
        build("lidc", root=tmp_path / "trunc.pickle")


class _Shell:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class _Opener:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return open, (str(self.target), "w")


@pytest.mark.parametrize(
    "payload, global_name", [(_Shell, f"{os.system.__module__}.system"), (_Opener, f"{open.__module__}.open")]
)
def test_unsafe_pickles_are_refused_and_run_nothing(tmp_path: Path, payload, global_name):
    target = tmp_path / "pwned"
    entries = _entries(patients=1, per=1)
    entries["p0_s0"]["extra"] = payload(target)
    path = _dump(entries, tmp_path / "evil.pickle")
    refused = re.escape(f"{path}: pickle asks for the global '{global_name}', which is refused")
    with pytest.raises(DataError, match=refused):
        build("lidc", root=path)
    with pytest.raises(DataError):
        safe_load(path)
    assert not target.exists()


def test_safe_load_reads_numpy_and_containers_at_every_protocol(tmp_path: Path):
    value = {
        "a": np.arange(6, dtype=np.int16).reshape(2, 3),
        "b": [np.float32(1.5), (1, "x")],
        "c": {1, 2},
        "d": frozenset({3}),
        "e": np.array([True, False]),
        "f": bytearray(b"ab"),
        "g": np.array(["u", "v"]),
    }
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        loaded = safe_load(_dump(value, tmp_path / f"p{protocol}.pickle", protocol=protocol))
        assert loaded.keys() == value.keys() and loaded["c"] == {1, 2} and loaded["f"] == b"ab"
        assert np.array_equal(loaded["a"], value["a"]) and loaded["a"].dtype == np.int16
        assert loaded["b"][0] == np.float32(1.5) and loaded["b"][1] == (1, "x")
        assert np.array_equal(loaded["e"], value["e"]) and np.array_equal(loaded["g"], value["g"])


# ---- the real data set, when present ---------------------------------------------------------


@pytest.mark.skipif(not REAL_ZIP.is_file(), reason=f"real LIDC zip not found at {REAL_ZIP} (set AMBISEG_LIDC)")
def test_real_lidc_zip():
    parts = {s: build("lidc", root=REAL_ZIP, split=s) for s in ("train", "val", "test")}  # ~1 s each: index only
    groups = [set(ds.groups) for ds in parts.values()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(len(ds) for ds in parts.values()) == 12467 and sum(map(len, groups)) == 711
    train = parts["train"]
    assert (train.num_annotators, train.in_channels, train.image_size) == (4, 1, 128)
    empty_raters = disagreements = 0
    for i in range(0, len(train), 150):  # 52 slices: decoding is lazy and cheap
        item = train[i]
        assert item["image"].shape == (1, 128, 128) and item["masks"].shape == (4, 128, 128)
        assert item["image"].dtype == torch.float32 and item["masks"].dtype == torch.uint8
        assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
        assert item["image"].std() > 0.05 and set(item["masks"].unique().tolist()) <= {0, 1}
        assert item["group"] == item["id"].split("/")[0] and item["group"].startswith("LIDC-IDRI-")
        empty_raters += int((item["masks"].sum(dim=(1, 2)) == 0).any())
        disagreements += int(not all(torch.equal(item["masks"][0], m) for m in item["masks"]))
    assert empty_raters > 0 and disagreements > 25  # raters disagree on most slices, some see nothing


def test_centre_crop_keeps_the_middle_and_refuses_bad_sizes(slices_zip: Path):
    whole = build("lidc", root=slices_zip, split="all")
    crop = build("lidc", root=slices_zip, split="all", crop="8")  # a CLI string, typed
    assert crop.image_shape == (8, 8) and crop.image_size == 8
    item, full = crop[3], whole[3]
    assert item["image"].shape == (1, 8, 8) and item["masks"].shape == (4, 8, 8)
    assert torch.equal(item["image"], full["image"][:, 4:12, 4:12])
    assert torch.equal(item["masks"], full["masks"][:, 4:12, 4:12])
    for bad in (0, 17):
        with pytest.raises(ConfigError, match="crop must be between 1 and 16"):
            build("lidc", root=slices_zip, split="all", crop=bad)
