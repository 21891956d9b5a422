"""Gradient aggregation with TorchJD (loss.aggregator, loss.objectives, FAMO, gstat_*).

What must hold: xtc's step applies exactly TorchJD's aggregation of the objectives'
Jacobian on the shared encoder; ``sum`` over the task groups is today's scalarised step;
the aggregators keep the properties their papers prove; stateful ones (Nash-MTL, FAMO)
resume bit-exactly; two gloo processes make the update of one.
"""

import json
import math

import pytest
import torch

from tests.conftest import TINY
from xtc import checkpoint, config, train
from xtc.losses.aggregation import (AGGREGATORS, aggregator_arguments, build_aggregator,
                                    gradient_statistics)

# TorchJD's own constructors, written out independently of xtc's registry: a registered
# name's builder must give exactly this aggregator (defaults included).


def _torchjd(name: str, n: int):
    import torchjd.aggregation as A

    return {
        "upgrad": lambda: A.UPGrad(), "dualproj": lambda: A.DualProj(),
        "mgda": lambda: A.MGDA(), "pcgrad": lambda: A.PCGrad(),
        "cagrad": lambda: A.CAGrad(c=0.4), "imtl_g": lambda: A.IMTLG(),
        "nash_mtl": lambda: A.NashMTL(n_tasks=n), "aligned_mtl": lambda: A.AlignedMTL(),
        "graddrop": lambda: A.GradDrop(), "fairgrad": lambda: A.FairGrad(alpha=1.0),
        "config": lambda: A.ConFIG(), "mean": lambda: A.Mean(), "sum": lambda: A.Sum(),
    }[name]()


REQUIRED = {"upgrad", "mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl",
            "dualproj", "graddrop", "fairgrad", "config", "mean", "sum"}


def test_the_registry_has_the_issue_s_aggregators():
    assert REQUIRED <= set(AGGREGATORS.names())


def _tiny(*extra):
    return config.load(None, [*TINY, "model.method=xtc", "loss.weighting=fixed",
                              "train.max_steps_per_epoch=2", *extra])


def _batch(exp):
    data = exp.dataset("train")
    items = [data[i] for i in range(4)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]
            if isinstance(items[0][k], torch.Tensor)}


@pytest.fixture(scope="module")
def xtc_terms():
    """One tiny xtc model, criterion and batch for the per-aggregator checks."""
    torch.manual_seed(0)
    cfg = _tiny("loss.aggregator=upgrad", "loss.objectives=terms")
    exp = train.build_experiment(cfg, "cpu")
    return cfg, exp, _batch(exp)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_the_step_applies_torchjd_s_aggregation_of_the_encoder_jacobian(name, xtc_terms):
    """xtc's backward takes the encoder Jacobian that plain autograd gives, one objective at
    a time, and leaves on the encoder exactly TorchJD's aggregator applied to it; decoders
    and transfer nets get the sum of their objectives' gradients."""
    from xtc.losses.aggregation import Aggregation

    cfg, exp, batch = xtc_terms
    model, criterion = exp.model, exp.criterion
    criterion.aggregation = Aggregation(name, criterion.objective_names("terms"), mode="terms")
    criterion.aggregation.attach(model)
    model.zero_grad(set_to_none=True)
    seen = {}
    criterion.aggregation.aggregator.register_forward_pre_hook(
        lambda module, args: seen.__setitem__("jacobian", args[0].clone()))
    terms = train.forward_losses(model, criterion, batch, exp.device, cfg)
    objectives = criterion.objectives(terms, "terms")
    assert list(objectives) == ["seg", "depth", "seg2depth", "depth2seg"]
    shared = [p for p in model.encoder.parameters()]
    others = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    rows, head = [], [torch.zeros_like(p) for p in others]
    for loss in objectives.values():
        grads = torch.autograd.grad(loss, shared + others, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([g.flatten() for g in grads[:len(shared)]]))
        for i, g in enumerate(grads[len(shared):]):
            if g is not None:
                head[i] += g
    jacobian = torch.stack(rows)
    torch.manual_seed(123)  # graddrop draws its masks from the global generator
    criterion.aggregation.backward(objectives)
    ours = seen["jacobian"]
    assert ours.shape == jacobian.shape
    assert torch.allclose(ours, jacobian, atol=1e-7, rtol=1e-4)
    torch.manual_seed(123)
    expected = _torchjd(name, len(rows))(ours)
    got = torch.cat([p.grad.flatten() for p in shared])
    assert torch.allclose(got, expected, atol=1e-9, rtol=1e-5)
    for p, g in zip(others, head):
        assert torch.allclose(p.grad if p.grad is not None else torch.zeros_like(p), g,
                              atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_builder_matches_torchjd_on_a_fixed_jacobian(name):
    jacobian = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-0.5, 1.0, 2.0, 1.0], [0.3, 0.3, -1.0, 2.0]])
    torch.manual_seed(0)
    expected = _torchjd(name, 3)(jacobian)
    torch.manual_seed(0)
    assert torch.allclose(build_aggregator(name, 3)(jacobian), expected, atol=1e-6)


