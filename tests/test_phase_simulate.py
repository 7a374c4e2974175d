"""The phase-transition simulators (Xing, Song & Cheng 2022, section 4), checked against exact
answers: least squares, a brute-force inner maximum, leave-one-out statistics recomputed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from robustlab.cli.main import main
from robustlab.phase import (
    SIMULATORS,
    LinearRegression,
    adversarial_squared_loss,
    p_values_loss,
    p_values_params,
    simulate,
)
from robustlab.phase._base import draw_data, gradient_descent


@pytest.mark.parametrize("d,n", [(4, 30), (12, 8)])
def test_clean_gradient_descent_converges_to_least_squares(d: int, n: int) -> None:
    """From θ = 0, clean GD ends at the least-squares solution (the minimum-norm one when
    d > n, since every step stays in the row space of X)."""
    rng = np.random.default_rng(0)
    x, y, _ = draw_data(rng, 3, d, n, sigma=0.5)
    sim = LinearRegression()
    eps = np.array([0.0, 0.05])
    lr = 1.0 / sim.smoothness(x, eps[-1])
    steps = sim.default_steps(x, lr)
    params, loss, _ = gradient_descent(sim, sim.init(rng, 3, 2, d), x, y, eps, lr, steps)
    for r in range(3):
        expected = np.linalg.pinv(x[r]) @ y[r]
        np.testing.assert_allclose(params[r, 0], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loss[r, 0], np.mean((y[r] - x[r] @ expected) ** 2), atol=1e-9)


def test_closed_form_adversarial_loss_matches_brute_force_on_the_circle() -> None:
    """(|y − θᵀx| + ε||θ||)² is the maximum of (y − θᵀ(x + δ))² over ||δ||₂ ≤ ε (d = 2: the
    maximum of a convex function of δ is on the circle, sampled densely)."""
    rng = np.random.default_rng(1)
    angles = np.linspace(0, 2 * np.pi, 200_001)
    circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    for _ in range(20):
        theta, x = rng.standard_normal(2), rng.standard_normal(2)
        y, eps = float(rng.standard_normal()), float(rng.uniform(0.01, 3))
        brute = np.max((y - (x + eps * circle) @ theta) ** 2)
        closed = adversarial_squared_loss(theta, x, y, eps)
        assert closed == pytest.approx(brute, rel=1e-8)
        assert closed >= brute - 1e-12  # never below an attained value


def test_linear_gradient_is_the_derivative_of_the_closed_form_loss() -> None:
    rng = np.random.default_rng(2)
    x, y, _ = draw_data(rng, 2, 3, 15, 1.0)
    params = rng.standard_normal((2, 3, 3))
    eps = np.array([0.0, 0.3, 2.0])
    sim = LinearRegression()
    _, grad = sim.loss_and_grad(params, x, y, eps)
    np.testing.assert_allclose(sim.gradient(params, x, y, eps), grad, atol=1e-12)
    step = 1e-6
    for i in range(3):
        shift = np.zeros_like(params)
        shift[..., i] = step
        up, _ = sim.loss_and_grad(params + shift, x, y, eps)
        down, _ = sim.loss_and_grad(params - shift, x, y, eps)
        np.testing.assert_allclose((up - down) / (2 * step), grad[..., i], rtol=1e-5, atol=1e-7)
    # the loss is the closed form averaged over the points
    loss, _ = sim.loss_and_grad(params, x, y, eps)
    expected = adversarial_squared_loss(params[:, :, None, :], x[:, None], y[:, None], eps[:, None])
    np.testing.assert_allclose(loss, expected.mean(axis=-1), rtol=1e-12)


def test_parameter_p_values_are_leave_one_out_hotelling_and_uniform_under_the_null() -> None:
    rng = np.random.default_rng(3)
    repeats, p = 400, 3
    clean = rng.standard_normal((repeats, p)) @ np.array([[1, 0.5, 0], [0, 1, 0], [0, 0, 2.0]])
    shifted = clean + np.array([3.0, 0, 0])
    coefficients = np.stack([clean, clean, shifted], axis=1)
    pv = p_values_params(coefficients)
    # leave one out, recomputed from scratch for a few repeats
    for r in (0, 7, 399):
        others = np.delete(clean, r, axis=0)
        m = repeats - 1
        mean, cov = others.mean(axis=0), np.cov(others, rowvar=False)
        diff = clean[r] - mean
        t2 = m / (m + 1) * diff @ np.linalg.solve(cov, diff)
        f = t2 * (m - p) / (p * (m - 1))
        assert pv[r, 0] == pytest.approx(stats.f.sf(f, p, m - p), rel=1e-9)
    assert stats.kstest(pv[:, 0], "uniform").pvalue > 1e-3  # clean against clean: uniform
    assert pv[:, 1].mean() < 0.05  # three standard deviations out along the first axis


def test_loss_p_values_are_leave_one_out_t_tests() -> None:
    rng = np.random.default_rng(4)
    clean = rng.normal(1.0, 0.1, size=300)
    adversarial = np.stack([clean, clean + 0.5], axis=1)
    pv = p_values_loss(clean, adversarial)
    for r in (0, 150):
        others = np.delete(clean, r)
        m = len(others)
        t = (clean[r] - others.mean()) / (others.std(ddof=1) * math.sqrt(1 + 1 / m))
        assert pv[r, 0] == pytest.approx(2 * stats.t.sf(abs(t), m - 1), rel=1e-9)
    assert stats.kstest(pv[:, 0], "uniform").pvalue > 1e-3
    assert pv[:, 1].mean() < 1e-3  # five standard deviations out


def test_simulation_departs_from_clean_training_around_eps_star(one_thread: None) -> None:
    """Small budgets keep the p-values near 0.5 and the trajectories close; large ones drive
    them to 0 and apart (Figs. 2-3)."""
    result = simulate(d=3, n=60, repeats=60, eps=[0.01, 0.05, 1.0, 3.0], seed=0)
    assert result.eps_star == pytest.approx(math.sqrt(3 / 60))
    assert result.p_value_params[0] > 0.3 and result.p_value_loss[0] > 0.3
    assert result.p_value_params[-1] < 0.01 and result.p_value_loss[-1] < 0.01
    final = result.relative_difference[-1]
    assert list(final) == sorted(final)
    assert result.relative_difference.shape == (result.steps, 4)
    summary = result.summary()
    for key in ("eps", "eps_star", "p_value_params", "p_value_loss", "relative_difference"):
        assert key in summary


def test_two_layer_network_clean_gradient_and_simulation(one_thread: None) -> None:
    """Proposition 1's network: at ε = 0 its gradient is the derivative of the squared loss;
    its simulation runs and gives p-values in [0, 1]."""
    sim = SIMULATORS.create("two_layer", hidden=6, init_scale=0.5)
    rng = np.random.default_rng(5)
    x, y, _ = draw_data(rng, 2, 3, 10, 1.0)
    params = sim.init(rng, 2, 1, 3).astype(np.float64)
    eps = np.zeros(1)
    _, grad = sim.loss_and_grad(params, x, y, eps)
    step = 1e-2
    shift = np.zeros_like(params)
    shift[0, 0, 1, 2] = step
    up, _ = sim.loss_and_grad(params + shift, x, y, eps)
    down, _ = sim.loss_and_grad(params - shift, x, y, eps)
    assert (up - down)[0, 0] / (2 * step) == pytest.approx(grad[0, 0, 1, 2], rel=1e-2)
    result = simulate("two_layer", d=2, n=20, repeats=12, eps=[0.05, 2.0], steps=40, hidden=8)
    assert all(0 <= p <= 1 for p in result.p_value_params + result.p_value_loss)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_phase_simulate_json_and_figures(tmp_path, capsys, one_thread) -> None:
    out = tmp_path / "sim"
    code, stdout, _ = _run(
        capsys, "phase", "simulate", "--d", "2", "--n", "20", "--repeats", "12",
        "--eps", "0.05,1/2", "--steps", "60", "--json", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    payload = json.loads(stdout)
    assert payload["eps"] == [0.05, 0.5]
    assert payload["eps_star"] == pytest.approx(math.sqrt(0.1))
    for key in ("p_value_params", "p_value_loss", "relative_difference"):
        assert len(payload[key]) == 2
    assert (out / "simulation.json").is_file()
    assert (out / "p_values.png").stat().st_size > 0
    assert (out / "relative_difference.png").stat().st_size > 0


@pytest.mark.parametrize(
    "argv,key",
    [
        (["--d", "0", "--n", "10"], "--d"),
        (["--d", "3", "--n", "-1"], "--n"),
        (["--d", "3", "--n", "10", "--repeats", "9"], "--repeats"),
        (["--d", "20", "--n", "10", "--repeats", "15"], "--repeats"),
        (["--d", "3", "--n", "10", "--eps", "0.2,0.1"], "--eps"),
        (["--d", "3", "--n", "10", "--eps", "0.2"], "--eps"),
        (["--d", "3", "--n", "10", "--eps", "0.1,x"], "--eps"),
        (["--d", "3", "--n", "10", "--hidden", "4"], "--hidden"),
    ],
)
def test_phase_simulate_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path, capsys, argv, key
) -> None:
    out = tmp_path / "sim"
    code, stdout, stderr = _run(capsys, "phase", "simulate", *argv, "--out", str(out))
    assert code == 2
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"robustlab phase: error: {key}=")
    assert not out.exists()


@pytest.mark.parametrize("name", SIMULATORS.names())
def test_every_simulator_starts_clean_and_adversarial_training_together(name, one_thread) -> None:
    """Every registered simulator: the same start in every slot (clean and each ε), results of
    the documented shapes, p-values in [0, 1]."""
    sim = SIMULATORS.create(name)
    rng = np.random.default_rng(6)
    start = sim.init(rng, 4, 3, 2)
    assert np.array_equal(start[:, 0], start[:, 1]) and np.array_equal(start[:, 0], start[:, 2])
    result = simulate(name, d=2, n=20, repeats=12, eps=[0.01, 1.0], steps=30)
    assert result.relative_difference.shape == (30, 2)
    assert all(0 <= p <= 1 for p in result.p_value_params + result.p_value_loss)
    assert result.adversarial_loss.shape == (12, 2) and result.clean_loss.shape == (12,)
