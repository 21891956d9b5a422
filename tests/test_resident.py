"""data.resident: the split on the device gives the DataLoader's batches and the same run."""

import pytest
import torch
from torch.utils.data import DataLoader

from xtc import train
from xtc.data import build_dataset
from xtc.data.resident import ResidentSplit


def _split(split="train", augment=None):
    return build_dataset("synthetic-city", split, height=32, width=64, train_size=24,
                         test_size=8, augment=augment, seed=3)


@pytest.mark.parametrize("epoch", [0, 1])
def test_batches_equal_the_dataloader_batches(epoch):
    ds = _split()
    assert ds.augment
    ds.set_epoch(epoch)
    resident = ResidentSplit(ds, "cpu")
    resident.set_epoch(epoch)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(epoch)).tolist()[:12]
    ours = list(resident.batches(order, 4))
    reference = list(DataLoader(ds, batch_size=4, sampler=order))
    assert len(ours) == len(reference) == 3
    for a, b in zip(ours, reference):
        for key in ("seg_target", "depth_target", "depth_mask"):
            assert torch.equal(a[key], b[key]), key
        torch.testing.assert_close(a["image"], b["image"], atol=1e-5, rtol=0)


def test_unaugmented_split_is_the_items_in_order():
    ds = _split("test")
    batches = list(ResidentSplit(ds, "cpu").batches(range(len(ds)), 3))
    assert [len(b["image"]) for b in batches] == [3, 3, 2]  # the last batch keeps the rest
    assert torch.equal(batches[1]["image"][0], ds[3]["image"])


def test_resident_needs_a_split_dataset():
    with pytest.raises(TypeError, match="split dataset"):
        ResidentSplit(torch.utils.data.TensorDataset(torch.zeros(2)), "cpu")


def test_a_resident_run_matches_the_dataloader_run(tiny_config):
    # SGD: Adam's first steps move every weight by ~lr x sign(grad), so float-rounding
    # differences in near-zero gradients would show up as lr-sized weight differences
    overrides = ("train.epochs=1", "train.max_steps_per_epoch=2", "optim.name=sgd")
    loader_run = train.fit(tiny_config(*overrides), progress=False)
    resident_run = train.fit(tiny_config(*overrides, "data.resident=true"), progress=False)
    for (name, a), b in zip(loader_run.model.state_dict().items(),
                            resident_run.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    for key in ("miou", "abs_err"):
        assert (resident_run.test_metrics[key]
                == pytest.approx(loader_run.test_metrics[key], abs=1e-4))


def test_a_split_too_big_for_the_device_is_refused_with_the_fix():
    from xtc.data.resident import check_fits

    check_fits(4 * 2**30, 10 * 2**30, "the train split", torch.device("cuda"))  # 40%: fine
    with pytest.raises(MemoryError, match=r"needs 6.00 GiB.*data.resident=false"):
        check_fits(6 * 2**30, 10 * 2**30, "the train split", torch.device("cuda"))
