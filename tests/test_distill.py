"""sparsecomp.distill: kd_loss against a float64 reference and its gradient, ensemble teachers, FitNets hints,
and a real (short) distillation on the digits data set."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecomp import datasets
from sparsecomp.distill import Distiller, EnsembleTeacher, FeatureHints, kd_loss


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny layers: one thread is as fast as two, and far faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ref_kd(s, t, target, T, alpha):
    """float64 reference written from the definition (no torch loss functions)."""
    s, t = s.double(), t.double()
    log_ps = s / T - torch.logsumexp(s / T, dim=1, keepdim=True)
    log_pt = t / T - torch.logsumexp(t / T, dim=1, keepdim=True)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()
    loss = alpha * T * T * kl
    if target is not None:
        log_p1 = s - torch.logsumexp(s, dim=1, keepdim=True)
        loss = loss + (1 - alpha) * (-log_p1[torch.arange(s.shape[0]), target]).mean()
    return loss


def ref_grad(s, t, target, T, alpha):
    """d loss / d s in float64: alpha * T * (p_s - p_t) / N + (1 - alpha) * (softmax(s) - onehot) / N."""
    s, t = s.double(), t.double()
    n = s.shape[0]
    g = alpha * T * (torch.softmax(s / T, 1) - torch.softmax(t / T, 1)) / n
    if target is not None:
        g = g + (1 - alpha) * (torch.softmax(s, 1) - F.one_hot(target, s.shape[1]).double()) / n
    return g


def logits(gen, n, c, scale=3.0, dtype=torch.float32):
    return (scale * torch.randn(n, c, generator=gen, dtype=torch.float64)).to(dtype)


# ============================================================================================ kd_loss

@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kd_loss_and_grad_match_float64_reference(T, alpha, dtype, gen):
    n, c = 7, 13
    s = logits(gen, n, c, dtype=dtype).requires_grad_()
    t = logits(gen, n, c, dtype=dtype)
    y = torch.randint(0, c, (n,), generator=gen)
    loss = kd_loss(s, t, y, T=T, alpha=alpha)
    assert loss.dtype == dtype and loss.dim() == 0
    ref = ref_kd(s.detach(), t, y, T, alpha)
    # Error bound: the KL is a sum of p * (log p_t - log p_s) whose terms are computed with relative error ~u,
    # so its absolute error is ~ u * sum p (|log p_t| + |log p_s|) (times the T^2 weight) even when the KL itself
    # is tiny; the cross-entropy's error is ~ u * |log p|.
    u = torch.finfo(dtype).eps / 2
    sd, td = s.detach().double(), t.double()
    log_ps, log_pt = torch.log_softmax(sd / T, 1), torch.log_softmax(td / T, 1)
    kl_scale = (log_pt.exp() * (log_pt.abs() + log_ps.abs() + 1)).sum(1).mean().item()
    ce_scale = 1 + (-torch.log_softmax(sd, 1)).max().item()
    tol = 16 * u * (alpha * T * T * kl_scale + (1 - alpha) * ce_scale)
    assert abs(loss.item() - ref.item()) <= tol, (loss.item(), ref.item(), tol)
    loss.backward()
    # each gradient entry is alpha*T*(p_s - p_t)/N + (1-alpha)*(p - onehot)/N with p's relative error ~u
    g_tol = 16 * u * (alpha * T + 1) / n
    torch.testing.assert_close(s.grad.double(), ref_grad(sd, t, y, T, alpha), rtol=0, atol=g_tol)


def test_kd_loss_without_target_is_the_soft_term(gen):
    s, t = logits(gen, 5, 9, dtype=torch.float64), logits(gen, 5, 9, dtype=torch.float64)
    for alpha in (0.5, 1.0):
        got = kd_loss(s, t, None, T=3.0, alpha=alpha)
        assert abs(got.item() - ref_kd(s, t, None, 3.0, alpha).item()) < 1e-12
    # soft term and hard term add up to the full loss
    y = torch.randint(0, 9, (5,), generator=gen)
    full = kd_loss(s, t, y, T=3.0, alpha=0.5)
    hard = F.cross_entropy(s, y) * 0.5
    assert abs(full.item() - (kd_loss(s, t, None, T=3.0, alpha=0.5) + hard).item()) < 1e-12


def test_alpha_limits(gen):
    s, t = logits(gen, 6, 10, dtype=torch.float64), logits(gen, 6, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=gen)
    # alpha = 1: pure distillation, the labels do not matter
    other_y = (y + 1) % 10
    assert kd_loss(s, t, y, T=2.0, alpha=1.0).item() == kd_loss(s, t, other_y, T=2.0, alpha=1.0).item()
    assert abs(kd_loss(s, t, y, T=2.0, alpha=1.0).item() - ref_kd(s, t, None, 2.0, 1.0).item()) < 1e-12
    # alpha = 0: plain cross-entropy, the teacher does not matter
    ce = F.cross_entropy(s, y).item()
    assert abs(kd_loss(s, t, y, T=2.0, alpha=0.0).item() - ce) < 1e-12
    assert kd_loss(s, t, y, T=2.0, alpha=0.0).item() == kd_loss(s, -t, y, T=2.0, alpha=0.0).item()
    # identical logits and alpha = 1: zero loss and zero gradient
    s2 = s.clone().requires_grad_()
    loss = kd_loss(s2, s.clone(), None, T=5.0, alpha=1.0)
    loss.backward()
    assert abs(loss.item()) < 1e-12 and s2.grad.abs().max().item() < 1e-15


def test_gradient_scales_by_T_squared(gen):
    """The T^2 factor exactly compensates the (p_s - p_t) / T gradient of the softened KL, which itself shrinks
    as 1 / T^2 for large T: the gradient of kd_loss tends to (s - t) / (K N) for zero-mean logits."""
    n, c = 8, 10
    s = logits(gen, n, c, dtype=torch.float64)
    t = logits(gen, n, c, dtype=torch.float64)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    limit = (s - t) / (c * n)

    def grads(T):
        s1 = s.clone().requires_grad_()
        kd_loss(s1, t, None, T=T, alpha=1.0).backward()
        s2 = s.clone().requires_grad_()
        plain = F.kl_div(F.log_softmax(s2 / T, 1), F.log_softmax(t / T, 1), reduction="batchmean",
                         log_target=True)
        plain.backward()
        return s1.grad, s2.grad

    prev_err = None
    for T in (10.0, 100.0, 1000.0):
        g, g_plain = grads(T)
        # the factor is exactly T^2 ...
        torch.testing.assert_close(g, T * T * g_plain, rtol=1e-10, atol=1e-10 * g.abs().max().item())
        # ... the unscaled gradient vanishes as 1/T^2, the scaled one approaches a T-independent limit
        assert g_plain.abs().max().item() < 2 * limit.abs().max().item() / (T * T)
        err = (g - limit).abs().max().item()
        assert err < 5 * limit.abs().max().item() / T * (s.abs().max() + t.abs().max()).item()
        if prev_err is not None:
            assert err < prev_err / 5  # O(1/T) convergence
        prev_err = err


@pytest.mark.parametrize("kwargs, match", [
    (dict(T=0.0), "T must be"), (dict(T=float("inf")), "T must be"), (dict(T=-1.0), "T must be"),
    (dict(alpha=1.5), "alpha must be"), (dict(alpha=-0.1), "alpha must be"), (dict(alpha=True), "alpha must be"),
])
def test_kd_loss_rejects_bad_hyperparameters(kwargs, match):
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=match):
        kd_loss(s, s, torch.zeros(2, dtype=torch.long), **kwargs)


def test_kd_loss_rejects_bad_inputs():
    s = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(s, torch.zeros(4, 5))
    with pytest.raises(ValueError, match="student_logits must be"):
        kd_loss(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="teacher_logits must be"):
        kd_loss(s, torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="target must be"):
        kd_loss(s, s, torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="target must be"):
        kd_loss(s, s, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="needs a target"):
        kd_loss(s, s, None, alpha=0.0)


# ============================================================================================ ensemble

class Fixed(nn.Module):
    """A 'model' that returns given logits regardless of input (to test the combination exactly)."""

    def __init__(self, z):
        super().__init__()
        self.z = z

    def forward(self, x):
        return self.z


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_ensemble_averages_softened_probabilities(T, gen):
    zs = [logits(gen, 5, 7, scale=s, dtype=torch.float64) for s in (1.0, 4.0, 10.0)]
    w = [1.0, 2.0, 5.0]
    ens = EnsembleTeacher([Fixed(z) for z in zs], combine="probs", T=T, weights=w)
    out = ens(torch.zeros(5, 1))
    mix = sum(wi * torch.softmax(z / T, 1) for wi, z in zip(w, zs)) / sum(w)
    torch.testing.assert_close(torch.softmax(out / T, 1), mix, rtol=1e-12, atol=1e-15)
    # so kd_loss against the ensemble is the KL to the mixture
    s = logits(gen, 5, 7, dtype=torch.float64)
    ref = T * T * (mix * (mix.log() - torch.log_softmax(s / T, 1))).sum(1).mean()
    assert abs(kd_loss(s, out, T=T, alpha=1.0).item() - ref.item()) < 1e-12


def test_ensemble_logits_mode_and_errors(gen):
    zs = [logits(gen, 4, 3, dtype=torch.float64) for _ in range(2)]
    ens = EnsembleTeacher([Fixed(z) for z in zs], combine="logits")
    torch.testing.assert_close(ens(torch.zeros(4, 1)), (zs[0] + zs[1]) / 2, rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match="combine"):
        EnsembleTeacher([Fixed(zs[0])], combine="mean")
    with pytest.raises(ValueError, match="non-empty"):
        EnsembleTeacher([])
    with pytest.raises(ValueError, match="weights"):
        EnsembleTeacher([Fixed(zs[0])], weights=[0.0])
    with pytest.raises(ValueError, match="member 1"):
        EnsembleTeacher([Fixed(zs[0]), Fixed(zs[0][:, :2])])(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="same T"):
        Distiller(nn.Linear(1, 3), EnsembleTeacher([Fixed(zs[0])], T=2.0), torch.optim.SGD([torch.zeros(1)], 0.1),
                  T=4.0)


# ============================================================================================ hints

@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
def test_hint_projection_learns_the_feature_map(conv, gen):
    """Teacher features are a fixed linear map of the student's: training only the projection must drive the hint
    loss to ~0 (a broken projection, hook or loss would not)."""
    torch.manual_seed(0)
    if conv:
        student = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU())
        mapping = nn.Conv2d(3, 5, 1)
        x = torch.randn(16, 2, 6, 6, generator=gen)
    else:
        student = nn.Sequential(nn.Linear(6, 4), nn.ReLU())
        mapping = nn.Linear(4, 9)
        x = torch.randn(64, 6, generator=gen)
    teacher = nn.Sequential(copy.deepcopy(student), mapping)
    with FeatureHints(student, teacher, {"1": "1"}, example_input=x) as hints:
        proj = hints.projections[0]
        assert isinstance(proj, nn.Conv2d if conv else nn.Linear)
        sizes = (proj.in_channels, proj.out_channels) if conv else (proj.in_features, proj.out_features)
        assert sizes == ((3, 5) if conv else (4, 9))
        opt = torch.optim.Adam(hints.parameters(), lr=0.05)
        first = None
        for _ in range(300):
            with torch.no_grad():
                teacher(x)
            student(x)
            loss = hints.loss()
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 1e-3 * first
    # hooks removed: forward passes no longer capture anything
    student(x)
    teacher(x)
    with pytest.raises(RuntimeError, match="no captured features"):
        hints.loss()


def test_hints_errors():
    s = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    t = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="no module named 'nope'"):
        FeatureHints(s, t, {"nope": "1"}, x)
    with pytest.raises(ValueError, match="spatial sizes differ"):
        FeatureHints(s, t, {"1": "1"}, x)
    # the failed constructor left no hooks behind
    assert not s[1]._forward_hooks and not t[1]._forward_hooks
    with pytest.raises(ValueError, match="pairs"):
        FeatureHints(s, t, {}, x)
    with FeatureHints(s, s, {"1": "1"}, x) as hints:
        with pytest.raises(RuntimeError, match="no captured features"):
            hints.loss()


# ============================================================================================ Distiller on digits

def mlp(hidden, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def accuracy(model, split):
    model.eval()
    with torch.no_grad():
        return (model(split.x).argmax(1) == split.y).float().mean().item()


def train_ce(model, train, epochs, lr=3e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for x, y in train.batches(64, generator=g):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model


@pytest.fixture(scope="module")
def digits_and_teachers():
    train, test = datasets.digits()
    teachers = [train_ce(mlp(128, seed), train, epochs=15, seed=seed) for seed in (1, 2)]
    for t in teachers:
        assert accuracy(t, test) > 0.93
    return train, test, teachers


def test_distiller_trains_a_small_student(digits_and_teachers):
    train, test, teachers = digits_and_teachers
    teacher = teachers[0]
    teacher.train()  # Distiller must switch it to eval and restore this mode
    before = copy.deepcopy(teacher.state_dict())
    student = mlp(12, seed=3)
    opt = torch.optim.Adam(student.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    history = Distiller(student, teacher, opt, T=4.0, alpha=0.9, progress=False).fit(
        lambda: train.batches(64, generator=g), epochs=12, evaluate=lambda m: accuracy(m, test))
    assert [row["epoch"] for row in history] == list(range(1, 13))
    assert all(row["samples"] == train.y.shape[0] for row in history)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert all(abs(r["loss"] - (r["soft"] + r["hard"] + r["hint"])) < 1e-4 * (1 + r["loss"]) for r in history)
    assert history[-1]["eval"] > 0.9, history
    assert teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher parameter {k} changed"


def test_distiller_with_ensemble_and_hints(digits_and_teachers):
    train, test, teachers = digits_and_teachers
    student = mlp(16, seed=4)
    ensemble = EnsembleTeacher(teachers, T=3.0)
    hints = FeatureHints(student, ensemble, {"1": "members.0.1"}, example_input=train.x[:8])
    opt = torch.optim.Adam([*student.parameters(), *hints.parameters()], lr=5e-3)
    proj_before = hints.projections[0].weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    history = Distiller(student, ensemble, opt, T=3.0, alpha=0.7, hints=hints, hint_weight=0.1,
                        progress=False).fit(lambda: train.batches(64, generator=g), epochs=8)
    hints.remove()
    assert all(r["hint"] > 0 for r in history) and history[-1]["hint"] < history[0]["hint"]
    assert not torch.equal(hints.projections[0].weight, proj_before)
    assert accuracy(student, test) > 0.9


def test_distiller_input_errors(digits_and_teachers):
    train, _, teachers = digits_and_teachers
    student = mlp(8, seed=5)
    d = Distiller(student, teachers[0], torch.optim.SGD(student.parameters(), 0.1), progress=False)
    with pytest.raises(ValueError, match="exhausted after one epoch"):
        d.fit(train.batches(64), epochs=2)
    with pytest.raises(ValueError, match="epochs must be"):
        d.fit([(train.x[:4], train.y[:4])], epochs=0)
    with pytest.raises(ValueError, match="no batches"):
        d.fit([], epochs=1)
    with pytest.raises(ValueError, match="batches must be"):
        d.fit([{"x": train.x[:4]}])
    # a list is re-iterable: fine for several epochs; unlabeled batches use the soft term only
    hist = d.fit([train.x[:32]], epochs=2)
    assert len(hist) == 2 and hist[0]["hard"] == 0.0
