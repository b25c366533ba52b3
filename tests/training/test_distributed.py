"""Multi-process fine-tuning on CPU (gloo): DDP through torchrun and FSDP2 through accelerate launch, each checked
against one process with the same global batch, and resumed from a checkpoint written mid-run.

Every launch is a real ``-m mossvl.training.finetune`` run of 4 steps on the golden tiny checkpoint. The data order
is the same in every mode: the Trainer's sampler shuffles with --seed in every process alike, and accelerate deals
consecutive per-device batches to ranks 0, 1, 0, 1, ..., so step k trains 2 processes × 1 sample on the very samples
of the single process's batch k of 2 (step 4 opens the second epoch, reshuffled). The loss is averaged over the
supervised tokens of the whole global batch in both cases (``average_tokens_across_devices``). At step 2 the
text-only record is alone on one rank: its cross-attention layers must still run (they do in training mode), or
the ranks would wait on each other for gradients one of them never computes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import mossvl
from mossvl.model import MossVLForConditionalGeneration
from mossvl.training.finetune import parse_args, train

# slow: the file takes 50-85 s on 2 shared cores, most of it importing torch/transformers in 4 launches × 2 processes.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="torch was built without the gloo backend, which multi-process CPU training needs",
    ),
]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "finetune"
STEPS, SAVE_STEPS = 4, 2
# A launch takes 10-15 s; a collective that never completes would otherwise hang the suite.
LAUNCH_TIMEOUT_S = 300
# Largest differences measured from the single-process run: 9.5e-7 in a logged loss (2 float32 ulps at ~5) and
# 1.2e-5 in a weight. They are float32 rounding of batch-of-1 vs batch-of-2 arithmetic: one process with 2 steps of
# gradient accumulation differs from it by exactly as much. The tolerances sit ~100× and ~9× above that and far below
# a real fault: a different data order changes the losses by 0.02-0.2 and the weights by 8e-3, and one optimizer step
# (learning rate 1e-3) moves a weight by up to ~1e-3, so a lost, doubled or unrestored step shows as well.
LOSS_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: list[str], flags: list[str]) -> None:
    """Run ``python -m <launcher> -m mossvl.training.finetune <flags>`` with 2 processes; fail with its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", *launcher, "-m", "mossvl.training.finetune", *flags]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the launcher then stops its workers, which run in sessions of their own and would
        # otherwise stay blocked in a collective forever.
        process.terminate()
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"{launcher[0]} timed out after {LAUNCH_TIMEOUT_S} s:\n{output[-5000:]}")
    assert process.returncode == 0, f"{launcher[0]} failed:\n{output[-5000:]}"


def torchrun_ddp(flags: list[str]) -> None:
    # With activation checkpointing the Trainer builds DDP without find_unused_parameters, the setting that needs
    # every rank to use the same weights (and the one run_sft.sh recommends).
    launch(
        ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())],
        [*flags, "--activation_checkpointing", "True"],
    )


def accelerate_fsdp(flags: list[str]) -> None:
    config = EXAMPLES / "accelerate_fsdp_cpu.yaml"
    launch(
        ["accelerate.commands.launch", "--config_file", str(config), "--main_process_port", str(free_port())],
        flags,
    )


LAUNCHERS = {"ddp": torchrun_ddp, "fsdp": accelerate_fsdp}


@pytest.fixture(scope="module")
def run_flags(module_sft_file, golden_dir):
    """Command-line flags of a tiny run writing to ``output_dir`` with ``batch`` samples per process."""

    def flags(output_dir: Path, batch: int) -> list[str]:
        values = {
            "model_name_or_path": golden_dir,
            "data_path": module_sft_file,
            "data_dir": golden_dir / "media",
            "output_dir": output_dir,
            "per_device_train_batch_size": batch,
            "max_steps": STEPS,
            "save_strategy": "steps",
            "save_steps": SAVE_STEPS,
            "learning_rate": 1e-3,
            "lr_scheduler_type": "constant",
            "logging_steps": 1,
            "seed": 0,
            "use_cpu": True,
            "dataloader_num_workers": 0,
            "report_to": "none",
            "disable_tqdm": True,
        }
        return [item for key, value in values.items() for item in (f"--{key}", str(value))]

    return flags


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def single(runs_dir, run_flags) -> Path:
    """The reference: one process, 2 samples per step."""
    return train(*parse_args(run_flags(runs_dir / "single", batch=2)))