def test_sum_over_task_groups_trains_the_weights_of_the_scalarised_step():
    """aggregator=sum, objectives=tasks, weighting=fixed is plain gradient descent on
    sum_a L_a: the same weights as aggregator=none after a few steps (float tolerance: the
    Jacobian route sums the groups' gradients in another order)."""
    finals = []
    for aggregator in ("none", "sum"):
        torch.manual_seed(0)
        cfg = _tiny(f"loss.aggregator={aggregator}", "loss.objectives=tasks",
                    "optim.name=sgd", "optim.lr=0.05")
        exp = train.build_experiment(cfg, "cpu")
        batch = _batch(exp)
        for _ in range(3):
            terms = train.forward_losses(exp.model, exp.criterion, batch, exp.device, cfg)
            train.optimizer_step(terms, exp.optimizer, exp.criterion)
        finals.append({k: v.clone() for k, v in exp.model.state_dict().items()})
    none, summed = finals
    for k in none:
        if none[k].is_floating_point():
            assert torch.allclose(none[k], summed[k], atol=1e-5, rtol=1e-4), k
    moved = max((v - summed[k]).abs().max() for k, v in none.items() if v.is_floating_point())
    assert moved < 1e-5


def test_nash_mtl_with_two_objectives_points_along_the_sum_of_unit_gradients():
    """Nash-MTL's bargaining solution for two tasks: alpha_i = 1 / (||g_i|| sqrt(...)), a
    direction proportional to g1/||g1|| + g2/||g2|| (Navon et al., 2022, Sec. 3)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        jacobian = torch.randn(2, 50, generator=gen) * torch.tensor([[3.0], [0.2]])
        d = build_aggregator("nash_mtl", 2, {"max_norm": 0.0})(jacobian)
        target = jacobian[0] / jacobian[0].norm() + jacobian[1] / jacobian[1].norm()
        assert torch.nn.functional.cosine_similarity(d, target, dim=0) > 0.999


def test_upgrad_direction_conflicts_with_no_objective():
    gen = torch.Generator().manual_seed(1)
    mean_conflicts = 0
    for k in (2, 3, 5):
        for _ in range(5):
            jacobian = torch.randn(k, 20, generator=gen)
            jacobian[1] = -0.8 * jacobian[0] + 0.1 * jacobian[1]  # a strong conflict
            d = build_aggregator("upgrad", k)(jacobian)
            assert (jacobian @ d >= -1e-5 * jacobian.norm() * d.norm()).all()
            mean_conflicts += bool((jacobian @ jacobian.mean(0)).min() < 0)
    assert mean_conflicts > 0  # the cases are hard: plain averaging conflicts in some


def test_gradient_statistics_by_hand():
    J = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    d = torch.tensor([1.0, 1.0])
    s = gradient_statistics(J, d, ["a", "b", "c"])
    assert s["gstat_norm_a"] == pytest.approx(3.0)
    assert s["gstat_cos_a_vs_b"] == pytest.approx(0.0)
    assert s["gstat_cos_a_vs_c"] == pytest.approx(-1.0)
    assert s["gstat_conflict_fraction"] == pytest.approx(1 / 3)
    assert s["gstat_dircos_a"] == pytest.approx(1 / math.sqrt(2))
    assert s["gstat_dircos_c"] == pytest.approx(-1 / math.sqrt(2))
    assert s["gstat_gramian_cond"] == 1e12  # a and c are parallel: J J^T is singular
    s2 = gradient_statistics(J[:2], d, ["a", "b"])
    assert s2["gstat_gramian_cond"] == pytest.approx(9.0)


def test_config_errors_name_the_problem_and_the_fix():
    with pytest.raises(config.ConfigError, match="loss.aggregator='upgard' is not valid"):
        config.load(None, ["loss.aggregator=upgard"])
    with pytest.raises(config.ConfigError, match="cagrad takes \\['c', 'norm_eps'\\]"):
        config.load(None, ["loss.aggregator=cagrad", "loss.aggregator_args.cc=0.5"])
    with pytest.raises(config.ConfigError, match="without an aggregator"):
        config.load(None, ["loss.aggregator_args.c=0.5"])
    with pytest.raises(config.ConfigError, match="loss.objectives"):
        config.load(None, ["loss.objectives=losses"])
    with pytest.warns(UserWarning, match="loss.weighting=uncertainty is not applied"):
        cfg = config.load(None, ["loss.aggregator=mgda", "loss.weighting=uncertainty"])
    assert cfg.loss.weighting == "fixed"
    cfg = config.load(None, ["loss.aggregator=cagrad", "loss.aggregator_args.c=0.2"])
    assert cfg.loss.aggregator_args == {"c": 0.2}
    assert aggregator_arguments("cagrad") == {"c": 0.4, "norm_eps": 0.0001}


def test_cli_train_records_the_aggregator_its_args_and_statistics(tmp_path):
    from xtc.cli import main

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--quiet"]
    for item in [*TINY, "train.epochs=1", "train.max_steps_per_epoch=3",
                 "loss.aggregator=upgrad", "loss.objectives=terms", "train.grad_stats_every=1"]:
        args += ["--set", item]
    assert main(args) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["aggregation"]["aggregator"] == "upgrad"
    assert doc["aggregation"]["objectives"] == "terms"
    assert doc["aggregation"]["objective_names"] == ["seg", "depth", "seg2depth", "depth2seg"]
    assert "pref_vector" in doc["aggregation"]["args"]
    assert doc["params"]["loss.aggregator"] == "upgrad"
    record = doc["history"][0]
    assert 0.0 <= record["train_gstat_conflict_fraction"] <= 1.0
    for name in ("seg", "depth", "seg2depth", "depth2seg"):
        assert record[f"train_gstat_norm_{name}"] > 0
        # UPGrad: the applied direction conflicts with no objective (up to float32 rounding)
        assert record[f"train_gstat_dircos_{name}"] > -1e-3
    assert "train_gstat_cos_seg_vs_depth2seg" in record


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("extra", [("loss.aggregator=nash_mtl", "loss.objectives=terms"),
                                   ("loss.aggregator=graddrop", "loss.objectives=terms"),
                                   ("loss.weighting=famo",),
                                   ("loss.aggregator=upgrad", "loss.objectives=terms",
                                    "train.precision=fp32", "loss.aggregator_engine=autogram")],
                         ids=["nash_mtl", "graddrop", "famo", "upgrad-autogram"])
def test_stateful_and_random_steps_resume_bit_exactly(tmp_path, extra):
    """Nash-MTL (its last weights and step count), GradDrop (its random masks) and FAMO
    (its logits and their Adam) continue exactly after a crash mid-epoch."""
    cfg = _tiny("train.max_steps_per_epoch=4", "train.checkpoint_every=1", "train.epochs=1",
                *extra)
    full = train.fit(cfg, progress=False)
    calls = {"n": 0}
    real_save = checkpoint.save

    def crash_after_step_two(payload, path):
        real_save(payload, path)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")

    import xtc.checkpoint
    xtc.checkpoint.save = crash_after_step_two
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            train.fit(cfg, out_dir=tmp_path, progress=False)
    finally:
        xtc.checkpoint.save = real_save
    payload = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert (payload["epoch"], payload["step"]) == (0, 2)
    resumed = train.fit(cfg, out_dir=tmp_path, resume=True, progress=False)
    a, b = _weights(full.model), _weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history[0]["weights"] == full.history[0]["weights"]
    if "loss.weighting=famo" in extra:  # FAMO's weights did move off uniform
        w = full.history[0]["weights"]
        assert max(w.values()) - min(w.values()) > 1e-4


def test_famo_is_torchjd_s_famo_and_its_state_round_trips():
    from torchjd.scalarization import FAMO

    from xtc.losses.weighting import build_weighting

    ours = build_weighting("famo", ["seg", "depth"], famo_lr=0.1)
    theirs = FAMO(2, lr=0.1)
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    for step in range(3):
        losses = torch.stack([x[0] ** 2 + 1, (x[1] - step) ** 2 + 0.5])
        a = ours({"seg": losses[0], "depth": losses[1]})
        b = theirs(losses)
        assert torch.equal(a, b)
        after = losses.detach() * torch.tensor([0.5, 0.9])
        ours.update({"seg": after[0], "depth": after[1]})
        theirs.update(after)
    assert torch.equal(ours.famo._w, theirs._w)
    clone = build_weighting("famo", ["seg", "depth"], famo_lr=0.1)
    clone.load_state_dict(ours.state_dict())
    losses = torch.tensor([1.5, 0.7])
    for w in (ours, clone):
        w({"seg": losses[0].requires_grad_(), "depth": losses[1].requires_grad_()})
        w.update({"seg": losses[0] * 0.5, "depth": losses[1]})
    assert torch.equal(ours.famo._w, clone.famo._w)
    assert ours.optimised_parameters() == []  # FAMO steps its logits itself


@pytest.mark.slow
def test_two_gloo_processes_aggregate_the_global_jacobian(tmp_path):
    """Each rank's encoder Jacobian is averaged over the ranks before UPGrad acts on it, and
    the task gradients are averaged too: two processes end with the weights of one process
    on the same global batches (the tolerance of the plain DDP test, float reductions in
    another order). Gradient statistics run on the global Jacobian as well."""
    from tests.test_distributed import _max_difference, _one_process, _torchrun, _write_dataset

    data = _write_dataset(tmp_path / "data")
    extra = ("model.method=xtc", "loss.aggregator=upgrad", "loss.objectives=terms",
             "train.grad_stats_every=1")
    a = _one_process(data, tmp_path / "one", *extra)
    b = _torchrun(data, tmp_path / "two", *extra)
    assert _max_difference(a, b) < 2e-4
    ra = json.loads((tmp_path / "one" / "results.json").read_text())
    rb = json.loads((tmp_path / "two" / "results.json").read_text())
    assert rb["provenance"]["world_size"] == 2
    for key in ("train_gstat_conflict_fraction", "train_gstat_norm_seg2depth"):
        assert rb["history"][0][key] == pytest.approx(ra["history"][0][key], rel=1e-3, abs=1e-6)


# ------------------------------------------------------------- the Gramian engine (autogram)

GRAMIAN_BASED = ["aligned_mtl", "cagrad", "dualproj", "fairgrad", "imtl_g", "mgda", "pcgrad",
                 "upgrad"]  # TorchJD's GramianWeightedAggregator subclasses, written out


def test_the_gramian_based_aggregators_are_torchjd_s():
    from xtc.losses.aggregation import gramian_based

    assert [n for n in AGGREGATORS.names() if gramian_based(n)] == GRAMIAN_BASED


def _engine_step(engine: str, name: str, statistics: bool = False):
    """One aggregated step's gradients and statistics on the same weights and batch."""
    torch.manual_seed(0)
    cfg = _tiny(f"loss.aggregator={name}", "loss.objectives=terms", "train.precision=fp32",
                f"loss.aggregator_engine={engine}")
    exp = train.build_experiment(cfg, "cpu")
    assert exp.criterion.aggregation.engine == engine
    terms = train.forward_losses(exp.model, exp.criterion, _batch(exp), exp.device, cfg)
    stats = exp.criterion.aggregation.backward(exp.criterion.objectives(terms, "terms"),
                                               statistics=statistics)
    grads = {n: p.grad.detach().clone() for n, p in exp.model.named_parameters()
             if p.requires_grad}
    return grads, stats


