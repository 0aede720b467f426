"""``training.mixed_precision: auto``: the probe, the choice per hardware and backbone, the record
in the run's config.yaml, the dry-run line and resuming on a machine that would choose otherwise.

tests/conftest.py pins the hardware to a CPU without bfloat16 (``KERASFT_TEST_HARDWARE=cpu``);
these tests pin other hardware through the same hook or by replacing ``probe_hardware``.
"""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

import kerasft.training.precision as precision
from kerasft.cli import main
from kerasft.errors import ConfigError
from kerasft.training.precision import Hardware
from tests.test_resume import Interrupted, _config, _interrupt_at

BF16_CPU = "cpu:fpu,avx512f,avx512_bf16"


@pytest.fixture
def verified_tiny(monkeypatch):
    """tiny_cnn verified for both 16-bit policies (the real table has no row for it)."""
    monkeypatch.setitem(precision.VERIFIED, "tiny_cnn", {"mixed_bfloat16": "test",
                                                         "mixed_float16": "test"})


@pytest.mark.parametrize("hw, policy, why", [
    (Hardware("tpu"), "mixed_bfloat16", "TPU"),
    (Hardware("gpu", (9, 0)), "mixed_bfloat16", "GPU compute capability 9.0"),
    (Hardware("gpu", (8, 0)), "mixed_bfloat16", "GPU compute capability 8.0"),
    (Hardware("gpu", (7, 5)), "mixed_float16", "GPU compute capability 7.5 (float16 tensor"),
    (Hardware("gpu", (7, 0)), "mixed_float16", "GPU compute capability 7.0"),
    (Hardware("gpu", (6, 1)), "none", "GPU compute capability 6.1 (no float16"),
    (Hardware("gpu", None), "none", "GPU of unknown compute capability"),
    (Hardware("cpu", cpu_flags=frozenset({"avx512f", "avx512_bf16"})), "mixed_bfloat16",
     "CPU flags include avx512_bf16"),
    (Hardware("cpu", cpu_flags=frozenset({"amx_tile", "amx_bf16"})), "mixed_bfloat16",
     "CPU flags include amx_bf16"),
    (Hardware("cpu", cpu_flags=frozenset({"avx2", "avx512f"})), "none",
     "CPU without avx512_bf16/amx_bf16"),
    (Hardware("cpu", cpu_flags=None), "none", "CPU flags unknown on"),
])
def test_auto_picks_the_hardware_policy_for_a_verified_backbone(verified_tiny, hw, policy, why):
    chosen = precision.choose(hw, "tiny_cnn")
    assert chosen.policy == policy and chosen.auto
    assert chosen.reason.startswith(f"auto: {why}"), chosen.reason
    assert chosen.keras_policy == ("float32" if policy == "none" else policy)


def test_auto_stays_float32_for_a_backbone_without_a_verified_row(monkeypatch):
    monkeypatch.setitem(precision.VERIFIED, "tiny_cnn", {"mixed_float16": "test"})
    chosen = precision.choose(Hardware("tpu"), "tiny_cnn")
    assert chosen.policy == "none"
    assert chosen.reason == ("auto: TPU, but mixed_bfloat16 is not verified for tiny_cnn "
                             "(docs/BENCHMARKS.md, Precision): float32")
    assert precision.choose(Hardware("gpu", (7, 5)), "tiny_cnn").policy == "mixed_float16"
    assert precision.choose(Hardware("tpu"), "resnet101").policy == "none"  # no row at all
    # Every row of the real table points at its evidence.
    for backbone, policies in precision.VERIFIED.items():
        for policy, evidence in policies.items():
            assert policy in ("mixed_float16", "mixed_bfloat16"), backbone
            assert evidence if backbone == "tiny_cnn" else "BENCHMARKS" in evidence