@pytest.fixture(scope="module")
def distributed(runs_dir, run_flags):
    """``distributed(mode)``: output folder of the uninterrupted 2-process run of ``mode`` (ddp / fsdp), run once."""
    done: dict[str, Path] = {}

    def run(mode: str) -> Path:
        if mode not in done:
            output_dir = runs_dir / mode
            # Relaunching into the folder of a failed launch would resume it instead of starting afresh.
            assert not output_dir.exists(), f"the earlier {mode} launch failed; see that test's output"
            LAUNCHERS[mode](run_flags(output_dir, batch=1))
            done[mode] = output_dir
        return done[mode]

    return run


def logged_losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def max_weight_difference(a: Path, b: Path) -> float:
    weights_a = MossVLForConditionalGeneration.from_pretrained(a, dtype=torch.float32).state_dict()
    weights_b = MossVLForConditionalGeneration.from_pretrained(b, dtype=torch.float32).state_dict()
    assert weights_a.keys() == weights_b.keys()
    return max(float((weights_a[name] - weights_b[name]).abs().max()) for name in weights_a)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(mode, single, distributed, golden_dir):
    output_dir = distributed(mode)
    expected, actual = logged_losses(single), logged_losses(output_dir)
    assert sorted(actual) == list(range(1, STEPS + 1))
    for step, loss in expected.items():
        assert abs(actual[step] - loss) <= LOSS_TOLERANCE, (step, actual[step], loss)
    assert max_weight_difference(output_dir, single) <= WEIGHT_TOLERANCE
    assert max_weight_difference(output_dir, golden_dir) > 10 * WEIGHT_TOLERANCE  # it did train
    model, _ = mossvl.load(output_dir)  # the output folder is a plain checkpoint with its processor
    assert isinstance(model, MossVLForConditionalGeneration) and model.config.text_config.use_cache
    # FSDP must really shard: accelerate's FSDP checkpoints hold the gathered model in their own file, DDP's do not.
    fsdp_file = output_dir / f"checkpoint-{SAVE_STEPS}" / "pytorch_model_fsdp.bin"
    assert fsdp_file.is_file() == (mode == "fsdp")


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_resume_from_a_mid_run_checkpoint_matches_the_uninterrupted_run(
    mode, distributed, runs_dir, run_flags
):
    straight = distributed(mode)
    # What an interrupted run leaves behind: the checkpoint of step 2 (the same files whether or not training then
    # went on). finetune resumes from the last checkpoint in its output folder. Measured: bit-identical to the
    # uninterrupted run; the shared tolerances only spare the test from betting on that.
    resumed = runs_dir / f"{mode}-resumed"
    shutil.copytree(straight / f"checkpoint-{SAVE_STEPS}", resumed / f"checkpoint-{SAVE_STEPS}")
    LAUNCHERS[mode](run_flags(resumed, batch=1))

    # A fresh start would give the same numbers, but would have written checkpoint-2 anew.
    copied = resumed / f"checkpoint-{SAVE_STEPS}" / "model.safetensors"
    original = straight / f"checkpoint-{SAVE_STEPS}" / "model.safetensors"
    assert copied.stat().st_mtime_ns == original.stat().st_mtime_ns
    expected, actual = logged_losses(straight), logged_losses(resumed)
    assert sorted(actual) == list(range(1, STEPS + 1))
    for step in range(SAVE_STEPS + 1, STEPS + 1):
        assert abs(actual[step] - expected[step]) <= LOSS_TOLERANCE, (step, actual[step], expected[step])
    assert (resumed / f"checkpoint-{STEPS}").is_dir()
    assert max_weight_difference(resumed, straight) <= WEIGHT_TOLERANCE
    model, _ = mossvl.load(resumed)
    assert isinstance(model, MossVLForConditionalGeneration)
