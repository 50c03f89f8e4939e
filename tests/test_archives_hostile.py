"""Hostile model archives and folders: every one refused with a clear error, nothing left.

Each case is installed the way a user would (``store.install(..., trust=True)``: trust is
about the pickled checkpoints, not the archive, so a trusted archive is still checked),
and must raise a :class:`ModelNotInstalledError` naming the archive and the problem,
never a raw zipfile/json/Recursion error, and leave the store exactly as it was.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from napari_spineseg import catalog
from napari_spineseg.errors import ModelNotInstalledError, TaskError
from napari_spineseg.models import archives, model_json, store

PREFIX = "Dataset1_x/nnUNetTrainer__nnUNetPlans__3d_fullres"
DATASET = {"channel_names": {"0": "T2w"}, "labels": {"background": 0, "sc": 1}}
PLANS = {"configurations": {"3d_fullres": {"patch_size": [8, 32, 32], "spacing": [2.0, 1.0, 1.0]}}}


def checkpoint_bytes() -> bytes:
    """A torch-style checkpoint (a zip with data.pkl); the store never unpickles it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("checkpoint_final/data.pkl", b"never unpickled by the store")
    return buf.getvalue()


def model_zip(path: Path, *, dataset=None, plans=None, extra=(), raw_dataset=None) -> Path:
    """An nnU-Net release zip; ``extra``: (name, bytes) members added after the model."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        ds = raw_dataset if raw_dataset is not None else json.dumps(dataset or DATASET)
        zf.writestr(f"{PREFIX}/dataset.json", ds)
        zf.writestr(f"{PREFIX}/plans.json", json.dumps(plans or PLANS))
        zf.writestr(f"{PREFIX}/fold_0/checkpoint_final.pth", checkpoint_bytes())
        for name, data in extra:
            zf.writestr(name, data)
    return path


def patch_member(path: Path, name: str, *, flags=None, method=None, size=None) -> Path:
    """Rewrite a member's header fields in place (local header and central directory)."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for sig, flag_at, method_at, size_at, name_at in (
        (b"PK\x03\x04", 6, 8, 22, 30),
        (b"PK\x01\x02", 8, 10, 24, 46),
    ):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            start = i + 4
            if data[i + name_at : i + name_at + len(encoded)] != encoded:
                continue
            if flags is not None:
                struct.pack_into("<H", data, i + flag_at, flags)
            if method is not None:
                struct.pack_into("<H", data, i + method_at, method)
            if size is not None:
                struct.pack_into("<I", data, i + size_at, size)
    path.write_bytes(bytes(data))
    return path


def store_is_clean(models: Path) -> bool:
    """Nothing installed and no temporary folder left in the store."""
    return not models.exists() or not any(models.iterdir())


def refused(models: Path, archive: Path, match: str) -> ModelNotInstalledError:
    with pytest.raises(ModelNotInstalledError, match=match) as err:
        store.install("lesion_sci_t2", archive, trust=True, log=None)
    assert str(archive) in str(err.value)
    assert store_is_clean(models), list(models.iterdir())
    return err.value


# ----------------------------------------------------------------------------- members


def test_encrypted_members_are_refused(models, tmp_path):
    src = tmp_path / "src"
    (src / PREFIX / "fold_0").mkdir(parents=True)
    (src / PREFIX / "dataset.json").write_text(json.dumps(DATASET))
    (src / PREFIX / "plans.json").write_text(json.dumps(PLANS))
    (src / PREFIX / "fold_0" / "checkpoint_final.pth").write_bytes(checkpoint_bytes())
    real = tmp_path / "zipcrypto.zip"  # a real password-protected zip (Info-ZIP)
    subprocess.run(["zip", "-q", "-r", "-e", "-P", "pw", str(real), "."], cwd=src, check=True)
    refused(models, real, r"is encrypted \(password-protected\).*no password")
    aes = patch_member(model_zip(tmp_path / "aes.zip"), f"{PREFIX}/plans.json", method=99)
    refused(models, aes, "plans.json' is encrypted")