def test_probe_reads_cpu_flags_gpu_capabilities_and_the_strategy(tmp_path, monkeypatch):
    import tensorflow as tf

    monkeypatch.delenv(precision.HARDWARE_ENV)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    flags = precision.cpu_flags(str(cpuinfo))
    assert "avx512_bf16" in flags and "amx_bf16" not in flags
    assert precision.cpu_flags(str(tmp_path / "missing")) is None
    monkeypatch.setattr(precision.sys, "platform", "darwin")
    assert precision.cpu_flags(str(cpuinfo)) is None  # unknown, not "no bfloat16"
    monkeypatch.undo()
    monkeypatch.delenv(precision.HARDWARE_ENV)

    details = {"GPU:0": {"compute_capability": (8, 6)}, "GPU:1": {"compute_capability": (7, 0)}}
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: list(details) if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: details[d])
    assert precision.probe_hardware("mirrored") == Hardware("gpu", (7, 0))  # the slowest GPU
    assert precision.probe_hardware("tpu") == Hardware("tpu")
    on_cpus = precision.probe_hardware("mirrored", ["/cpu:0", "/cpu:1"])
    assert on_cpus.kind == "cpu"
    details = {"GPU:0": {}}  # no capability reported
    assert precision.probe_hardware("default") == Hardware("gpu", None)

    monkeypatch.setenv(precision.HARDWARE_ENV, "gpu:7.5")
    assert precision.probe_hardware("tpu") == Hardware("gpu", (7, 5))
    monkeypatch.setenv(precision.HARDWARE_ENV, "cpu:unknown")
    assert precision.probe_hardware("default") == Hardware("cpu", cpu_flags=None)
    monkeypatch.setenv(precision.HARDWARE_ENV, "quantum")
    with pytest.raises(ConfigError, match=r"^expected cpu, .* or tpu\. "
                                          r"Received: KERASFT_TEST_HARDWARE='quantum'$"):
        precision.probe_hardware("default")


def _tiny(tmp_path, lines, **training):
    from kerasft.api import build_finetuner

    cfg = _config(tmp_path, **training)
    cfg["stages"] = [{"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.01}]
    return build_finetuner(cfg, log=lines.append), cfg


def test_auto_is_the_default_and_trains_under_the_chosen_policy(tmp_path, monkeypatch,
                                                                verified_tiny):
    import keras

    from kerasft.config import Config

    assert Config().training.mixed_precision == "auto"
    monkeypatch.setenv(precision.HARDWARE_ENV, BF16_CPU)
    lines: list[str] = []
    ft, _ = _tiny(tmp_path, lines)
    ft.fit(evaluate=False)
    assert ft.backbone.network.get_layer("conv1").compute_dtype == "bfloat16"
    assert not isinstance(ft.model.optimizer, keras.optimizers.LossScaleOptimizer)
    reason = ("auto: CPU flags include avx512_bf16; tiny_cnn verified at equal quality "
              "(docs/BENCHMARKS.md, Precision)")
    line = f"mixed precision: mixed_bfloat16 ({reason})"
    assert [x for x in lines if x.startswith("mixed precision:")] == [line]
    assert line in (ft.run_dir / "train.log").read_text().splitlines()
    recorded = yaml.safe_load((ft.run_dir / "config.yaml").read_text())["training"]
    assert recorded["mixed_precision"] == "mixed_bfloat16"
    assert recorded["mixed_precision_reason"] == reason

    # An older GPU: float16 with loss scaling.
    monkeypatch.setenv(precision.HARDWARE_ENV, "gpu:7.0")
    ft, _ = _tiny(tmp_path, [])
    ft.build(["cat", "dog", "owl"])
    assert ft.config.training.mixed_precision == "mixed_float16"
    assert ft.backbone.network.get_layer("conv1").compute_dtype == "float16"


@pytest.mark.slow
def test_auto_records_float32_and_why_on_plain_hardware(tmp_path):
    lines: list[str] = []
    ft, _ = _tiny(tmp_path, lines)  # conftest: a CPU without bfloat16
    ft.fit(evaluate=False)
    assert ft.backbone.network.get_layer("conv1").compute_dtype == "float32"
    recorded = yaml.safe_load((ft.run_dir / "config.yaml").read_text())["training"]
    assert recorded["mixed_precision"] == "none"
    assert recorded["mixed_precision_reason"] == \
        "auto: CPU without avx512_bf16/amx_bf16: float32"
    assert "mixed precision: none (auto: CPU without avx512_bf16/amx_bf16: float32)" in lines
    # An explicit policy is used as given; the reason says so in the log.
    explicit: list[str] = []
    ft, _ = _tiny(tmp_path, explicit, mixed_precision="mixed_bfloat16")
    ft.fit(evaluate=False)
    assert "mixed precision: mixed_bfloat16 (training.mixed_precision set in the config)" \
        in explicit
    assert yaml.safe_load((ft.run_dir / "config.yaml").read_text())["training"][
        "mixed_precision_reason"] is None


def test_dry_run_shows_what_auto_chooses_without_setting_it(tmp_path, monkeypatch,
                                                            verified_tiny):
    import keras

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path)))
    result = CliRunner().invoke(main, ["train", str(config), "--dry-run"],
                                env={precision.HARDWARE_ENV: "gpu:7.5"})
    assert result.exit_code == 0, result.output
    assert ("mixed precision: mixed_float16 (auto: GPU compute capability 7.5 (float16 tensor "
            "cores, no bfloat16); tiny_cnn verified at equal quality (docs/BENCHMARKS.md, "
            "Precision))") in result.output.splitlines()
    assert keras.mixed_precision.global_policy().name == "float32"
    assert not (tmp_path / "runs").exists()

    from kerasft.api import build_finetuner

    ft = build_finetuner(_config(tmp_path), log=lambda s: None)
    plan = ft.plan()
    assert plan["mixed_precision"] == {
        "policy": "none", "reason": "auto: CPU without avx512_bf16/amx_bf16: float32"}
    assert ft.config.training.mixed_precision == "auto"  # the plan changes nothing