@pytest.mark.parametrize("name", GRAMIAN_BASED)
def test_autogram_makes_the_autojac_step(name):
    """The Gramian engine's step equals the Jacobian's: J^T w on the encoder (w from the
    Gramian), the summed objective gradients on decoders and transfer nets."""
    jac_grads, _ = _engine_step("autojac", name)
    gram_grads, _ = _engine_step("autogram", name)
    assert jac_grads.keys() == gram_grads.keys()
    encoder = [n for n in jac_grads if n.startswith("encoder.")]
    assert encoder and len(encoder) < len(jac_grads)
    a = torch.cat([jac_grads[n].flatten() for n in encoder])
    b = torch.cat([gram_grads[n].flatten() for n in encoder])
    assert float(a.norm()) > 0
    # the weights come out of a small solver (QP for UPGrad/DualProj): agreement to ~1e-4
    assert float((a - b).norm() / a.norm()) < 2e-3, name
    for n in jac_grads:
        if not n.startswith("encoder."):
            assert torch.allclose(jac_grads[n], gram_grads[n], atol=1e-6, rtol=1e-4), n


def test_autogram_statistics_equal_the_jacobian_s():
    _, by_jacobian = _engine_step("autojac", "upgrad", statistics=True)
    _, by_gramian = _engine_step("autogram", "upgrad", statistics=True)
    assert by_jacobian.keys() == by_gramian.keys()
    for key, value in by_jacobian.items():
        if key.startswith("gstat_dircos_"):  # the direction: UPGrad's solver, see above
            assert by_gramian[key] == pytest.approx(value, abs=2e-3), key
        else:  # the Gramian itself: the two engines agree to float32 rounding
            assert by_gramian[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_autojac_is_the_default_engine_and_autogram_is_used_when_asked():
    """autojac by default (bench/RESULTS.md section 14: autogram is slower on CPU and saves
    memory); loss.aggregator_engine=autogram hooks the encoder."""
    def engine(*extra):
        cfg = _tiny("loss.aggregator=upgrad", "loss.objectives=terms", *extra)
        return train.build_experiment(cfg, "cpu").criterion.aggregation
    assert engine().engine == "autojac" and engine()._gramian_engine is None
    gram = engine("train.precision=fp32", "loss.aggregator_engine=autogram")
    assert gram.engine == "autogram" and gram._gramian_engine is not None


def test_autogram_where_it_cannot_run_is_refused_with_the_reason():
    from xtc.losses.aggregation import check_engine

    with pytest.raises(config.ConfigError, match="graddrop is not a function of the Gramian"):
        config.load(None, ["loss.aggregator=graddrop", "loss.aggregator_engine=autogram"])
    with pytest.raises(config.ConfigError, match="without an aggregator"):
        config.load(None, ["loss.aggregator_engine=autogram"])
    with pytest.raises(config.ConfigError, match="loss.aggregator_engine='auto'"):
        config.load(None, ["loss.aggregator=upgrad", "loss.aggregator_engine=auto"])
    cfg = _tiny("loss.aggregator=upgrad", "loss.aggregator_engine=autogram",
                "train.precision=bf16")
    with pytest.raises(config.ConfigError, match="fails under bf16 autocast.*autojac"):
        train.build_experiment(cfg, "cpu")
    with pytest.raises(config.ConfigError, match="under torchrun"):
        check_engine("autogram", "upgrad", "fp32", distributed=True)
    assert check_engine("autojac", "graddrop", "bf16", distributed=True) == "autojac"


def test_switching_back_to_autojac_leaves_no_hooks_on_the_encoder():
    cfg = _tiny("loss.aggregator=upgrad", "loss.objectives=terms", "train.precision=fp32",
                "loss.aggregator_engine=autogram")
    exp = train.build_experiment(cfg, "cpu")
    hooked = [m for m in exp.model.encoder.modules() if m._forward_hooks]
    assert hooked
    exp.criterion.aggregation.use_engine("autojac")
    assert not [m for m in exp.model.encoder.modules() if m._forward_hooks]


def test_autogram_run_records_its_engine_and_skips_a_nan_step(tmp_path, monkeypatch):
    """fit with the Gramian engine: a step skipped after its forward (train.nonfinite=skip)
    does not break the next Gramian, and results.json says which engine ran."""
    from xtc import results

    cfg = _tiny("loss.aggregator=upgrad", "loss.objectives=terms", "train.precision=fp32",
                "loss.aggregator_engine=autogram", "train.epochs=1",
                "train.max_steps_per_epoch=3", "train.nonfinite=skip", "train.grad_stats_every=1")
    real = train.forward_losses
    calls = {"n": 0}

    def nan_on_the_first_step(model, criterion, batch, device, cfg):
        terms = real(model, criterion, batch, device, cfg)
        calls["n"] += 1
        if calls["n"] == 1:
            terms = {**terms, "seg": terms["seg"] * float("nan")}
        return terms

    monkeypatch.setattr(train, "forward_losses", nan_on_the_first_step)
    run = train.fit(cfg, out_dir=tmp_path / "run", progress=False)
    assert run.history[0]["train_skipped_fraction"] == pytest.approx(1 / 3)
    assert run.history[0]["train_gstat_norm_seg"] > 0
    record = results.read(tmp_path / "run")["aggregation"]
    assert record["engine"] == "autogram"
    assert "Gramian" in record["jacobian"]


def test_an_aggregated_run_logs_its_statistics_by_default_and_a_plain_run_does_not():
    """train.grad_stats_every=None: every 10 steps under an aggregator (free: its step holds
    the Jacobian or Gramian), never without one (K extra backward passes there)."""
    for aggregator, logged in (("upgrad", True), ("none", False)):
        cfg = _tiny(f"loss.aggregator={aggregator}", "loss.objectives=terms", "train.epochs=1")
        assert cfg.train.grad_stats_every is None
        record = train.fit(cfg, progress=False).history[0]
        assert ("train_gstat_norm_seg2depth" in record) is logged, aggregator
