"""Console progress: a bar with an ETA redrawn in place on a terminal, one plain line per step
elsewhere (logs and batch-job output keep one line per step)."""

from __future__ import annotations

import io

from reff_dask.jobs.common import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_redraws_one_line_on_a_terminal_with_an_eta():
    out = _Terminal()
    say = Progress("refine", out)
    say("MD system: 8770 particles")
    for i in (1, 2, 3):
        say.bar("B stage", i, 10, f"CCC 0.6{i}", eta_s=(10 - i) * 0.5, eta_bound="<=", line=f"B {i}")
    say("final stage")
    text = out.getvalue()
    assert text.startswith("[refine] MD system: 8770 particles\n")
    draws = text.split("\r\x1b[K")[1:]
    assert len(draws) == 3  # one line, redrawn per step
    assert draws[0].startswith("[refine] B stage  [##..................] 1/10  CCC 0.61  ETA <=4 s")
    assert "[######..............] 3/10" in draws[2]
    assert draws[2].endswith("ETA <=4 s\n[refine] final stage\n")  # the bar's last state stays, then the line
    assert "B 1" not in text  # the plain lines are for non-terminals


def test_bar_of_open_ended_stage_shows_the_step_and_a_lower_bound():
    out = _Terminal()
    Progress("refine", out).bar("MD stage, EM iteration", 7, None, "CCC 0.6418", eta_s=200.0, eta_bound=">=")
    assert out.getvalue() == "\r\x1b[K[refine] MD stage, EM iteration  7  CCC 0.6418  ETA >=3 min"


def test_plain_lines_off_a_terminal():
    out = io.StringIO()
    say = Progress("bfactor", out)
    say.bar("iteration", 1, 125, "CCC 0.5988", eta_s=12.0, line="iteration   1 (residue)  CCC 0.5988")
    say.bar("iteration", 2, 125, "CCC 0.6093", eta_s=11.0)
    say("wrote out/")
    assert out.getvalue() == ("[bfactor] iteration   1 (residue)  CCC 0.5988\n"
                              "[bfactor] iteration 2/125  CCC 0.6093\n"
                              "[bfactor] wrote out/\n")
