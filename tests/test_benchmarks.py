"""The benchmark harness: interleaved timing, statistics, the report (the cases run in `make bench`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    spec.loader.exec_module(module)
    return module


def test_compare_interleaves_alternating_order_after_warmup() -> None:
    bench = _bench()
    calls: list[str] = []
    result = bench.compare(
        lambda: calls.append("ours"),
        lambda: calls.append("ref"),
        repeats=4,
        device=torch.device("cpu"),
    )
    assert calls == ["ours", "ref", "ours", "ref", "ref", "ours", "ours", "ref", "ref", "ours"]
    assert result["ours"]["runs"] == result["reference"]["runs"] == 4
    assert result["ours"]["min"] <= result["ours"]["median"] <= result["ours"]["max"]
    assert result["ratio"] == result["ours"]["median"] / result["reference"]["median"]


def test_report_has_a_row_per_case_with_ratio_and_target() -> None:
    bench = _bench()
    report = {
        "profile": "cpu",
        "machine": bench.machine(),
        "cases": {
            "pgd_at": {"description": "step", "ours": bench.stats([1.0, 2.0, 3.0]), "reference": bench.stats([2.0]),
                       "ratio": 1.0, "target": 1.02, "met": True, "extra": {"clean_step_s": 0.25}},
            "demo": {"description": "job", "ours": bench.stats([30.0]), "reference": None, "ratio": None, "target": None},
        },
    }  # fmt: skip
    text = bench.markdown(report)
    assert "torch " + torch.__version__ in text
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| pgd_at") or line.startswith("| demo")
    ]
    assert "| 2 | 2 | 1.000 | <= 1.02 | yes | clean_step_s 0.25 |" in rows[0]
    assert "| 30 | - | - | - | - |" in rows[1]


def test_data_case_reference_dataset_yields_float_crops_with_their_labels() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import references

    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    dataset = references.TransformedImages(images, torch.arange(4))
    torch.manual_seed(0)
    x, y = dataset[2]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and int(y) == 2
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_diagnostics_cases_are_registered_and_run_on_a_tiny_size(one_thread) -> None:
    """`spectra` (exact spectra of a WRN, batched vs a per-frequency loop) and `diagnose_gaps`
    (the command vs one evaluation pass), at a size that runs in seconds."""
    import argparse

    bench = _bench()
    assert {"spectra", "diagnose_gaps"} <= set(bench.CASES.names())
    args = argparse.Namespace(
        device=torch.device("cpu"),
        spectra_depth=16, spectra_width=1, spectra_repeats=1,
        gaps_points=32, gaps_repeats=1, gaps_warmup=0,
    )  # fmt: skip
    spectra = bench.CASES.get("spectra")(args)
    assert spectra["extra"]["layers"] == 16  # 13 3x3 convolutions, 2 1x1 shortcuts, the head
    assert spectra["extra"]["max_abs_diff_vs_loop"] < 1e-4  # the same values as the plain loop
    assert len(spectra["extra"]["distinct_convs"]) == 4 and spectra["ratio"] > 0
    gaps = bench.CASES.get("diagnose_gaps")(args)
    assert gaps["extra"]["points_attacked"] == 64 and gaps["target"] == 1.1
    # The same attack on the same points: robust accuracies agree up to PGD's random starts.
    assert (
        abs(gaps["extra"]["robust_acc_gaps"] - gaps["extra"]["robust_acc_evaluate_robustness"])
        < 0.1
    )
    assert gaps["ours"]["runs"] == gaps["reference"]["runs"] == 1


def test_every_profile_sets_every_size_and_runs_registered_cases(tmp_path) -> None:
    """Each profile's default cases are registered, and a case receives every size of
    ``PROFILE_SIZES`` at its profile's value."""
    bench = _bench()  # a fresh module: the stubs below stay in this test
    for profile, cases in bench.DEFAULT_CASES.items():
        assert cases and set(cases) <= set(bench.CASES.names()), profile
    received: dict[str, dict] = {}

    def stub(name: str):
        def case(args) -> dict:
            received[name] = dict(vars(args))
            return {}

        return case

    bench.CASES.get = stub
    bench.markdown = lambda report: ""
    bench.machine = lambda: {"cuda_device": None}
    for index, flags in enumerate(([], ["--gpu"])):
        bench.main(["--case", "pgd_at", "--out", str(tmp_path), *flags])
        sizes = {key: received["pgd_at"][key] for key in bench.PROFILE_SIZES}
        assert sizes == {key: pair[index] for key, pair in bench.PROFILE_SIZES.items()}
        assert received["pgd_at"]["device"].type == ("cuda" if flags else "cpu")
