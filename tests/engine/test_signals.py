"""StopRequest: the first signal only sets a flag the loop polls, the second one aborts."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from tunesmith.engine.signals import STOP_SIGNALS, STOPPED_BY_SIGNAL_EXIT_CODE, StopRequest

_POLLING_LOOP = textwrap.dedent(
    """
    import sys, time
    from tunesmith.engine.signals import STOPPED_BY_SIGNAL_EXIT_CODE, StopRequest

    stuck_in_save = sys.argv[1] == "stuck"
    with StopRequest() as stop:
        print("ready", flush=True)
        for micro_step in range(100_000):
            time.sleep(0.001)
            if stop.requested:
                print(f"stopping at micro-step {micro_step} on {stop.signal_name}", flush=True)
                if stuck_in_save:
                    time.sleep(60)
                sys.exit(STOPPED_BY_SIGNAL_EXIT_CODE)
    print("loop ended without a signal", flush=True)
    """
)


def _start_loop(mode: str) -> subprocess.Popen:
    loop = subprocess.Popen(
        [sys.executable, "-c", _POLLING_LOOP, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert loop.stdout.readline().strip() == "ready"
    return loop


@pytest.mark.parametrize("stop_signal", STOP_SIGNALS, ids=lambda s: s.name)
def test_loop_sees_the_flag_and_exits_with_the_documented_code(stop_signal: signal.Signals):
    loop = _start_loop("clean")
    loop.send_signal(stop_signal)
    stdout, stderr = loop.communicate(timeout=30)

    assert loop.returncode == STOPPED_BY_SIGNAL_EXIT_CODE, stderr
    assert f"on {stop_signal.name}" in stdout
    assert stderr == ""


def test_a_second_sigterm_kills_the_process_at_once():
    loop = _start_loop("stuck")
    loop.send_signal(signal.SIGTERM)
    assert loop.stdout.readline().startswith("stopping at micro-step")
    loop.send_signal(signal.SIGTERM)
    loop.communicate(timeout=30)

    assert loop.returncode == -signal.SIGTERM


def test_a_second_ctrl_c_raises_keyboard_interrupt():
    loop = _start_loop("stuck")
    loop.send_signal(signal.SIGINT)
    assert loop.stdout.readline().startswith("stopping at micro-step")
    loop.send_signal(signal.SIGINT)
    _, stderr = loop.communicate(timeout=30)

    assert "KeyboardInterrupt" in stderr
    assert loop.returncode in (-signal.SIGINT, 128 + signal.SIGINT)


def test_the_flag_is_set_in_process_and_previous_handlers_come_back():
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    with StopRequest() as stop:
        assert not stop.requested
        assert stop.signal_name is None
        assert all(signal.getsignal(s) != previous[s] for s in STOP_SIGNALS)
        signal.raise_signal(signal.SIGUSR1)
        assert stop.requested
        assert stop.signal_name == "SIGUSR1"

    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == previous


def test_entering_outside_the_main_thread_is_an_error():
    errors: list[BaseException] = []

    def enter() -> None:
        try:
            with StopRequest():
                pass
        except RuntimeError as error:
            errors.append(error)

    worker = threading.Thread(target=enter)
    worker.start()
    worker.join()

    assert len(errors) == 1
    assert "main thread" in str(errors[0])
