"""The interrupt policy in one process: where a signal may raise, where it only asks.

Real signals (``os.kill`` of this process); no TensorFlow. The end-to-end strikes inside MLflow
calls are in tests/test_faults.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from bench.engine.interrupts import Interrupts


@pytest.fixture
def interrupts():
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    it = Interrupts()
    it.install()
    yield it
    signal.signal(signal.SIGINT, before[0])
    signal.signal(signal.SIGTERM, before[1])


def test_outside_the_engine_a_signal_raises_at_once(interrupts):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next instruction
            pass
    assert interrupts.requested


def test_cooperative_signal_only_asks_and_check_raises(interrupts):
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts.cooperative():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
        reached.append("after the signal")  # no exception inside whatever code was running
        interrupts.check()
        reached.append("after check")
    assert reached == ["after the signal"]


def test_critical_section_finishes_then_raises(interrupts):
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupts.cooperative():
        with interrupts.critical():
            os.kill(os.getpid(), signal.SIGINT)
            interrupts.check()  # deferred: a result is being recorded
            steps.append("recorded")
        steps.append("not reached")
    assert steps == ["recorded"]


def test_wait_wakes_on_a_signal(interrupts):
    with pytest.raises(KeyboardInterrupt), interrupts.cooperative():
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        previous = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        try:
            interrupts.wait(30)
        finally:
            signal.signal(signal.SIGALRM, previous)


@pytest.mark.component
def test_a_later_second_signal_stops_the_process_at_once(tmp_path):
    script = textwrap.dedent(
        """
        import os, signal, time
        from bench.engine import interrupts as mod
        mod.FORCE_AFTER = 0.2
        it = mod.Interrupts()
        it.install()
        with it.cooperative():
            os.kill(os.getpid(), signal.SIGINT)  # the first: a request
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGINT)  # a duplicate would be ignored; this is later
            time.sleep(30)
            print("still running")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 130
    assert proc.stdout == ""
    assert proc.stderr.strip() == (
        "interrupted again: stopping now; rerun the same command to resume"
    )


def test_duplicate_signals_close_together_are_one_request(interrupts):
    with pytest.raises(KeyboardInterrupt), interrupts.cooperative():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # a terminal and a forwarding parent, say
        for _ in range(1000):
            pass
        interrupts.check()