@pytest.mark.parametrize(("method", "name"), [(98, "PPMd"), (9, "Deflate64"), (93, "Zstandard")])
def test_unreadable_compression_is_refused(models, tmp_path, method, name):
    z = patch_member(model_zip(tmp_path / "m.zip"), f"{PREFIX}/plans.json", method=method)
    refused(models, z, f"uses {name} compression \\(method {method}\\).*standard \\(Deflate\\)")


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([(f"{PREFIX}/fold_0", b"a file where a folder is")], "both a file and a folder"),
        ([(f"{PREFIX}/plans.json/x", b"")], "both a file and a folder"),
        ([(f"{PREFIX}/dataset.json", b"{}")], "appears twice"),
        ([(".", b"x")], r"member '\.' has no file name"),
        ([("./", b"")], r"member '\./' has no file name"),
        ([("../evil.txt", b"x")], "contains '..'"),
        ([("/abs/evil.txt", b"x")], "absolute path"),
        ([("C:evil.txt", b"x")], "absolute path"),
        ([("a\\..\\..\\evil.txt", b"x")], "contains '..'"),
        ([("d" * 300 + "/x", b"x")], "'d{300}/x' cannot be extracted .*File name too long"),
        ([("f" * 300, b"x")], "'f{300}' cannot be extracted .*File name too long"),
    ],
)
def test_bad_member_names_are_refused(models, tmp_path, members, match):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        z = model_zip(tmp_path / "m.zip", extra=members)
    refused(models, z, match if "cannot" in match else f"refused to extract: .*{match}")
    assert not (tmp_path / "evil.txt").exists()


def test_too_many_members_are_refused(models, tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "MAX_MEMBERS", 10)
    z = model_zip(tmp_path / "m.zip", extra=[(f"f{i}", b"") for i in range(10)])
    refused(models, z, "13 members")


def test_not_a_zip_and_not_a_regular_file(models, tmp_path):
    html = tmp_path / "m.zip"
    html.write_text("<html>404</html>")
    refused(models, html, "not a valid zip archive")
    with pytest.raises(ModelNotInstalledError, match="not a regular file or folder"):
        store.install("lesion_sci_t2", "/dev/zero", trust=True, log=None)  # would never end
    fifo_dir = tmp_path / "releases"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "model_SCIsegV2_r20240729.zip")  # reading it would block forever
    with pytest.raises(ModelNotInstalledError, match="contains neither a model folder nor"):
        store.install("lesion_sci_t2", fifo_dir, trust=True, log=None)
    lab = tmp_path / "lab"
    shutil.copytree(Path(__file__).parent / "data" / "models" / "custom_2d", lab)
    os.mkfifo(lab / "nnUNetTrainer__nnUNetPlans__2d" / "fifo")
    with pytest.raises(ModelNotInstalledError, match="fifo is not a regular file"):
        store.install("lesion_sci_t2", lab, trust=True, log=None)
    dataset = lab / "nnUNetTrainer__nnUNetPlans__2d" / "dataset.json"
    dataset.unlink()
    os.mkfifo(dataset)  # used in place: reading it would wait for a writer forever
    with pytest.raises(ModelNotInstalledError, match="dataset.json is not a regular file"):
        store.prepare_custom(lab, trust=True)
    assert store_is_clean(models)


# ----------------------------------------------------------------------------- zip bombs


