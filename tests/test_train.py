"""python -m samtone_tf.train on a tiny model: outputs, resume after SIGKILL and SIGTERM, NaN stop, strategies."""

import pytest
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from samtone_tf.train import build_parser, negatives_per_query, resolve_config
from samtone_tf.training.run_dir import read_jsonl_records
from tests.helpers import (REPOSITORY_ROOT, CommandInBackground, free_ports, mirrored_strategy,
                           stop_signals_as_in_a_terminal)

SQUAD_SAMPLE = "reqa:squad2-dev-sample/dev-v2.0-sample.json"


def command(model_dir, *extra):
    return [sys.executable, "-m", "samtone_tf.train", "--model", "tiny", "--model_dir", str(model_dir),
            "--eval_datasets", "", "--log_every", "2", *extra]


def run(args, timeout=600, env=None):
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPOSITORY_ROOT, timeout=timeout,
                            env=env or os.environ.copy())
    return result


def metrics(model_dir):
    return [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_weights(model_dir):
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("model/"))
    return {n: reader.get_tensor(n) for n in names}


def test_help_documents_every_option_with_its_default():
    parser = build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and action.nargs != 0 and action.dest != "help":
            shown = formatter._expand_help(action) if action.help else ""
            assert "default" in shown, f"{action.option_strings[0]} does not show its default: {shown!r}"
    text = parser.format_help()
    for option in ("--dataset", "--model", "--architecture", "--same_tower", "--bidirectional", "--temperature",
                   "--learnable_temperature", "--hard_negatives", "--batch_size", "--steps", "--optimizer",
                   "--learning_rate", "--warmup_steps", "--query_max_length", "--document_max_length", "--seed",
                   "--strategy", "--cpu_replicas", "--tpu", "--model_dir", "--checkpoint_every", "--eval_every"):
        assert option in text
    assert "(default: reqa:squad)" in text and "(default: 32)" in text


def test_resolved_configuration_and_negatives():
    config = resolve_config(build_parser().parse_args(["--batch_size", "64", "--steps", "50",
                                                       "--hard_negatives", "2"]))
    assert config.warmup_steps == 5 and config.first_train_pairs == 3200 and config.max_train_pairs is None
    assert config.length_groups == 8
    assert negatives_per_query(config) == (63, 63, 128)
    config = resolve_config(build_parser().parse_args(["--same_tower", "none"]))
    assert negatives_per_query(config)[1] == 0


