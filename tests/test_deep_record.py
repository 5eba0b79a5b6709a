"""deep/record.py, the run record's one reader and one writer: every shipped result reads and writes back
unchanged (up to the documented layout moves: saliency maps to the sidecar, the old "at_variant" key into
the method), the saliency sidecar, the science/runtime split of config_matches, and deep.run / deep.evaluate /
deep.saliency / paper_figs.loaders going through the record."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

import deep.run as R
from deep.evaluate import read_run_json, store_entry
from deep.record import (MAP_KEYS, NotARecord, RecordError, RunRecord, load_saliency_maps, read_record,
                         record_files, sidecar_path, write_record)
from deep.saliency import store_saliency
from deep.train import AT_VARIANTS, RUNTIME_FIELDS, TrainConfig, at_variant_config, config_matches
from paper_figs.loaders import CorruptInput, load_deep, saliency_maps

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [p for p in sorted((ROOT / "results").rglob("*.json"))
           if "clean_acc" in json.loads(p.read_text())]
NOT_RECORDS = [p for p in sorted((ROOT / "results").rglob("*.json")) if p not in SHIPPED]
VARIANT = ROOT / "results" / "beyond" / "equal-cost" / "fashion-mnist" / "fgsm-rs_linf_0.1_s0.json"
WITH_MAPS = ROOT / "results" / "deep" / "fashion-mnist" / "st_s0.json"


def _upgraded(old: dict) -> dict:
    """The documented layout move of the cheap AT variants: "at_variant" folded into the method."""
    new = dict(old)
    variant = new.pop("at_variant", None)
    if variant:
        new["method"] = variant
        new["config"] = dict(new["config"], method=variant)
    return new


def _written(path: Path) -> dict:
    """The record at ``path`` as written, with its sidecar's maps put back inline."""
    data = json.loads(path.read_text())
    side = sidecar_path(path)
    if side.exists():
        maps = json.loads(side.read_text())
        assert data["saliency"].pop("maps_file") == side.name and maps.pop("run_id") == data["run_id"]
        data["saliency"].update(maps)
    return data


# ------------------------------------------------------------------------------- reader and writer

def test_every_shipped_result_is_found():
    assert len(SHIPPED) >= 80 and VARIANT in SHIPPED and WITH_MAPS in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "results")))
def test_shipped_result_round_trips(path, tmp_path):
    """write(read(x)) == x, up to the sidecar move and the at_variant fold (the key dropped, a variant it
    names becoming the method); reading it again gives the same record; a result without saliency maps or an
    at_variant key is written back key for key."""
    old = json.loads(path.read_text())
    rec = read_record(path)
    assert rec.to_dict(with_maps=True) == _upgraded(old)
    out = write_record(tmp_path / path.name, rec)
    assert _written(out) == _upgraded(old)
    assert read_record(out).to_dict() == rec.to_dict()
    if "saliency" not in old:
        assert json.loads(out.read_text()) == _upgraded(old) and not sidecar_path(out).exists()
    if "saliency" not in old and "at_variant" not in old:
        assert json.loads(out.read_text()) == old


@pytest.mark.parametrize("path", NOT_RECORDS, ids=lambda p: p.name)
def test_other_shipped_json_files_are_not_records(path):
    with pytest.raises(NotARecord, match="not a deep.run result"):
        read_record(path)


def test_unknown_and_absent_keys_round_trip(tmp_path):
    """A key this version does not know is kept; keys an old record lacks get their meaning on read and
    stay absent when written back."""
    old = {"clean_acc": 0.5, "method": "st", "seed": 0, "future_key": {"a": [1, 2]}}
    (tmp_path / "st_s0.json").write_text(json.dumps(old))
    rec = read_record(tmp_path / "st_s0.json")
    assert rec.extra == {"future_key": {"a": [1, 2]}} and rec.run_id == "st_s0"
    assert rec.arch == "preact-resnet18" and rec.bn_stats == "first" and rec.cuda_graph is False
    assert rec.to_dict() == old
    write_record(tmp_path / "st_s0.json", rec)
    assert json.loads((tmp_path / "st_s0.json").read_text()) == old


@pytest.mark.parametrize("text,err,words", [("{", RecordError, "not valid JSON"), ("[1]", RecordError, "list"),
                                            ('{"a": 1}', NotARecord, "no clean_acc")])
def test_unreadable_files_raise_naming_the_file(tmp_path, text, err, words):
    (tmp_path / "r.json").write_text(text)
    with pytest.raises(err, match=words) as e:
        read_record(tmp_path / "r.json")
    assert "r.json" in str(e.value) and isinstance(e.value, ValueError)


# ----------------------------------------------------------------------------- cheap AT variants