@pytest.mark.slow
def test_resume_on_another_machine_keeps_the_recorded_policy(tmp_path, monkeypatch,
                                                             verified_tiny):
    cfg = _config(tmp_path)
    monkeypatch.setenv(precision.HARDWARE_ENV, BF16_CPU)
    _interrupt_at(monkeypatch, "epoch@3")
    from kerasft.api import build_finetuner

    with pytest.raises(Interrupted):
        build_finetuner(cfg, log=lambda s: None).fit(evaluate=False)
    monkeypatch.undo()  # back to conftest's CPU without bfloat16: auto would choose none
    monkeypatch.setitem(precision.VERIFIED, "tiny_cnn", {"mixed_bfloat16": "test"})
    (run_dir,) = (tmp_path / "runs").iterdir()
    lines: list[str] = []
    ft = build_finetuner(cfg, log=lines.append)
    ft.fit(resume=True, evaluate=False)  # no "config changed" refusal
    assert ft.backbone.network.get_layer("conv1").compute_dtype == "bfloat16"
    notes = [x for x in lines if x.startswith("mixed precision: resuming")]
    assert notes == ["mixed precision: resuming with the run's recorded mixed_bfloat16; auto "
                     "would choose none on this machine (auto: CPU without "
                     "avx512_bf16/amx_bf16: float32)"]
    assert notes[0] in (run_dir / "train.log").read_text()
    training = yaml.safe_load((run_dir / "config.yaml").read_text())["training"]
    assert training["mixed_precision"] == "mixed_bfloat16"
    assert training["mixed_precision_reason"].startswith("auto: CPU flags include avx512_bf16")


@pytest.mark.slow
def test_resume_with_an_explicit_other_policy_is_still_a_config_change(tmp_path, monkeypatch):
    from kerasft.api import build_finetuner
    from kerasft.errors import KerasftError

    cfg = _config(tmp_path)
    _interrupt_at(monkeypatch, "epoch@3")
    with pytest.raises(Interrupted):
        build_finetuner(cfg, log=lambda s: None).fit(evaluate=False)  # auto -> none here
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "runs").iterdir()
    changed = _config(tmp_path, mixed_precision="mixed_bfloat16")
    with pytest.raises(KerasftError, match=r"Received: training.mixed_precision="
                                           r"'mixed_bfloat16' \(run: 'none'\)$"):
        build_finetuner(changed, log=lambda s: None).fit(resume=run_dir, evaluate=False)
    # Built before fit under this machine's choice, then resumed onto another recorded policy.
    monkeypatch.setenv(precision.HARDWARE_ENV, BF16_CPU)
    monkeypatch.setitem(precision.VERIFIED, "tiny_cnn", {"mixed_bfloat16": "test"})
    ft = build_finetuner(cfg, log=lambda s: None)
    ft.build(["cat", "dog", "owl"])
    with pytest.raises(KerasftError, match=r"^expected the resumed run's recorded policy none "
                                           r".*Received: training.mixed_precision="
                                           r"'mixed_bfloat16'$"):
        ft.fit(resume=run_dir, evaluate=False)
    # The same explicit policy as recorded resumes (its reason key does not count).
    build_finetuner(_config(tmp_path, mixed_precision="none"),
                    log=lambda s: None).fit(resume=run_dir, evaluate=False)


def test_auto_backbone_name_is_judged_by_the_preset_family(tmp_path, monkeypatch):
    # backbone.name: auto with a BERT preset was looked up as "auto" and trained in float32.
    from kerasft.config import load_config
    from tests.bert_fixtures import write_tiny_bert_preset

    monkeypatch.setenv("KERASFT_TEST_HARDWARE", BF16_CPU)
    preset = write_tiny_bert_preset(tmp_path / "kh")
    cfg = load_config({"backbone": {"name": "auto", "preset": preset},
                       "data": {"source": "arrays"}})
    chosen = precision.resolve(cfg, "default")
    assert chosen.policy == "mixed_bfloat16", chosen.reason
    assert "bert verified" in chosen.reason
