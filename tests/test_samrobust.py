"""samrobust/: the threat-model vocabulary, the atomic writers and strict JSON, the seed mixer."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from samrobust.files import jsonable, write_json_atomic, write_text_atomic
from samrobust.seeds import (ATTACK_MULT, BATCH_MULT, EPOCH_MULT, EVAL_RANK_MULT, RANK_MULT, RESTART_MULT,
                          mix_seed)
from samrobust.threat import Norm, attack_label, dual, format_eps, norm_name, normalize_norm, parse_eps, parse_norm


@pytest.mark.parametrize("spelling", ["inf", "linf", "l_inf", "infinity", " LINF ", float("inf"), Norm.LINF])
def test_linf_spellings(spelling):
    assert parse_norm(spelling) is Norm.LINF and normalize_norm(spelling) == "inf" and norm_name(spelling) == "linf"


@pytest.mark.parametrize("spelling", [2, 2.0, "2", "l2", "l_2", "L2", Norm.L2])
def test_l2_spellings(spelling):
    assert parse_norm(spelling) is Norm.L2 and normalize_norm(spelling) == "l2" and norm_name(spelling) == "l2"


@pytest.mark.parametrize("bad", [1, "l1", "3", True, None, "2.0x"])
def test_bad_norm(bad):
    with pytest.raises(ValueError, match="norm must be"):
        parse_norm(bad)


def test_norm_is_its_value_in_strings_and_json():
    assert f"{Norm.LINF}" == "inf" and str(Norm.L2) == "l2" and Norm.LINF == "inf"
    assert json.dumps({"norm": Norm.L2}) == '{"norm": "l2"}'
    assert type(normalize_norm("linf")) is str


def test_dual():
    assert dual("inf") == 1.0 and dual(2) == 2.0


def test_eps_and_labels():
    assert parse_eps("8/255") == 8 / 255 and parse_eps("0.5") == 0.5
    assert format_eps(8 / 255) == "8/255" and format_eps(0.5) == "0.5"
    assert attack_label("inf", 8 / 255) == "linf_8/255"
    assert attack_label("l2", 0.5) == "l2_0.5"
    assert attack_label("inf", 0.1, fmt="g") == "linf_0.1"
    assert attack_label(2, 1.0, fmt="g") == "l2_1"
    assert attack_label("inf", 8 / 255, fmt="g") == f"linf_{8 / 255:g}"
    with pytest.raises(ValueError):
        attack_label("inf", 0.1, fmt="x")


def test_jsonable_and_write_json_atomic(tmp_path):
    obj = {"a": float("nan"), "b": np.float32(0.5), "c": (np.int64(3), np.inf), "d": np.array([1.0, -np.inf]),
           1: np.bool_(True)}
    assert jsonable(obj) == {"a": None, "b": 0.5, "c": [3, None], "d": [1.0, None], "1": True}
    path = write_json_atomic(tmp_path / "sub" / "x.json", obj)
    text = path.read_text()
    assert text.endswith("\n") and json.loads(text) == jsonable(obj)
    assert not [p for p in path.parent.iterdir() if p.name != "x.json"]          # no temporary file left


def test_atomic_write_uses_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = write_text_atomic(tmp_path / "t.txt", "hi")
    finally:
        os.umask(old)
    assert p.read_text() == "hi" and (p.stat().st_mode & 0o777) == 0o644


def test_mix_seed_reproduces_the_existing_formulas():
    for seed, a, b, c, d in [(0, 0, 0, 0, 0), (1, 2, 3, 4, 5), (12345, 99, 7, 4, 3), (2 ** 40, 10 ** 6, 1, 2, 3)]:
        assert mix_seed(seed, (a, BATCH_MULT), (b, ATTACK_MULT), (c, RESTART_MULT), (d, EVAL_RANK_MULT)) == \
            (seed * 1_000_003 + a * 7919 + b * 104_729 + c * 31 + d * 15_485_863) % (2 ** 62)
        assert mix_seed(seed, (a, 1), modulus=2 ** 63) == (seed * 1_000_003 + a) % (2 ** 63)
        assert mix_seed(seed, (a, EPOCH_MULT), (b, RANK_MULT), (c, 1)) == \
            (seed * 1_000_003 + a * 9_176 + b * 7919 + c) % (2 ** 62)
    assert math.isfinite(mix_seed(1))


def test_simulation_seed_offsets_keep_their_values():
    """The named offsets of simulations/ are the numbers the results were produced with."""
    from samrobust import seeds
    assert (seeds.SIM_TRAIN_SEED_OFFSET, seeds.S1_TEST_SEED_OFFSET, seeds.S1_WEIGHTS_MULT,
            seeds.S1_PGD_STEPS_SEED_OFFSET) == (1000, 10_000, 100, 20_000)


def test_exit_fast_flushes_output_and_keeps_the_status():
    """samrobust.cli.exit_fast skips the interpreter's teardown but not buffered output or the exit status."""
    import subprocess
    import sys

    code = ("import sys; from samrobust.cli import exit_fast; print('out', end=''); "
            "print('err', end='', file=sys.stderr); exit_fast(3)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out", "err")