def test_old_at_variant_record_reads_as_its_own_method():
    """Stored as method "at" + at_variant "fgsm-rs" (config method "at"): read as method fgsm-rs."""
    raw = json.loads(VARIANT.read_text())
    assert raw["method"] == "at" and raw["at_variant"] == "fgsm-rs" and raw["config"]["method"] == "at"
    rec = read_record(VARIANT)
    assert rec.method == rec.config["method"] == "fgsm-rs" and "at_variant" not in rec.to_dict()
    assert rec.adversarial and rec.method_family == "at" and rec.eps == 0.1 and rec.norm == "linf"
    cfg = TrainConfig(**rec.config)
    assert R.run_id(cfg) == rec.run_id == VARIANT.stem
    assert config_matches(raw["config"], cfg) and config_matches(rec.config, cfg)


@pytest.mark.parametrize("name", sorted(AT_VARIANTS))
def test_every_old_variant_record_maps(name):
    for path in sorted(VARIANT.parent.glob(f"{name}_*.json")):
        assert read_record(path).method == name


def test_old_plain_at_record_stays_at():
    rec = read_record(ROOT / "results" / "deep" / "fashion-mnist" / "at_linf_0.1_s0.json")
    assert rec.method == rec.method_family == "at"


def test_at_with_the_settings_of_a_variant_is_not_a_variant():
    """No recovery from the attack settings: config_matches lets a stored "at" stand for a current variant
    (how variants used to be stored, the settings compared as usual), not the other way round."""
    variant = TrainConfig(**at_variant_config("pgd1", 0.1))
    look_alike = dict(variant.to_dict(), method="at")
    assert config_matches(look_alike, variant)
    assert not config_matches(variant.to_dict(), TrainConfig(**look_alike))
    assert not config_matches(dict(look_alike, attack_steps=2), variant)
    assert not config_matches(dict(look_alike, method="sam"), variant)


# ---------------------------------------------------------------------------------- saliency sidecar

def test_inline_maps_move_to_the_sidecar_and_read_from_both_layouts(tmp_path):
    old = json.loads(WITH_MAPS.read_text())
    assert set(MAP_KEYS) <= set(old["saliency"])
    inline = shutil.copy(WITH_MAPS, tmp_path / "inline.json")
    moved = write_record(tmp_path / "st_s0.json", read_record(WITH_MAPS))
    stored = json.loads(moved.read_text())
    assert stored["saliency"]["maps_file"] == "st_s0.saliency.json" and not set(MAP_KEYS) & set(stored["saliency"])
    assert moved.stat().st_size < WITH_MAPS.stat().st_size / 2
    want = {k: old["saliency"][k] for k in MAP_KEYS}
    for path in (inline, moved):
        assert load_saliency_maps(path) == want
        assert saliency_maps(path) == want
        assert read_run_json(path)["saliency"] == old["saliency"] | ({"maps_file": "st_s0.saliency.json"}
                                                                    if path == moved else {})
    assert record_files(tmp_path) == [Path(inline), moved]
    assert read_record(moved).saliency_maps is None          # a sidecar is read only when asked


def test_a_missing_sidecar_is_a_clear_error(tmp_path):
    moved = write_record(tmp_path / "st_s0.json", read_record(WITH_MAPS))
    sidecar_path(moved).unlink()
    with pytest.raises(RecordError, match="st_s0.saliency.json"):
        load_saliency_maps(moved)
    with pytest.raises(CorruptInput, match="st_s0.saliency.json"):
        saliency_maps(moved)
    assert read_run_json(moved)["clean_acc"] == read_record(moved).clean_acc     # the run itself still reads


def test_saliency_store_writes_the_sidecar(tmp_path):
    path = shutil.copy(WITH_MAPS, tmp_path / "st_s0.json")
    entry = {"n": 3, "threshold": 0.1, "object_mass": 0.5, "maps": [[[1.0]]], "map_labels": [4],
             "map_images": [[[0.5]]]}
    store_saliency(Path(path), entry)
    stored = json.loads(Path(path).read_text())
    assert stored["saliency"] == {"n": 3, "threshold": 0.1, "object_mass": 0.5, "maps_file": "st_s0.saliency.json"}
    assert load_saliency_maps(path) == {"maps": [[[1.0]]], "map_labels": [4], "map_images": [[[0.5]]]}


def test_load_deep_skips_sidecars_and_reads_both_layouts(tmp_path):
    folder = tmp_path / "deep" / "fashion-mnist"
    folder.mkdir(parents=True)
    shutil.copy(WITH_MAPS, folder / "st_s0.json")
    write_record(folder / "st_s1.json", read_record(WITH_MAPS.with_name("st_s1.json")))
    (runs,) = load_deep(tmp_path).values()
    assert [r.path.name for r in runs] == ["st_s0.json", "st_s1.json"]
    assert all(saliency_maps(r)["maps"] for r in runs)
    assert runs[0].raw == json.loads(WITH_MAPS.read_text())


