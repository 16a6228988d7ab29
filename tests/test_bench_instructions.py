"""bench/instructions.py: instructions per call from two callgrind runs' per-thread totals."""

from __future__ import annotations

from pathlib import Path

from bench.instructions import per_call, thread_totals


def write(path: Path, summary: int) -> Path:
    path.write_text(f"# callgrind format\nversion: 1\ncmd: python\nsummary: {summary}\ntotals: 9\n")
    return path


def test_a_calls_instructions_are_the_difference_of_the_two_runs_per_thread(
    tmp_path: Path,
) -> None:
    few = thread_totals(
        [write(tmp_path / "n200.41-01", 4_700_000_000), write(tmp_path / "n200.41-03", 120_000_000)]
    )
    many = thread_totals(
        [
            write(tmp_path / "n600.42-01", 5_900_000_000),
            write(tmp_path / "n600.42-02", 40_000_000),  # a thread only the longer run started
            write(tmp_path / "n600.42-03", 360_000_000),
        ]
    )
    assert few == {1: 4_700_000_000, 3: 120_000_000}
    assert per_call(few, many, 800) == (1_500_000, 350_000)
