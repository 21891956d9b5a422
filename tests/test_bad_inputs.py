"""Table-driven corpus of bad inputs: each gives one clear line, exit code 2, no traceback,
and leaves what was on disk untouched."""

import ast
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from xtc.cli import main
from xtc.data import DatasetError, build_dataset, mtan

H = W = 64


def _write_nyu(root: Path, n_train: int = 6, n_val: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for sub in ("image", "label", "depth"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((H, W, 3)))
            np.save(root / split / "label" / f"{i}.npy",
                    rng.integers(-1, 13, (H, W)).astype(np.float64))
            np.save(root / split / "depth" / f"{i}.npy", rng.random((H, W, 1)) * 5)
    return root


def _corrupt(kind: str, root: Path) -> None:
    t = root / "train"
    if kind == "missing-root":
        import shutil
        shutil.rmtree(root)
    elif kind == "empty-folder":
        for p in (t / "depth").iterdir():
            p.unlink()
    elif kind == "missing-subfolder":
        import shutil
        shutil.rmtree(t / "label")
    elif kind == "count-mismatch":
        (t / "depth" / "5.npy").unlink()
    elif kind == "wrong-shape":
        np.save(t / "depth" / "3.npy", np.zeros((H // 2, W, 1)))
    elif kind == "wrong-dtype":
        np.save(t / "image" / "2.npy", (np.random.rand(H, W, 3) * 255).astype(np.uint8))
    elif kind == "string-dtype":
        np.save(t / "label" / "1.npy", np.full((H, W), "a"))
    elif kind == "label-range":  # value errors are found on read: corrupt every item
        for p in (t / "label").iterdir():
            np.save(p, np.full((H, W), 40.0))
    elif kind in ("nan-depth", "inf-depth"):
        depth = np.ones((H, W, 1))
        depth[5, 5, 0] = np.nan if kind == "nan-depth" else np.inf
        for p in (t / "depth").iterdir():
            np.save(p, depth)
    elif kind == "truncated-npy":
        path = t / "image" / "4.npy"
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "gap-in-numbering":
        for sub in ("image", "label", "depth"):
            (t / sub / "2.npy").rename(t / sub / "9.npy")
    elif kind == "missing-split":
        import shutil
        shutil.rmtree(t)
    elif kind == "gray-image":  # read errors, like label-range: every item
        for p in (t / "image").iterdir():
            np.save(p, np.full((H, W), 0.5))
    elif kind == "label-with-channel":
        for p in (t / "label").iterdir():
            np.save(p, np.zeros((H, W, 1)))
    elif kind == "bad-normals":
        (t / "normal").mkdir()
        for p in (t / "image").iterdir():
            np.save(t / "normal" / p.name, np.zeros((H, W, 2)))
    else:
        raise AssertionError(kind)


def _data_sets(root: Path, *extra: str) -> list[str]:
    args = []
    for item in [*TINY, "data.name=nyuv2", f"data.root={root}", "data.val_fraction=0.2",
                 "train.epochs=1", "train.batch_size=2", *extra]:
        args += ["--set", item]
    return args


def _snapshot(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


DATA_CASES = [
    ("missing-root", "does not exist; set data.root"),
    ("empty-folder", "holds no <i>.npy files"),
    ("missing-subfolder", "label is missing"),
    ("count-mismatch", "mismatched file counts"),
    ("wrong-shape", "does not match the other files"),
    ("wrong-dtype", "must be float RGB in [0, 1]"),
    ("string-dtype", "is not numeric"),
    ("label-range", "label values [40.0] are outside [0, 13)"),
    ("nan-depth", "NaN/inf"),
    ("inf-depth", "NaN/inf"),
    ("truncated-npy", "truncated or not a .npy array"),
    ("gap-in-numbering", "must be 0.npy..N-1.npy"),
    ("missing-split", "/train is missing; expected"),
    ("gray-image", "image must be (H,W,3), got (64, 64)"),
    ("label-with-channel", "shapes disagree: image (64, 64, 3)"),
    ("bad-normals", "normals must be (H,W,3) = (64, 64, 3); got (64, 64, 2)"),
]

CONFIG_CASES = [
    (["--set", "loss.lamda1=0.1"], "unknown config key 'loss.lamda1'"),
    (["--set", "train.epochs=ten"], "expected int"),
    (["--set", "train.batch_size=-4"], "train.batch_size=-4 is out of range"),
    (["--set", "loss.lambda2=2"], "loss.lambda2=2.0 is out of range"),
    (["--set", "model.method=pcgrad"], "model.method='pcgrad' is not valid"),
    (["--set", "model.encoder=resnet999"], "resnet999"),
    (["--set", "data.name=kitti"], "unknown dataset 'kitti'"),
    (["--set", "data.width=100"], "divisible by 32"),
    (["--set", "train.device=tpu"], "train.device='tpu'"),
    (["--set", "optim.betas=[0.9]"], "optim.betas=[0.9] must be two numbers"),
    (["--set", "loss.weighting=nash"], "loss.weighting='nash' is not valid"),
    (["--config", "nope.yaml"], "nope.yaml does not exist"),
    (["--set", "data.train_size=4", "--set", "train.batch_size=8"], "fewer than train.batch_size"),
]


def _run(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("xtc: error:") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("kind, fragment", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_dataset_folders(kind, fragment, tmp_path, capsys):
    root = _write_nyu(tmp_path / "nyu")
    _corrupt(kind, root)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = _snapshot(tmp_path)
    err = _run(["train", "--out", str(out), "--quiet", *_data_sets(root)], capsys)
    assert fragment in err
    after = _snapshot(tmp_path)
    assert {p: h for p, h in after.items() if p in before} == before  # nothing overwritten
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("argv, fragment", CONFIG_CASES, ids=[c[1][:30] for c in CONFIG_CASES])
def test_bad_configs(argv, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _run(["train", "--out", str(tmp_path / "run"), *argv], capsys)
    assert fragment in err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    sets = []
    for item in [*TINY, "train.epochs=1", "train.max_steps_per_epoch=1"]:
        sets += ["--set", item]
    assert main(["train", "--out", str(out), "--quiet", *sets]) == 0
    return out / "checkpoints" / "last.pt"


def _checkpoint_case(kind: str, good: Path, path: Path) -> None:
    payload = torch.load(good, weights_only=True)
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not-torch":
        path.write_text("hello")
    elif kind == "wrong-classes":
        payload["num_classes"] = 13
        torch.save(payload, path)
    elif kind == "wrong-architecture":
        payload["config"]["model"]["method"] = "stl-seg"
        torch.save(payload, path)
    elif kind == "no-model":
        torch.save({"weights": payload["model"]}, path)
    elif kind == "hostile":
        class Evil:
            def __reduce__(self):
                return (Path.touch, (path.parent / "pwned",))
        torch.save({"model": {}, "x": Evil()}, path)


CHECKPOINT_CASES = [
    ("truncated", "truncated"),
    ("empty", "truncated"),
    ("not-torch", "truncated"),
    ("wrong-classes", "does not fit the model"),
    ("wrong-architecture", "does not fit the model"),
    ("no-model", "no 'model' entry"),
    ("hostile", "refused"),
]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind, fragment", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoints(kind, fragment, trained, tmp_path, capsys):
    path = tmp_path / f"{kind}.pt"
    _checkpoint_case(kind, trained, path)
    err = _run(["evaluate", "--checkpoint", str(path), "--quiet"], capsys)
    assert fragment in err
    assert not (tmp_path / "pwned").exists()


# The loader's checks no dataset folder can trip, and why (each must match one check).
NOT_A_FOLDER_PROBLEM = {
    "no data root given": "data.root unset is a config problem (test_data.py, no_root)",
    "cannot read {path}: {exc}": "a file that breaks after the header check read it",
}


def _loader_checks() -> dict[tuple[int, int], str]:
    """Every ``raise`` of the MTAN loader (``MTANDataset`` in xtc/data/mtan.py):
    {(first line, last line): its source}."""
    source = Path(mtan.__file__).read_text()
    loader = next(node for node in ast.parse(source).body
                  if isinstance(node, ast.ClassDef) and node.name == "MTANDataset")
    return {(node.lineno, node.end_lineno): ast.get_source_segment(source, node)
            for node in ast.walk(loader) if isinstance(node, ast.Raise)}


def _tripped(kind: str, root: Path) -> tuple[str, int, str]:
    """(file, line, message) of the check that case ``kind`` trips: the train split is
    built and every item read, as training would."""
    _corrupt(kind, _write_nyu(root))
    with pytest.raises(DatasetError) as info:
        dataset = build_dataset("nyuv2", "train", str(root), val_fraction=0.2)
        for i in range(len(dataset)):
            dataset[i]
    frame = info.value.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    return frame.tb_frame.f_code.co_filename, frame.tb_lineno, str(info.value)


def test_every_check_of_the_dataset_loader_has_a_case(tmp_path):
    """The corpus covers what the loader checks, not a number of cases: each of its checks
    on a folder (each ``raise``) is the one some case trips, with that case's message, or
    is listed with the reason no folder trips it; a new check fails here until it has a
    case."""
    checks = _loader_checks()
    tripped: dict[tuple[int, int], list[str]] = {}
    for kind, fragment in DATA_CASES:
        file, line, message = _tripped(kind, tmp_path / kind)
        assert Path(file) == Path(mtan.__file__) and fragment in message, (kind, message)
        site = next(span for span in checks if span[0] <= line <= span[1])
        tripped.setdefault(site, []).append(kind)
    exempt = {span for span, text in checks.items()
              for fragment in NOT_A_FOLDER_PROBLEM if fragment in text}
    assert len(exempt) == len(NOT_A_FOLDER_PROBLEM)  # each reason names one real check
    assert not exempt & set(tripped), tripped
    untested = [checks[span].splitlines()[0] for span in sorted(set(checks) - set(tripped))
                if span not in exempt]
    assert not untested, f"loader checks no case trips: {untested}"


NOTEBOOK_CASES = [
    ({"method": "stl"}, "model.method='stl' is not valid; choose one of"),
    ({"lambda1": 3.0}, "loss.lambda1=3.0 is out of range"),
    ({"epochs": "two"}, "train.epochs='two' has type str; expected int"),
    ({"dataset": "nyuv2", "data_root": "/nonexistent"}, "does not exist; set data.root"),
]


@pytest.mark.slow
@pytest.mark.parametrize("parameters, fragment", NOTEBOOK_CASES,
                         ids=[c[1][:25] for c in NOTEBOOK_CASES])
def test_bad_notebook_parameters_name_the_field(parameters, fragment, tmp_path):
    from xtc import reports as report

    out = tmp_path / "run"
    with pytest.raises(report.ExecutionFailed) as info:
        report.execute(ROOT_NOTEBOOKS / "02_train.ipynb", out,
                       {**parameters, "out_dir": str(out)})
    assert fragment in str(info.value)
    assert info.value.notebook.exists()  # the partial notebook is kept to inspect
    assert not (out / "results.json").exists()


ROOT_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