def bomb(path: Path, mb: int) -> Path:
    """A real zip bomb: ``mb`` MB of zeros deflated ~1000:1 (streamed, little memory)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{PREFIX}/dataset.json", json.dumps(DATASET))
        zf.writestr(f"{PREFIX}/plans.json", json.dumps(PLANS))
        zf.writestr(f"{PREFIX}/fold_0/checkpoint_final.pth", checkpoint_bytes())
        with zf.open(f"{PREFIX}/fold_0/zeros.bin", "w") as f:
            block = bytes(1 << 20)
            for _ in range(mb):
                f.write(block)
    return path


def test_zip_bomb_is_refused_before_writing_even_when_trusted(models, tmp_path):
    z = bomb(tmp_path / "bomb.zip", 300)
    err = refused(
        models, z, r"0\.3 MB expand to 314\.6 MB \(1,0\d\d:1; real models compress less than 200:1"
    )
    assert "zip bomb" in str(err)


def test_total_size_and_free_space_are_bounded(models, tmp_path, monkeypatch):
    z = model_zip(tmp_path / "m.zip")
    monkeypatch.setattr(archives, "MAX_TOTAL_BYTES", 100)
    refused(models, z, r"expands to 0\.0 MB, more than the 0\.0 MB any model needs \(a zip bomb")
    monkeypatch.setattr(archives, "MAX_TOTAL_BYTES", 20 * 10**9)
    monkeypatch.setattr(archives, "_free_bytes", lambda folder: 100 << 20)
    refused(models, z, r"needs 0\.0 MB but only 104\.9 MB is free .*SPINESEG_MODELS_DIR")
    with zipfile.ZipFile(z) as zf:
        zf.extractall(tmp_path / "lab")
    with pytest.raises(ModelNotInstalledError, match=r"lab: needs 0\.0 MB but only 104\.9 MB"):
        store.install("lesion_sci_t2", tmp_path / "lab", trust=True, log=None)
    assert store_is_clean(models)


def test_headers_are_not_trusted_for_sizes(models, tmp_path, monkeypatch):
    # a member whose headers declare 100 bytes but whose data inflates to 5 MB
    z = bomb(tmp_path / "liar.zip", 5)
    patch_member(z, f"{PREFIX}/fold_0/zeros.bin", size=100)
    refused(models, z, r"zeros\.bin' is corrupt \(BadZipFile: Bad CRC-32")

    # a reader that yields more than declared (zipfile truncates today; keep a guard)
    z = model_zip(tmp_path / "m.zip")
    real_open = zipfile.ZipFile.open

    def generous_open(self, info, mode="r", *args, **kwargs):
        if mode == "r" and getattr(info, "filename", "").endswith("plans.json"):
            return io.BytesIO(b" " * (info.file_size + 1))
        return real_open(self, info, mode, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", generous_open)
    refused(models, z, "expands beyond the 91 bytes its header declares")


def test_failed_extraction_removes_what_it_wrote(tmp_path):
    z = bomb(tmp_path / "liar.zip", 2)
    patch_member(z, f"{PREFIX}/fold_0/zeros.bin", size=10)  # fails after 3 members
    target = tmp_path / "out"
    with pytest.raises(ModelNotInstalledError, match="is corrupt"):
        archives.safe_extract(z, target)
    assert not target.exists()
    # the message ends with the fix, and names the member
    with pytest.raises(ModelNotInstalledError) as err:
        archives.safe_extract(z, target)
    assert repr(f"{PREFIX}/fold_0/zeros.bin") in str(err.value)
    assert str(err.value).endswith("; download the archive again (nothing was installed)")


# ----------------------------------------------------------------------------- dataset.json

DEEP = "[" * 10_000 + "]" * 10_000
BAD_DATASETS = [
    ("not json {", "is not valid JSON"),
    ('{"labels": {"sc": 1}'.encode("utf-16"), r"is not UTF-8 text \(byte 0xff at offset 0\)"),
    ('{"labels": {"caf\xe9": 1}}'.encode("latin-1"), r"is not UTF-8 text \(byte 0xe9"),
    ('{"x": ' + DEEP + "}", "is nested deeper than 64 levels"),
    ('{"x": ' + "[" * 70 + "]" * 70 + "}", "is nested deeper than 64 levels"),
    ("[1, 2, 3]", "holds a JSON list at the top level, expected an object"),
    ('"labels"', "holds a JSON str at the top level"),
    ('{"labels": ' + "9" * 5000 + "}", "is not valid JSON .*digits"),
    ('{"labels": {"background": "0", "sc": "1"}}', "label 'background' the value \"0\""),
    ('{"labels": {"0": "background", "1": "sc"}}', r"nnU-Net v1 table"),
    ('{"labels": {"background": 0, "sc": null}}', "label 'sc' the value null"),
    ('{"labels": {"background": 0, "sc": true}}', "label 'sc' the value true"),
    ('{"labels": {"background": 0, "sc": 1.5}}', "label 'sc' the value 1.5"),
    ('{"labels": {"background": 0, "sc": -1}}', "label 'sc' the value -1"),
    ('{"labels": {"background": 0, "sc": 70000}}', "label 'sc' the value 70000"),
    ('{"labels": {"background": 0, "sc": []}}', r"label 'sc' the value \[\]"),
    ('{"labels": {"background": 0, "sc": [1, "x"]}}', r"label 'sc' the value \[1, \"x\"\]"),
    (
        '{"labels": {"background": 0, "../../evil": 1}}',
        "label name '../../evil' that cannot be part of a file",
    ),
    ('{"labels": null}', "has no 'labels' table"),
    ('{"labels": ["sc"]}', "has no 'labels' table"),
    ('{"labels": {}}', "has no 'labels' table"),
    ('{"labels": {"sc": 1}, "regions_class_order": "1"}', 'regions_class_order "1"'),
    ('{"labels": {"sc": 1}, "channel_names": ["T2w"]}', r"channel_names \[\"T2w\"\]"),
]


@pytest.mark.parametrize(("raw", "match"), BAD_DATASETS)
def test_bad_dataset_json_in_an_archive(models, tmp_path, raw, match):
    z = model_zip(tmp_path / "m.zip", raw_dataset=raw)
    # installing it (trusted): refused by the layout check, nothing installed
    refused(models, z, f"dataset.json.* {match}")
    # naming its classes (what `spineseg install NAME --from ZIP --trust` does first)
    with pytest.raises(ModelNotInstalledError, match=f"m.zip: {PREFIX}/dataset.json.* {match}"):
        catalog.custom_task(z)


@pytest.mark.parametrize(("raw", "match"), BAD_DATASETS[:6])
def test_bad_dataset_json_in_a_folder(models, tmp_path, raw, match):
    z = model_zip(tmp_path / "m.zip", raw_dataset=raw)
    with zipfile.ZipFile(z) as zf:
        zf.extractall(tmp_path / "lab")
    where = f"{tmp_path / 'lab'}: {PREFIX}/dataset.json"
    with pytest.raises(ModelNotInstalledError, match=f"{where} {match}"):
        store.prepare_custom(tmp_path / "lab", trust=True)
    with pytest.raises(ModelNotInstalledError, match=f"dataset.json {match}"):
        store.install("lesion_sci_t2", tmp_path / "lab", trust=True, log=None)
    assert store_is_clean(models)


def test_huge_dataset_json_is_never_read_whole(models, tmp_path):
    """A 1.6 MB zip declaring a 3 GB dataset.json used to cost 3.1 GB of memory."""
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(f"{PREFIX}/dataset.json", "w") as f:
            f.write(b'{"labels": {"sc": 1}, "pad": "')
            for _ in range(40):
                f.write(b" " * (1 << 20))
            f.write(b'"}')
        zf.writestr(f"{PREFIX}/plans.json", json.dumps(PLANS))
    with pytest.raises(
        ModelNotInstalledError, match=r"dataset.json is 41,943,07\d bytes, more than the 8 MB"
    ):
        catalog.custom_task(big)
    # the header lies (says 100 bytes): still at most the cap is read, CRC fails
    patch_member(big, f"{PREFIX}/dataset.json", size=100)
    tracemalloc.start()
    try:
        with pytest.raises(
            ModelNotInstalledError, match=r"cannot be read from the archive \(Bad CRC"
        ):
            catalog.custom_task(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20  # bytes: small reads, no 8 MB buffer
    # a folder's dataset.json is read with the same cap
    folder = tmp_path / "lab" / PREFIX
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(PLANS))
    with open(folder / "dataset.json", "wb") as f:
        f.truncate(3 * 10**9)  # sparse: 3 GB apparent size, nothing on disk
    tracemalloc.start()
    try:
        with pytest.raises(
            ModelNotInstalledError, match="dataset.json is 3,000,000,000 bytes, more than the 8 MB"
        ):
            catalog.custom_task(tmp_path / "lab")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # refused from its size, nothing read


# ----------------------------------------------------------------------------- plans.json

BAD_PLANS = [
    (
        {"patch_size": [4096, 4096, 4096]},
        r"patch_size \[4096, 4096, 4096\] \(68,719,476,736 voxels",
    ),
    ({"patch_size": [-8, 32, 32]}, r"patch_size \[-8, 32, 32\] .* is outside"),
    ({"patch_size": [0, 32, 32]}, r"patch_size \[0, 32, 32\]"),
    ({"patch_size": ["8", 32, 32]}, r"patch_size \[\"8\", 32, 32\] is not 2 or 3 integers"),
    ({"patch_size": [8, 32, 32, 4]}, "is not 2 or 3 integers"),
    ({"spacing": [0, 1.0, 1.0]}, r"spacing \[0, 1.0, 1.0\] has 0 mm, outside 0.001..100 mm"),
    ({"spacing": [1e-9, 1.0, 1.0]}, r"has 1e-09 mm, outside"),
    ({"spacing": [1e9, 1.0, 1.0]}, r"has 1000000000.0 mm, outside"),
    ({"spacing": [float("nan"), 1.0, 1.0]}, r"has nan mm, outside"),
    ({"spacing": ["fine", 1.0, 1.0]}, "is not a list of numbers"),
    ({"spacing": [1.0, 1.0]}, "has 2 values for a 3D patch_size"),
    (
        {"architecture": {"arch_kwargs": {"features_per_stage": [32, 10**6]}}},
        r"features_per_stage \[32, 1000000\] is outside 1..2048",
    ),
    ({"architecture": {"arch_kwargs": {"n_stages": 1000}}}, "n_stages 1000 is outside"),
    (
        {"architecture": {"arch_kwargs": {"n_conv_per_stage": [2, 1000]}}},
        r"n_conv_per_stage \[2, 1000\] is outside 1..16",
    ),
    ({"architecture": {"arch_kwargs": {"strides": [[1, 1, 1], [64, 2, 2]]}}}, "strides .* 1..16"),
    ({"architecture": {"arch_kwargs": {"kernel_sizes": "3"}}}, 'kernel_sizes "3" is not'),
    ({"UNet_base_num_features": 100000}, "UNet_base_num_features 100000 is outside"),
    ({"inherits_from": ["2d"]}, r"inherits_from \[\"2d\"\] is not a configuration name"),
    ({"inherits_from": "3d_fullres"}, r"inherits_from forms a loop \(3d_fullres -> 3d_fullres\)"),
]


@pytest.mark.parametrize(("change", "match"), BAD_PLANS)
def test_absurd_plans_are_refused_at_install(models, tmp_path, change, match):
    plans = {"configurations": {"3d_fullres": {**PLANS["configurations"]["3d_fullres"], **change}}}
    z = model_zip(tmp_path / "m.zip", plans=plans)
    refused(models, z, f"plans.json configuration '3d_fullres':? .*{match}")


def test_plans_tables_are_checked(tmp_path):
    assert model_json.plans_problems({}) == ["has no 'configurations' table"]
    bad = {**PLANS, "transpose_forward": [0, 0, 1]}
    assert model_json.plans_problems(bad) == [
        "transpose_forward [0, 0, 1] is not a permutation of [0, 1, 2]"
    ]
    cascade = {
        "configurations": {
            **PLANS["configurations"],
            "3d_cascade": {"inherits_from": "3d_lowres"},  # a parent that does not exist
        }
    }
    assert model_json.plans_problems(cascade) == [
        "configuration '3d_cascade' inherits from '3d_lowres', which is not a configuration"
    ]
    ok = {"configurations": {**PLANS["configurations"], "child": {"inherits_from": "3d_fullres"}}}
    assert model_json.plans_problems(ok) == []


def test_real_plans_pass(tmp_path):
    """The shipped test and demo models (real nnU-Net plans) are accepted as they are."""
    here = Path(__file__).parent / "data" / "models"
    folders = [here / "custom_2d" / "nnUNetTrainer__nnUNetPlans__2d"]
    folders += list((Path(store.__file__).parents[1] / "_demo_model").glob("*"))
    for name in ("sci_lesion", "rootlets", "mouse_gm_wm", "totalspineseg"):
        for z in (here / name).glob("*.zip"):
            archives.safe_extract(z, tmp_path / z.stem)
            folders += archives.find_nnunet_folders(tmp_path / z.stem)
    folders = [f for f in folders if (f / "plans.json").is_file()]
    assert len(folders) >= 6
    for f in folders:
        assert model_json.nnunet_folder_problems(f) == [], f


# ----------------------------------------------------------------------------- names


def test_custom_model_names_stay_inside_the_store(models, tmp_path):
    z = model_zip(tmp_path / "m.zip")
    for name in ("../escaped", ".hidden", "a/b", ""):
        with pytest.raises(TaskError, match="cannot name a model"):
            store.custom_install_spec(name, z, trust=True)
    assert not (tmp_path / "escaped").exists() and store_is_clean(models)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"patch_size": [4096, 4096]}, r"patch_size \[4096, 4096\] \(16,777,216 voxels"),
        ({"patch_size": [-48, 48]}, r"patch_size \[-48, 48\]"),
        ({"spacing": [0, 0.8]}, r"spacing \[0, 0.8\] has 0 mm"),
        ({"spacing": [1e-9, 0.8]}, r"spacing \[1e-09, 0.8\] has 1e-09 mm"),
        ({"spacing": [None, 0.8]}, r"spacing \[null, 0.8\] is not a list of numbers"),
    ],
)
def test_engine_refuses_absurd_plans_before_loading_anything(tmp_path, monkeypatch, change, match):
    """The engine checks plans.json before a checkpoint is read or a network is built."""
    from napari_spineseg.engines import nnunet

    here = (
        Path(__file__).parent / "data" / "models" / "custom_2d" / "nnUNetTrainer__nnUNetPlans__2d"
    )
    folder = tmp_path / here.name
    shutil.copytree(here, folder)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["2d"].update(change)
    (folder / "plans.json").write_text(json.dumps(plans))

    def no_loading(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded before plans.json was checked")

    monkeypatch.setattr(nnunet, "_load_checkpoint", no_loading)
    with pytest.raises(ModelNotInstalledError, match=f"plans.json configuration '2d': {match}"):
        nnunet.NnunetModel.load(folder, device="cpu")


# ----------------------------------------------------------------------------- layouts


def test_checkpoint_check_names_each_problem_without_unpickling(tmp_path):
    ck = tmp_path / "checkpoint_final.pth"
    assert archives.check_checkpoint(ck) == "is missing or empty"
    ck.write_bytes(b"")
    assert archives.check_checkpoint(ck) == "is missing or empty"
    ck.write_bytes(b"<")  # one byte (an HTML error page's first): not empty, not a zip
    assert archives.check_checkpoint(ck) == (
        "is not a torch checkpoint (not a zip: truncated or corrupt download?)"
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("checkpoint_final/other.bin", b"x")
    ck.write_bytes(buf.getvalue())
    assert archives.check_checkpoint(ck) == "has no data.pkl record (not a torch checkpoint)"
    ck.write_bytes(checkpoint_bytes())
    assert archives.check_checkpoint(ck) is None


def test_onnx_check_needs_the_model_and_its_json(tmp_path):
    onnx = tmp_path / "model.onnx"
    assert archives.check_onnx(onnx) == "is missing or empty"
    onnx.write_bytes(b"")
    assert archives.check_onnx(onnx) == "is missing or empty"
    onnx.write_bytes(b"\x08")  # one byte: not empty
    json_path = tmp_path / "model.json"
    assert archives.check_onnx(onnx) == (
        f"has no readable model.json ({json_path} cannot be read (No such file or directory))"
    )
    json_path.write_text('{"a": 1}')
    assert archives.check_onnx(onnx) is None


def _nnunet_folder(root: Path, name: str, checkpoint: bytes) -> Path:
    folder = root / name / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(DATASET))
    (folder / "plans.json").write_text(json.dumps(PLANS))
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(checkpoint)
    return folder


def test_layout_problems_name_the_file_and_count_the_folders(tmp_path):
    root = tmp_path / "model"
    assert archives.layout_problems(root, "ivadomed_onnx") == [
        "no ivadomed model (<name>.onnx next to <name>.json) found"
    ]
    (root / "repo-r1").mkdir(parents=True)
    (root / "repo-r1" / "m.onnx").write_bytes(b"\x08")
    (root / "repo-r1" / "m.json").write_text("[1]")
    assert archives.model_folders(root, "ivadomed_onnx") == [root / "repo-r1"]
    (problem,) = archives.layout_problems(root, "ivadomed_onnx")
    assert problem.startswith("repo-r1/m.onnx has no readable m.json (")
    assert "holds a JSON list at the top level" in problem and not problem.endswith(";)")

    nn = tmp_path / "nn"
    good = _nnunet_folder(nn, "Dataset1_a", checkpoint_bytes())
    (good / "fold_1").mkdir()  # a second fold: still one model folder
    (good / "fold_1" / "checkpoint_final.pth").write_bytes(checkpoint_bytes())
    assert archives.model_folders(nn, "nnunet") == [good]
    assert archives.layout_problems(nn, "nnunet") == []
    # TotalSpineSeg needs one folder per dataset zip, at least two
    assert archives.expected_count("totalspineseg", 1) == 2
    assert archives.expected_count("totalspineseg", 3) == 3
    assert archives.expected_count("nnunet", 3) == 1
    assert archives.layout_problems(nn, "totalspineseg") == [
        "found 1 nnU-Net model folder(s), expected 2 "
        "(dataset.json, plans.json and fold_N/checkpoint_*.pth)"
    ]
    # dataset.json and plans.json without a fold checkpoint is not a model folder
    bare = _nnunet_folder(nn, "Dataset3_c", checkpoint_bytes())
    (bare / "fold_0" / "checkpoint_final.pth").unlink()
    assert archives.model_folders(nn, "nnunet") == [good]
    _nnunet_folder(nn, "Dataset2_b", b"<html>")
    assert archives.layout_problems(nn, "totalspineseg", n_sources=2) == [
        "Dataset2_b/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth "
        "is not a torch checkpoint (not a zip: truncated or corrupt download?)"
    ]


def test_extraction_replaces_regular_files_but_never_follows_a_link(tmp_path):
    z = model_zip(tmp_path / "m.zip")
    target = tmp_path / "out"
    archives.safe_extract(z, target)
    (target / PREFIX / "plans.json").write_text("stale")
    archives.safe_extract(z, target)  # a re-install overwrites the old regular files
    assert json.loads((target / PREFIX / "plans.json").read_text()) == PLANS
    # a link (inside the folder: one leading outside is refused earlier) or a folder
    victim = target / "victim.txt"
    victim.write_text("keep me")
    plans = target / PREFIX / "plans.json"
    for make in (lambda: plans.symlink_to(victim), plans.mkdir):
        plans.unlink() if plans.is_symlink() or plans.is_file() else plans.rmdir()
        make()
        with pytest.raises(ModelNotInstalledError) as err:
            archives.safe_extract(z, target)
        assert str(err.value) == (
            f"{z}: refused to extract: member {PREFIX + '/plans.json'!r} would replace "
            f"{plans}, which is not a regular file (nothing was installed)"
        )
    assert victim.read_text() == "keep me"


class _FailingFile(io.BytesIO):
    def __init__(self, err: int):
        super().__init__()
        self.err = err

    def write(self, data):
        raise OSError(self.err, os.strerror(self.err))


@pytest.mark.parametrize("err", [28, 13])  # ENOSPC, EACCES
def test_write_errors_name_the_cause_and_leave_nothing(tmp_path, monkeypatch, err):
    z = model_zip(tmp_path / "m.zip")
    target = tmp_path / "out"
    monkeypatch.setattr(archives, "open", lambda *a, **k: _FailingFile(err), raising=False)
    with pytest.raises(ModelNotInstalledError) as exc:
        archives.safe_extract(z, target)
    member = f"{PREFIX}/dataset.json"
    if err == 28:
        assert str(exc.value) == (
            f"{z}: the disk filled up while extracting {member!r} into {target / PREFIX}; "
            "free some space and retry (nothing was installed)"
        )
    else:
        assert str(exc.value) == (
            f"{z}: cannot write {target / member} (Permission denied); nothing was installed"
        )
    assert not target.exists()


def test_sizes_in_messages_switch_to_gb_at_one_billion_bytes():
    assert archives._gb(10**9) == "1.00 GB"
    assert archives._gb(10**9 - 1) == "1000.0 MB"
    assert archives._gb(256 << 20) == "268.4 MB"
    assert archives._gb(20 * 10**9) == "20.00 GB"


def test_space_check_is_exact_at_the_reserve(tmp_path, monkeypatch):
    seen = []

    def usage(folder):
        seen.append(Path(folder))
        return shutil._ntuple_diskusage(0, 0, 100 + archives.FREE_SPACE_RESERVE)

    monkeypatch.setattr(archives.shutil, "disk_usage", usage)
    target = tmp_path / "not" / "yet"
    archives.require_space(tmp_path / "m.zip", 100, target)  # fits exactly: accepted
    assert seen == [tmp_path]  # the nearest folder that exists, not the file system root
    with pytest.raises(ModelNotInstalledError) as err:
        archives.require_space(tmp_path / "m.zip", 101, target)
    assert str(err.value) == (
        f"{tmp_path / 'm.zip'}: needs 0.0 MB but only 268.4 MB is free on the disk of "
        f"{target} (keeping 268.4 MB spare); free some space or set SPINESEG_MODELS_DIR to a "
        "larger disk, then retry (nothing was installed)"
    )


def test_backslash_member_names_extract_into_folders(tmp_path):
    z = tmp_path / "windows.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("model\\fold_0\\notes.txt", b"written on Windows")
    target = tmp_path / "out"
    assert archives.safe_extract(z, target) == [target / "model" / "fold_0" / "notes.txt"]
    assert (target / "model" / "fold_0" / "notes.txt").read_bytes() == b"written on Windows"


def test_member_limits_are_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "MAX_MEMBERS", 3)
    z = model_zip(tmp_path / "m.zip")  # exactly 3 members: accepted
    assert len(archives.safe_extract(z, tmp_path / "out")) == 3


def test_member_through_a_link_in_the_target_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = tmp_path / "out"
    target.mkdir()
    (target / "link").symlink_to(outside)
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("link/x.txt", b"x")
    with pytest.raises(ModelNotInstalledError) as err:
        archives.safe_extract(z, target)
    assert str(err.value) == (
        f"{z}: refused to extract: member 'link/x.txt' resolves outside the model folder "
        "(unsafe archive, nothing was installed)"
    )
    assert not any(outside.iterdir())


@pytest.mark.parametrize("names", [("a", "a/b"), ("a/", "a")])
def test_a_name_that_is_file_and_folder_is_refused(tmp_path, names):
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for name in names:
            zf.writestr(name, b"" if name.endswith("/") else b"x")
    with pytest.raises(ModelNotInstalledError) as err:
        archives.safe_extract(z, tmp_path / "out")
    assert str(err.value) == (
        f"{z}: refused to extract: 'a' is both a file and a folder "
        "(unsafe archive, nothing was installed)"
    )
    assert not (tmp_path / "out").exists()


def test_interrupted_extraction_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the first member is written

    monkeypatch.setattr(archives, "_write_member", interrupted)
    with pytest.raises(KeyboardInterrupt):
        archives.safe_extract(model_zip(tmp_path / "m.zip"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