def test_evaluate_store_entry_updates_through_the_record(tmp_path):
    """deep.evaluate's rewrite keeps every other key; an old-layout record comes out in the current one."""
    path = Path(shutil.copy(VARIANT, tmp_path / VARIANT.name))
    entry = {"kind": "pgd", "n": 5, "robust": {"linf_0.1": 0.2}, "seconds": 1.0}
    store_entry(path, "pgd-20x1-ce", entry, replace=True)
    new = json.loads(path.read_text())
    assert new.pop("extra_evals")["pgd-20x1-ce"] == entry
    old = _upgraded(json.loads(VARIANT.read_text()))
    old.get("extra_evals", {}).pop("pgd-20x1-ce", None)
    assert {k: v for k, v in new.items()} == {k: v for k, v in old.items() if k != "extra_evals"}


# ------------------------------------------------------------------------ science vs runtime settings

BASE = TrainConfig(dataset="synthetic", method="sam", rho=0.1, epochs=2)


@pytest.mark.parametrize("change", [dict(device="cpu"), dict(device="cuda:1"), dict(channels_last=True),
                                    dict(check_every=7)])
def test_a_runtime_change_still_matches(change):
    assert set(change) <= RUNTIME_FIELDS
    assert config_matches(BASE.to_dict(), TrainConfig(**{**BASE.to_dict(), **change}))
    assert config_matches(dict(BASE.to_dict(), **change), BASE)


@pytest.mark.parametrize("change", [dict(rho=0.2), dict(bf16=True), dict(bf16=False), dict(epochs=3),
                                    dict(lr=0.05), dict(seed=1), dict(width=8), dict(bn_stats="all"),
                                    dict(augment=True), dict(n_train=100)])
def test_a_science_change_does_not_match(change):
    assert not set(change) & RUNTIME_FIELDS
    assert not config_matches(BASE.to_dict(), TrainConfig(**{**BASE.to_dict(), **change}))


def test_an_old_record_without_new_fields_still_matches():
    """Fields added later (bn_stats, arch, pgd_check, ...) missing from a stored configuration match their
    default, runtime fields missing or different as well."""
    old = {k: v for k, v in BASE.to_dict().items()
           if k not in ("bn_stats", "arch", "pgd_check", "attack_random_start", "check_every")}
    assert config_matches(old, BASE)
    assert config_matches(dict(old, device="cuda"), BASE)
    assert not config_matches(old, TrainConfig(**{**BASE.to_dict(), "bn_stats": "all"}))
    for path in SHIPPED:                        # every shipped configuration matches its own TrainConfig
        rec = read_record(path)
        assert config_matches(rec.config, TrainConfig(**rec.config)), path


def _record_file(tmp_path, cfg: TrainConfig, spec, precision: str) -> Path:
    path = tmp_path / f"{R.run_id(cfg)}.json"
    write_record(path, RunRecord(run_id=R.run_id(cfg), method=cfg.method, seed=cfg.seed, clean_acc=0.5,
                                 robust={}, config=cfg.to_dict(), eval=spec.eval_record(),
                                 train_precision=precision))
    return path


def _tiny_spec(extra=()):
    parser = R.build_parser()
    return R.resolve_spec(parser, parser.parse_args(
        ["--dataset", "synthetic", "--methods", "st", "--epochs", "1", "--width", "4", "--device", "cpu",
         *extra]))


def test_finished_run_is_kept_across_runtime_changes_but_not_science_ones(tmp_path):
    spec = _tiny_spec()
    cfg = R.make_configs(spec)[0]
    path = _record_file(tmp_path, dataclasses.replace(cfg, device="cuda", channels_last=True, check_every=3),
                        spec, "fp32")
    assert R._finished_run(path, cfg, spec)["skipped"] is True
    with pytest.raises(ValueError, match="different configuration"):
        R._finished_run(path, dataclasses.replace(cfg, lr=cfg.lr / 2), spec)


def test_finished_run_compares_the_precision_the_device_chose(tmp_path):
    """bf16 left to the device (None): a run trained in bf16 autocast (on a GPU) is not this CPU's fp32 run;
    an explicit bf16 setting is compared as a configuration field."""
    spec = _tiny_spec()
    cfg = R.make_configs(spec)[0]
    assert cfg.bf16 is None and spec.device == torch.device("cpu")
    with pytest.raises(ValueError, match="different configuration"):
        R._finished_run(_record_file(tmp_path, cfg, spec, "bf16 autocast"), cfg, spec)
    assert R._finished_run(_record_file(tmp_path, cfg, spec, "fp32"), cfg, spec)["skipped"]