@pytest.mark.slow
def test_tiny_run_writes_config_checkpoints_logs_metrics_and_model(tmp_path):
    model_dir = tmp_path / "run"
    result = run(command(model_dir, "--steps", "6", "--batch_size", "8", "--checkpoint_every", "3",
                         "--eval_datasets", SQUAD_SAMPLE, "--eval_every", "3", "--learnable_temperature",
                         "--architecture", "ade_spl", "--length_groups", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "each query sees 14 negatives (7 documents + 7 other queries + 0 hard negatives)" in result.stdout
    assert "SQuAD held-out articles" in result.stdout and "P@1" in result.stdout
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architecture"] == "ade_spl" and config["steps"] == 6 and config["length_groups"] == 2
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-6")
    assert list((model_dir / "logs").glob("events.out.tfevents.*"))
    records = metrics(model_dir)
    assert [r["phase"] for r in records if "phase" in r] == ["before", "during", "after"]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4, 6]
    assert all(k in steps[0] for k in ("learning_rate", "temperature", "steps_per_second", "examples_per_second"))
    assert steps[-1]["learning_rate"] > 0  # the last step trains too
    model = keras.saving.load_model(model_dir / "model.keras")
    assert model.architecture == "ade_spl" and model.learnable_temperature and model.length_groups == 2

    # The same command again resumes at the end: it evaluates again, and metrics.jsonl keeps one "after".
    again = run(command(model_dir, "--steps", "6", "--batch_size", "8", "--checkpoint_every", "3",
                        "--eval_datasets", SQUAD_SAMPLE, "--eval_every", "3", "--learnable_temperature",
                        "--architecture", "ade_spl", "--length_groups", "2"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already trained to step 6 of 6" in again.stdout
    assert [(r["step"], r.get("phase")) for r in metrics(model_dir)] == [(r["step"], r.get("phase")) for r in records]


@pytest.mark.slow
def test_default_run_killed_mid_run_resumes_and_matches_an_uninterrupted_run(tmp_path):
    # The default settings (steps, batch, checkpointing, logging), on the tiny model and without evaluation.
    def default_command(model_dir):
        return [sys.executable, "-m", "samtone_tf.train", "--model", "tiny", "--model_dir", str(model_dir),
                "--eval_datasets", "", "--no-export"]

    # The uninterrupted run goes on beside the one to be killed (much of each is single-threaded start-up).
    uninterrupted = tmp_path / "uninterrupted"
    as_a_newcomer = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    uninterrupted_run = CommandInBackground(default_command(uninterrupted), tmp_path, "uninterrupted",
                                            env=as_a_newcomer)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(default_command(interrupted), cwd=REPOSITORY_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    index = interrupted / "checkpoints" / "checkpoint"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if index.is_file() and "ckpt-20" in index.read_text():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = tf.train.latest_checkpoint(str(interrupted / "checkpoints"))
    assert killed_at and not killed_at.endswith("ckpt-50")

    resumed = run(default_command(interrupted))
    finished = uninterrupted_run.finish()
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "ETA" in finished.stdout
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed_at} at step {killed_at.rsplit('-', 1)[1]}" in resumed.stdout
    assert tf.train.latest_checkpoint(str(interrupted / "checkpoints")).endswith("ckpt-50")
    assert "step 50/50" in resumed.stdout
    # metrics.jsonl holds every logged step once, as the uninterrupted run's does.
    assert [r["step"] for r in metrics(interrupted)] == [r["step"] for r in metrics(uninterrupted)]
    # Same data order, optimizer state and schedule position: the same final weights.
    want, got = checkpoint_weights(uninterrupted), checkpoint_weights(interrupted)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)
    # A newcomer sees only the project's own lines: TensorFlow's native log noise is filtered.
    assert not [line for line in finished.stderr.splitlines() if line.strip()], finished.stderr[-2000:]


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_saves_the_steps_it_completed_and_the_same_command_resumes_from_them(tmp_path):
    """SIGTERM is what a scheduler sends before it kills (Kubernetes, Slurm, preemptible VMs): the run finishes its
    step, saves it, exits 143; resuming loses none of its steps, not only those after the last periodic save."""
    model_dir = tmp_path / "run"
    # Steps it cannot finish before the signal (a lost signal fails by the timeout); no periodic checkpoint, so the
    # one found was written on the signal.
    settings = ["--batch_size", "8", "--no-export", "--first_train_pairs", "3200", "--checkpoint_every", "1000000"]
    process = subprocess.Popen(command(model_dir, "--steps", "1000000", *settings), cwd=REPOSITORY_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=stop_signals_as_in_a_terminal)
    try:
        deadline, log = time.time() + 300, model_dir / "metrics.jsonl"  # a torn last line is skipped, not repaired
        while time.time() < deadline and not any("loss" in r for r in read_jsonl_records(log, repair=False)):
            assert process.poll() is None, process.communicate()[1][-2000:]
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    stopped_at = int(re.search(r"stopped by SIGTERM after step (\d+) of 1000000", err).group(1))
    assert stopped_at >= 2 and "Traceback" not in err
    saved = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert saved.endswith(f"ckpt-{stopped_at}") and f"saved {saved}. Run the same command again" in err
    reader = tf.train.load_checkpoint(saved)
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == stopped_at
    assert not (model_dir / ".lock").exists()

    # The same settings resume at the step saved (here with two more steps to go: --steps may change).
    resumed = run(command(model_dir, "--steps", str(stopped_at + 2), *settings))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {saved} at step {stopped_at}" in resumed.stdout
    assert f"step {stopped_at + 2}/{stopped_at + 2}" in resumed.stdout


@pytest.mark.slow
def test_resuming_with_other_settings_is_a_clear_error(tmp_path):
    model_dir = tmp_path / "run"
    first = run(command(model_dir, "--steps", "2", "--batch_size", "8", "--no-export"))
    assert first.returncode == 0, first.stderr[-3000:]
    config_before = (model_dir / "config.json").read_text()
    other = run(command(model_dir, "--steps", "4", "--batch_size", "16", "--architecture", "ade",
                        "--same_tower", "none", "--no-export"))
    assert other.returncode == 2
    for setting in ("--architecture 'sde' in the checkpoint, 'ade' now", "--batch_size 8 in the checkpoint, 16 now",
                    "--same_tower 'query' in the checkpoint, 'none' now"):
        assert setting in other.stderr, other.stderr
    assert "Traceback" not in other.stderr
    assert (model_dir / "config.json").read_text() == config_before
    # More steps with the same settings is a resume, not a conflict.
    longer = run(command(model_dir, "--steps", "4", "--batch_size", "8", "--no-export"))
    assert longer.returncode == 0 and "resumed from" in longer.stdout, longer.stderr[-2000:]


@pytest.mark.slow
def test_data_and_checkpoints_are_found_after_a_non_editable_install(tmp_path):
    target = tmp_path / "site"
    source = tmp_path / "source"  # a copy: the build must leave nothing in the checkout
    source.mkdir()
    for name in ("samtone_tf", "setup.cfg", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (REPOSITORY_ROOT / name).is_dir() else shutil.copy
        copy(REPOSITORY_ROOT / name, source / name)
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                                "--target", str(target), str(source)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert (target / "samtone_tf" / "locations.py").is_file()
    script = ("import samtone_tf, samtone_tf.locations as l; "
              "print(samtone_tf.__file__); print(l.data_dir()); print(l.models_dir())")
    shared = REPOSITORY_ROOT.parent / "shared"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMTONE_")}
    env["PYTHONPATH"] = str(target)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for cwd, extra in ((REPOSITORY_ROOT, {}), (REPOSITORY_ROOT / "tests", {}), (REPOSITORY_ROOT.parent, {}),
                       (outside, {"SAMTONE_DATA": str(shared / "data"), "SAMTONE_MODELS": str(shared / "models")})):
        found = subprocess.run([sys.executable, "-P", "-c", script], cwd=cwd, env={**env, **extra}, capture_output=True,
                               text=True, timeout=300)
        assert found.returncode == 0, (cwd, found.stderr[-2000:])
        module, data, models = found.stdout.split()
        assert module.startswith(str(target)), module  # the installed copy, not the checkout
        assert Path(data).resolve() == (shared / "data").resolve() and Path(models).resolve() == (
            shared / "models").resolve(), (cwd, found.stdout)
    if not any((d / "shared" / "data").is_dir() for d in outside.resolve().parents):
        lost = subprocess.run([sys.executable, "-P", "-c", script], cwd=outside, env=env, capture_output=True,
                              text=True, timeout=300)
        assert lost.returncode != 0 and "set $SAMTONE_DATA" in lost.stderr


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    model_dir = tmp_path / "nan"
    # A learning rate of 1e37 blows the weights up within a step or two.
    result = run(command(model_dir, "--steps", "40", "--batch_size", "8", "--checkpoint_every", "1",
                         "--learning_rate", "1e37", "--warmup_steps", "1", "--weight_decay", "0", "--no-export"))
    assert result.returncode == 3, (result.stdout[-2000:], result.stderr[-2000:])
    assert "the loss became nan" in result.stderr or "the weights became non-finite" in result.stderr
    assert "is kept" in result.stderr
    stopped_at = int(result.stderr.split("at step ")[1].split(" ")[0].rstrip(";"))
    assert stopped_at < 40
    last = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    if last is not None:  # every checkpoint written holds finite weights
        assert int(last.rsplit("-", 1)[1]) < stopped_at
        assert all(np.all(np.isfinite(v)) for v in checkpoint_weights(model_dir).values())
        assert f"The last good checkpoint is {last}" in result.stderr


@pytest.mark.slow
def test_global_batch_must_divide_over_replicas(tmp_path):
    result = run(command(tmp_path / "bad", "--strategy", "mirrored", "--cpu_replicas", "2", "--batch_size", "7",
                         "--steps", "1"))
    assert result.returncode == 2
    assert "--batch_size 7 is not divisible by 2 replicas" in result.stderr


@pytest.mark.slow
def test_mirrored_run_over_two_cpu_replicas(tmp_path):
    result = run(command(tmp_path / "mirrored", "--strategy", "mirrored", "--cpu_replicas", "2",
                         "--batch_size", "8", "--steps", "4", "--same_tower", "both", "--bidirectional",
                         "--no-export"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 replica(s); global batch 8 = 2 x 4; each query sees 14 negatives" in result.stdout
    assert "step 4/4" in result.stdout


def test_only_a_strategy_over_several_processes_counts_as_multi_worker():
    from types import SimpleNamespace

    from samtone_tf.training.distributed import is_multi_worker

    assert not is_multi_worker(tf.distribute.get_strategy())
    assert not is_multi_worker(mirrored_strategy(2))

    def resolved(cluster):  # what a strategy made from $TF_CONFIG holds
        spec = tf.train.ClusterSpec(cluster)
        return SimpleNamespace(cluster_resolver=tf.distribute.cluster_resolver.SimpleClusterResolver(spec))

    assert not is_multi_worker(resolved({}))
    assert not is_multi_worker(resolved({"worker": ["127.0.0.1:1"]}))
    assert is_multi_worker(resolved({"worker": ["127.0.0.1:1", "127.0.0.1:2"]}))
    assert is_multi_worker(resolved({"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}))


def _start_workers(model_dir, tmp_path, workers, *extra):
    """The training processes of a local multi-worker job (one per address of `workers`), signals as in a terminal."""
    processes = []
    for index in range(len(workers)):
        env = os.environ.copy()
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        env["TMPDIR"] = str(tmp_path / f"tmp{index}")
        os.makedirs(env["TMPDIR"], exist_ok=True)
        processes.append(subprocess.Popen(
            command(model_dir, "--strategy", "multi_worker", "--batch_size", "8", *extra), cwd=REPOSITORY_ROOT,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=stop_signals_as_in_a_terminal))
    return processes


@pytest.mark.slow
def test_a_multi_worker_run_whose_worker_gets_sigterm_stops_and_saves_the_same_step_everywhere_then_resumes(
        tmp_path):
    """A preempted worker (SIGTERM to one process of the job) stops the whole job after one common step, saved;
    the same commands resume from it. Stopping at once would leave the other worker waiting on its collectives."""
    model_dir = tmp_path / "multi"
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    settings = ["--no-export", "--first_train_pairs", "1600", "--checkpoint_every", "1000000", "--log_every", "1"]
    processes = _start_workers(model_dir, tmp_path, workers, "--steps", "1000000", *settings)
    try:
        deadline, log = time.time() + 400, model_dir / "metrics.jsonl"
        while time.time() < deadline and not any("loss" in r for r in read_jsonl_records(log, repair=False)):
            assert all(p.poll() is None for p in processes), [p.communicate()[1][-2000:] for p in processes]
            time.sleep(0.05)
    finally:
        processes[1].send_signal(signal.SIGTERM)  # the other worker, not the chief, is preempted
        outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
        assert "Traceback" not in err
    chief_err, worker_err = outputs[0][1], outputs[1][1]
    stopped_at = int(re.search(r"stopped with another worker, which was signalled, after step (\d+) of 1000000",
                               chief_err).group(1))
    assert f"stopped by SIGTERM after step {stopped_at} of 1000000" in worker_err
    assert not list((tmp_path / "tmp1").glob("samtone-*")), "the other worker's scratch checkpoints are left"
    saved = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert saved.endswith(f"ckpt-{stopped_at}") and f"saved {saved}. Run the same command again" in chief_err
    reader = tf.train.load_checkpoint(saved)
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == stopped_at

    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]  # fresh ports: the old ones may linger in TIME_WAIT
    resumed = _start_workers(model_dir, tmp_path, workers, "--steps", str(stopped_at + 2), *settings)
    outputs = [p.communicate(timeout=600) for p in resumed]
    for process, (_, err) in zip(resumed, outputs):
        assert process.returncode == 0, err[-3000:]
    assert f"resumed from {saved} at step {stopped_at}" in outputs[0][0]
    assert f"step {stopped_at + 2}/{stopped_at + 2}" in outputs[0][0]


@pytest.mark.slow
def test_multi_worker_run_with_two_local_workers(tmp_path):
    model_dir = tmp_path / "multi"
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = _start_workers(model_dir, tmp_path, workers, "--steps", "4", "--checkpoint_every", "2")
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    chief_out, worker_out = outputs[0][0], outputs[1][0]
    assert "2 replica(s); global batch 8 = 2 x 4" in chief_out and "step 4/4" in chief_out
    assert worker_out.strip() == ""  # only the chief reports
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-4")
    assert sorted(p.name for p in model_dir.iterdir()) == [".samtone_tf.json", "checkpoints", "config.json",
                                                          "export", "logs", "metrics.jsonl", "model.keras"]
    assert json.loads((model_dir / ".samtone_tf.json").read_text())["kind"] == "model_dir"
    assert len(list((model_dir / "logs").glob("events.out.tfevents.*"))) == 1
    # The other worker's scratch checkpoints are gone.
    assert not list((tmp_path / "tmp1").glob("samtone-*"))
