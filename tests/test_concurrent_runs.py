"""One run per model_dir: a second run says who holds it and exits; a killed run's lock is stale."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from samtone_tf.training.run_dir import RunLock, RunLockedError, read_jsonl_records
from tests.helpers import REPOSITORY_ROOT, stop_signals_as_in_a_terminal


def command(model_dir, *extra):
    return [sys.executable, "-m", "samtone_tf.train", "--model", "tiny", "--model_dir", str(model_dir),
            "--eval_datasets", "", "--batch_size", "8", "--no-export", *extra]


@pytest.mark.slow
def test_a_second_run_on_the_same_model_dir_refuses_while_the_first_runs(tmp_path):
    model_dir = tmp_path / "run"
    # Steps it cannot finish before the interrupt below, so that a lost interrupt fails the test by its timeout
    # rather than by a run that ended on its own (400 tiny steps take ~10 s on a fast CPU), over the first 3,200
    # pairs.
    steps = ["--steps", "1000000", "--first_train_pairs", "3200", "--checkpoint_every", "50"]
    first = subprocess.Popen(command(model_dir, *steps), cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=stop_signals_as_in_a_terminal)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (model_dir / "metrics.jsonl").exists():
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.05)
        second = subprocess.run(command(model_dir, *steps), cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 2
        assert f"is in use by another run (pid {first.pid} on {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=300)
    # SIGINT: the steps done are saved, it says so and how to resume, no traceback, exit 130; the lock is released.
    assert first.returncode == 130, err[-2000:]
    stopped_at = int(re.search(r"interrupted after step (\d+) of 1000000", err).group(1))
    saved = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert f"saved {saved}. Run the same command again to resume from it." in err
    assert saved.endswith(f"ckpt-{stopped_at}") and "Traceback" not in err
    assert not (model_dir / ".lock").exists()


@pytest.mark.slow
def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (model_dir / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    result = subprocess.run(command(model_dir, "--steps", "2"), cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"removing a stale lock of a run that is no longer running: pid {dead.pid}" in result.stdout
    assert not (model_dir / ".lock").exists()


def test_the_lock_in_process(tmp_path):
    with RunLock(tmp_path, say=lambda m: None):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            with RunLock(tmp_path, say=lambda m: None):
                pass
    (tmp_path / ".lock").write_text('{"pid": ')  # torn by a kill mid-write
    with RunLock(tmp_path, say=lambda m: None) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


@pytest.fixture
def stop_signals_at_their_defaults():
    """SIGINT and SIGTERM at their default handling (which _StopSignals takes over) for the test, then as before."""
    from samtone_tf.training_run import _StopSignals

    previous = {s: signal.signal(s, d) for s, d in _StopSignals.DEFAULTS.items()}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_arriving_in_a_garbage_collection_callback_is_noted(signum, stop_signals_at_their_defaults):
    """Python runs a handler at the next bytecode; a KeyboardInterrupt raised inside a weakref callback would be
    printed as "ignored" and lost (what once made a Ctrl-C'd run finish its 400 steps). The handler only notes it."""
    import gc
    import weakref

    from samtone_tf.training_run import _StopSignals

    stop = _StopSignals(signal.SIGINT, signal.SIGTERM)
    try:
        class Thing:
            pass

        def on_collected(_):
            os.kill(os.getpid(), signum)
            time.sleep(0.5)  # the handler runs here, inside the callback

        thing = Thing()
        reference = weakref.ref(thing, on_collected)
        del thing  # the callback runs; the handler notes the signal there
        gc.collect()
        assert reference() is None
        assert stop.received == signum
    finally:
        stop.restore()
    assert all(signal.getsignal(s) is d for s, d in _StopSignals.DEFAULTS.items())


STOPPED_INSIDE_PYRUN = """
import ctypes, os, signal, sys, time
from samtone_tf.training_run import _StopSignals

stop = _StopSignals(signal.SIGINT, signal.SIGTERM)
run = ctypes.pythonapi.PyRun_String  # how native libraries run Python code: through a PyRun_* frame
run.restype, run.argtypes = ctypes.py_object, [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]
try:
    run(b"import os, signal, time; os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.5)", 257, {}, {})
except KeyboardInterrupt:
    pass
stop.restore()
sys.exit(128 + (stop.received or 0))
"""


@pytest.mark.slow
def test_a_stop_signal_arriving_inside_python_code_run_by_a_native_library_still_exits_with_the_runs_own_code(
        tmp_path):
    """A KeyboardInterrupt leaving a `PyRun_*` frame is remembered by CPython as unhandled even when caught later,
    and the process then exits killed by SIGINT (what made a SIGTERM'd run that saved its step exit -2 instead of
    143 in a loaded CI). The handler raises nothing on a first signal, so the exit code is the run's own."""
    result = run_wrapped_module(tmp_path, "stopped_inside_pyrun", STOPPED_INSIDE_PYRUN)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert "SIGTERM received: stopping after this step" in result.stderr


def test_a_second_stop_signal_stops_at_once(stop_signals_at_their_defaults):
    from samtone_tf.training_run import _StopSignals

    stop = _StopSignals(signal.SIGINT, signal.SIGTERM)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here and raises nothing
        assert stop.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert stop.received == signal.SIGTERM  # the first signal is the one the run reports
    finally:
        stop.restore()


def test_a_signal_ignored_or_handled_by_the_application_is_left_to_it():
    from samtone_tf.training_run import _StopSignals

    def own_handler(signum, frame):
        pass

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, own_handler)}
    try:
        stop = _StopSignals(signal.SIGINT, signal.SIGTERM)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is own_handler
        stop.restore()
        assert signal.getsignal(signal.SIGTERM) is own_handler
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


