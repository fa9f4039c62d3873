"""Progress bars (`lewm_hf.progress`): quiet unless a user watches, shown when forced, and used by
the long stages."""

from __future__ import annotations

import io
import sys

import pytest
from _builders import W

from lewm_hf.data.collators import DataCollatorForLeWM
from lewm_hf.progress import PROGRESS_ENV, progress, progress_enabled, set_progress_disabled
from lewm_hf.trainer.feature_cache import FeatureCache


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    yield
    set_progress_disabled(False)


def _run(n: int = 5, **kwargs) -> None:
    for _ in progress(range(n), desc="stage", unit="walk", **kwargs):
        pass


def test_quiet_when_not_a_terminal(capsys):
    assert not sys.stdout.isatty()  # pytest captures both streams
    assert not progress_enabled()
    _run()
    assert capsys.readouterr().err == ""


def test_shown_on_a_terminal_unless_disable_tqdm(monkeypatch):
    err = _Terminal()
    monkeypatch.setattr(sys, "stdout", _Terminal())
    monkeypatch.setattr(sys, "stderr", err)
    assert progress_enabled()
    _run()
    shown = err.getvalue()
    assert "stage" in shown and "5/5" in shown and "walk/s" in shown  # count and rate
    err.seek(0), err.truncate()
    _run(disable=True)  # a trainer's own disable_tqdm
    set_progress_disabled(True)  # the runner's, from the phase's disable_tqdm
    _run()
    assert not progress_enabled() and err.getvalue() == ""
    set_progress_disabled(False)
    monkeypatch.setenv("RANK", "1")  # other ranks stay quiet
    assert not progress_enabled()


def test_forced_by_the_environment(monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    set_progress_disabled(True)
    assert progress_enabled()
    for _ in progress(range(4), desc="forced", total=4, unit="row"):
        pass
    shown = capsys.readouterr().err
    assert "forced" in shown and "4/4" in shown and "row/s" in shown
    assert "<" in shown  # elapsed<remaining: the ETA
    monkeypatch.setenv(PROGRESS_ENV, "0")
    monkeypatch.setattr(sys, "stdout", _Terminal())
    monkeypatch.setattr(sys, "stderr", _Terminal())
    set_progress_disabled(False)
    assert not progress_enabled()


def test_feature_cache_build_reports_its_rows(monkeypatch, capsys, tiny_lewm_model, tiny_clips):
    model = tiny_lewm_model(encoder_mode="frozen")
    collator = DataCollatorForLeWM(window=W)
    FeatureCache.build(model, [tiny_clips(12)], collator)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(PROGRESS_ENV, "1")
    FeatureCache.build(model, [tiny_clips(12)], collator)
    assert "feature cache" in capsys.readouterr().err