SIGNALLED_IN_THE_LAST_STEP = """
import signal, sys
import samtone_tf
import tensorflow as tf
from samtone_tf import train

save = tf.train.CheckpointManager.save


def save_then_signal(self, checkpoint_number=None, **options):
    path = save(self, checkpoint_number=checkpoint_number, **options)
    if checkpoint_number == 3:  # the last step's save: the signal arrives before that step has ended
        signal.raise_signal(signal.SIGTERM)
    return path


tf.train.CheckpointManager.save = save_then_signal
sys.exit(train.main(sys.argv[1:]))
"""


def run_wrapped_module(tmp_path, name, source, arguments=(), **environment):
    """`python -m name arguments...` for module `name` of `source` (which wraps the library to deliver a signal at a
    chosen point, then runs it: for the train command, `command()[3:]` are its arguments), signals as in a
    terminal, with `environment` added to this process's."""
    (tmp_path / f"{name}.py").write_text(source)
    environment = {**os.environ, **environment, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPOSITORY_ROOT)])}
    return subprocess.run([sys.executable, "-m", name, *arguments], cwd=REPOSITORY_ROOT, capture_output=True,
                          text=True, timeout=300, env=environment, preexec_fn=stop_signals_as_in_a_terminal)


@pytest.mark.slow
def test_a_stop_signal_during_the_last_step_stops_before_the_final_model_evaluation_and_export(tmp_path):
    """The last step is saved like any other; a run told it stops after this step must not go on for minutes of
    evaluation and export (a scheduler kills it at the end of its grace period). The same command finishes it."""
    model_dir = tmp_path / "run"
    arguments = command(model_dir, "--steps", "3", "--checkpoint_every", "1000")
    stopped = run_wrapped_module(tmp_path, "signalled_in_the_last_step", SIGNALLED_IN_THE_LAST_STEP, arguments[3:])
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    saved = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert saved.endswith("ckpt-3")
    assert (f"stopped by SIGTERM after step 3 of 3; saved {saved}. Run the same command again to resume from it."
            in stopped.stderr)
    assert not (model_dir / "model.keras").exists() and not (model_dir / ".lock").exists()

    finished = subprocess.run(arguments, cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "already trained to step 3 of 3" in finished.stdout + finished.stderr
    assert (model_dir / "model.keras").is_file()


SIGNALLED_AT_STEP_2 = """
import os, signal, sys
import samtone_tf
import tensorflow as tf
from samtone_tf import encoding, train, training_run

# "save": in step 2's checkpoint save; "evaluation": after step 2's first evaluation set; "encoding": before the
# second batch of step 2's first evaluation set
where = os.environ["SIGNAL_AT"]
save, evaluate, evaluations = tf.train.CheckpointManager.save, training_run.evaluate_encoder, []
compiled_encoder, sets_entered, signalled = encoding._compiled_encoder, [], []


def save_then_signal(self, checkpoint_number=None, **options):
    path = save(self, checkpoint_number=checkpoint_number, **options)
    if where == "save" and checkpoint_number == 2:  # step 2 has not ended: its evaluation is still to come
        signal.raise_signal(signal.SIGTERM)
    return path


def evaluate_then_signal(*args, **options):
    sets_entered.append(1)
    result = evaluate(*args, **options)
    evaluations.append(1)
    if where == "evaluation" and len(evaluations) == 3:  # two sets before training, then step 2's first
        signal.raise_signal(signal.SIGTERM)
    return result


def encoder_that_signals(tower, jit_compile=False):
    encode = compiled_encoder(tower, jit_compile)

    def encode_batch(texts):
        if len(signalled) == 2:
            print("a batch was encoded after the signal", file=sys.stderr, flush=True)
        if where == "encoding" and len(sets_entered) == 3:  # two sets before training, then step 2's first
            signalled.append(1)
            if len(signalled) == 2:  # the set's second batch: the first has been encoded
                signal.raise_signal(signal.SIGTERM)
        return encode(texts)

    return encode_batch


tf.train.CheckpointManager.save = save_then_signal
training_run.evaluate_encoder = evaluate_then_signal
encoding._compiled_encoder = encoder_that_signals
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signal_at", ["save", "evaluation", "encoding"])
def test_a_run_told_to_stop_does_not_start_or_go_on_with_an_evaluation_during_training(tmp_path, signal_at):
    """An evaluation during training can take minutes: a signal before it skips it, one during it stops the set
    being encoded within one batch and skips the sets left; the step is saved and the run stops, as it says."""
    model_dir = tmp_path / "run"
    arguments = command(model_dir, "--steps", "4", "--checkpoint_every", "2", "--eval_every", "2",
                        "--eval_datasets", "reqa:squad2-dev-sample/dev-v2.0-sample.json,wikiqa",
                        "--eval_batch_size", "16")
    stopped = run_wrapped_module(tmp_path, "signalled_at_step_2", SIGNALLED_AT_STEP_2, arguments[3:],
                                 SIGNAL_AT=signal_at)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    saved = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert saved.endswith("ckpt-2")
    assert f"stopped by SIGTERM after step 2 of 4; saved {saved}." in stopped.stderr
    evaluations = stopped.stdout.count("evaluating on ")
    records = read_jsonl_records(model_dir / "metrics.jsonl", repair=False)
    assert [r["phase"] for r in records if "phase" in r] == ["before"]  # no evaluation of step 2 is recorded
    if signal_at == "save":
        assert evaluations == 2, stopped.stdout  # the two sets before training only
    elif signal_at == "evaluation":
        assert evaluations == 3, stopped.stdout  # and step 2's first set; the second was skipped
        assert "evaluation at this step skipped from wikiqa on: the run is stopping" in stopped.stderr
    else:
        assert evaluations == 3, stopped.stdout  # step 2's first set, left after its second batch
        assert "a batch was encoded after the signal" not in stopped.stderr
        assert ("evaluation at this step stopped in reqa:squad2-dev-sample/dev-v2.0-sample.json (encoding stopped "
                "after 32 of " in stopped.stderr), stopped.stderr[-2000:]
