"""Confirmation rounds: the answer's finalists measured again after the rounds, in blocks, and the answer from
those runs alone (documents.confirmation).

A real suite on the tiny model records the confirmation runs with their blocks, apart from every test's runs, and
its answer uses only them; a stop in the confirmation resumes there. Hand-written documents check the console:
blocks that disagree print the disagreement, not a verdict; without confirmation, "best of K, selected from these
runs".
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from test_console import ENVIRONMENT, WEIGHTS

from ckptbench.analysis import change
from ckptbench.bench.context import RunContext
from ckptbench.bench.suite import run_suite
from ckptbench.core.errors import Stopped, UserError
from ckptbench.core.records import RunRecord, confirmation_plan
from ckptbench.documents import results
from ckptbench.documents.store import Document
from ckptbench.reports import results as report
from ckptbench.spec import config

PEER = "runai_streamer"
SUITE = {
    "model": "tiny",
    "baseline": "small_chunks",
    "references": {"safetensors": True, "torch_save": False, "runai_streamer": False, "fastsafetensors": False,
                   "torch_dcp": False, "device_ceiling": True},
    "testing": {"num_runs": 3, "seed": 5, "confirm_rounds": 3, "confirm_blocks": 2, "confirm_pause_s": 0.3,
                "confirm_objectives": ["load"]},
    "test_configurations": [
        {"name": "small_chunks", "chunk_size_elements": 16384, "concurrency_limit": 4, "compression": "none"},
        {"name": "large_chunks", "chunk_size_elements": 262144, "concurrency_limit": 16, "compression": "none"},
    ],
}


def _load_s(runs: list[dict]) -> list[float]:
    return [r["load_s"] for r in runs if r["error"] is None]


# --- a real suite -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def confirmed(tmp_path_factory) -> results.Results:
    out = tmp_path_factory.mktemp("confirm") / "out"
    return run_suite(RunContext(config.from_dict({**SUITE, "output_dir": str(out)})))


@pytest.mark.slow  # the device ceiling's full grid (confirmed)
def test_confirmation_runs_are_recorded_with_their_blocks_apart_from_the_tests_runs(confirmed):
    document = confirmed.document
    section = document["confirmation"]
    chosen = section["selected"]["load"]
    assert chosen["tensorstore"] == document["best"]["load"]["test"]
    assert chosen["peer"] == "safetensors" and chosen["ceiling"] == "device_ceiling"
    runs = section["runs"]
    finalists = sorted(set(chosen.values()))
    for block in (1, 2):  # every finalist three times in each block, rounds numbered on after the suite's
        in_block = [r for r in runs if r["confirm_block"] == block]
        assert sorted(r["test"] for r in in_block) == sorted(finalists * 3)
        assert {r["round"] for r in in_block} == set(range(3 + 3 * (block - 1), 6 + 3 * (block - 1)))
    assert all(r["verified"] for r in runs)
    # blocks apart in time: the second starts after the pause that follows the first
    last_of_first = max(r["started_at"] for r in runs if r["confirm_block"] == 1)
    assert min(r["started_at"] for r in runs if r["confirm_block"] == 2) >= last_of_first + 0.3
    for test in document["tests"]:  # no test's runs or statistics hold a confirmation run
        assert len(test["runs"]) == 3 and test["stats"]["load_s"]["n"] == 3
        assert all(r["confirm_block"] is None for r in test["runs"])
    journal = [json.loads(line) for line in (confirmed.path.parent / "journal.jsonl").read_text().splitlines()[1:]]
    assert sorted(r["confirm_block"] for r in journal if r["confirm_block"]) == [1] * 9 + [2] * 9
    assert results.read(confirmed.path).document["confirmation"]["runs"] == runs  # it validates, and reads back


@pytest.mark.slow  # the device ceiling's full grid (confirmed)
def test_the_answer_comes_from_the_confirmation_runs_only(confirmed):
    document = confirmed.document
    entry, section = document["best"]["load"], document["confirmation"]
    winner, peer = entry["test"], entry["against"]["peer"]
    mine = _load_s([r for r in section["runs"] if r["test"] == winner])
    theirs = _load_s([r for r in section["runs"] if r["test"] == "safetensors"])
    assert peer["runs"] == "confirmation" and peer["ratio"] == pytest.approx(statistics.fmean(mine)
                                                                             / statistics.fmean(theirs))
    assert entry["confirmation"]["mean"] == pytest.approx(statistics.fmean(mine))
    assert entry["against"]["ceiling"]["runs"] == "confirmation"
    for block in peer["blocks"]:  # each block's own comparison, from that block's runs
        in_block = [r for r in section["runs"] if r["confirm_block"] == block["block"]]
        ratio = (statistics.fmean(_load_s([r for r in in_block if r["test"] == winner]))
                 / statistics.fmean(_load_s([r for r in in_block if r["test"] == "safetensors"])))
        assert block["ratio"] == pytest.approx(ratio)
    assert peer["block_ratio_range"] == [min(b["ratio"] for b in peer["blocks"]),
                                         max(b["ratio"] for b in peer["blocks"])]
    # the objectives not confirmed keep the comparisons of the runs they were selected from
    assert "runs" not in document["best"]["save"]["against"]["peer"]
    text = report.console(document)
    assert "(confirmed)" in next(line for line in text.splitlines() if line.lstrip().startswith("load:"))
    assert ("load: the peer and ceiling ratios come only from 2 blocks of 3 fresh interleaved rounds after the "
            "selection, 0.3 s apart") in text
    assert "save, save + load: best of 2 TensorStore tests and of 1 peers, selected from these runs" in text


def test_a_stop_in_the_confirmation_resumes_there(tmp_path: Path):
    suite = config.from_dict({**SUITE, "output_dir": str(tmp_path / "out"), "references": {
        **SUITE["references"], "device_ceiling": False}, "testing": {**SUITE["testing"], "confirm_pause_s": 0}})

    def stop_in_the_second_block(planned):
        return "a spent budget" if planned.confirm_block == 2 else None

    with pytest.raises(Stopped) as stopped:
        run_suite(RunContext(suite, may_start=stop_in_the_second_block))
    partial = stopped.value.partial.document
    assert partial["complete"] is False
    assert sorted({r["confirm_block"] for r in partial["confirmation"]["runs"]}) == [1]
    done = len(partial["confirmation"]["runs"]) + sum(len(t["runs"]) for t in partial["tests"])
    resumed = run_suite(RunContext(suite, resume=True)).document
    assert resumed["complete"] is True
    assert sorted(r["confirm_block"] for r in resumed["confirmation"]["runs"]) == [1] * 6 + [2] * 6
    journal = (suite.output_dir / "journal.jsonl").read_text().splitlines()[1:]
    assert len(journal) == done + 6  # only the second block ran again


def test_confirmation_rounds_must_give_a_block_an_interval(write_config):
    from conftest import minimal_config

    for rounds in (1, 2):
        with pytest.raises(UserError, match=r"^testing\.confirm_rounds: .* use 0 \(off\) or 3 or more$"):
            config.load(write_config(minimal_config(testing={"confirm_rounds": rounds})))
    assert config.load(write_config(minimal_config(testing={"confirm_rounds": 0}))).confirm_rounds == 0
    assert config.load(write_config(minimal_config()), confirm_rounds=4).confirm_rounds == 4  # --confirm-rounds
    with pytest.raises(UserError, match="testing.confirm_objectives"):
        config.load(write_config(minimal_config(testing={"confirm_objectives": ["size"]})))


def test_the_confirmation_plan_interleaves_each_block_and_numbers_rounds_on():
    blocks = confirmation_plan(["a", "b", "c"], rounds=3, blocks=2, first_round=5, seed=1)
    assert [[r.round for r in runs][::3] for runs in blocks] == [[5, 6, 7], [8, 9, 10]]
    assert all(sorted(r.test for r in runs if r.round == n) == ["a", "b", "c"]
               for runs in blocks for n in {r.round for r in runs})
    assert len({tuple(r.test for r in runs) for runs in blocks}) > 1  # shuffled, not one fixed order
    assert blocks[0][0].label.startswith(f"{blocks[0][0].test}-c1r")
    left = confirmation_plan(["a", "b", "c"], 3, 2, 5, 1, done={(r.test, r.round) for r in blocks[0]})
    assert left[0] == [] and left[1] == blocks[1]  # a resume runs what is missing, in the same order


# --- blocks that agree and disagree -----------------------------------------------------------------------

def _document(confirm_load_s: dict[str, list[list[float]]]) -> dict:
    """Rounds: 'fast' loads fastest of two TensorStore tests, PEER is the one peer; then the confirmation runs
    of each test (a list per block, `confirm_load_s`)."""
    from ckptbench.spec.references import REFERENCES

    main = {"base": [2.0, 2.1, 1.9], "fast": [1.0, 1.02, 0.98], PEER: [1.3, 1.31, 1.29],
            "device_ceiling": [0.5, 0.51, 0.49]}
    tests = tuple(config.TestSpec(name=n, concurrency_limit=1, chunk_size_elements=16384,
                                  backend=n if n in REFERENCES else "tensorstore") for n in main)
    suite = config.SuiteConfig(tests=tests, baseline="base", output_dir=Path("/nonexistent"), confirm_rounds=3,
                               confirm_objectives=("load",))
    records = [RunRecord(test=name, round=i, position=0, warmup=False, save_s=s, load_s=s, size_bytes=4_000_000,
                         n_files=10, eviction="drop_caches", load_cache="cold", verified=True)
               for name, values in main.items() for i, s in enumerate(values)]
    records += [RunRecord(test=name, round=3 + 3 * b + i, position=0, warmup=False, save_s=s, load_s=s,
                          size_bytes=4_000_000, n_files=10, eviction="drop_caches", load_cache="cold", verified=True,
                          confirm_block=b + 1)
                for name, blocks in confirm_load_s.items() for b, values in enumerate(blocks)
                for i, s in enumerate(values)]
    return results.build(suite, WEIGHTS, records, ENVIRONMENT, seed=1, complete=True)


AGREE = {"fast": [[1.40, 1.42, 1.38], [1.45, 1.47, 1.43]], PEER: [[1.0, 1.01, 0.99], [1.0, 1.02, 0.98]],
         "device_ceiling": [[0.5, 0.51, 0.49], [0.5, 0.5, 0.51]]}
# The second run: TensorStore 1.4x slower in one block, the same in the other.
DISAGREE = {**AGREE, "fast": [[1.40, 1.42, 1.38], [3.53, 3.82, 4.23]],
            PEER: [[1.0, 1.01, 0.99], [4.12, 5.22, 2.89]]}


def test_blocks_that_agree_give_one_verdict_from_the_confirmation_runs_with_the_spread_beside_it():
    document = _document(AGREE)
    peer = document["best"]["load"]["against"]["peer"]
    assert peer["verdict"] == "slower" and peer["blocks_disagree"] is None
    assert peer["ratio"] == pytest.approx(statistics.fmean(sum(AGREE["fast"], [])) / statistics.fmean(
        sum(AGREE[PEER], [])))  # not the rounds' 1.0 / 1.3: the selection's runs are not in it
    load = next(line for line in report.answer_lines(document) if line.lstrip().startswith("load:"))
    assert "slower than runai_streamer (peer; " in load and "[blocks 1.40-1.45x]" in load
    assert "blocks disagree" not in load
    assert ("load: the peer and ceiling ratios come only from 2 blocks of 3 fresh interleaved rounds after the "
            "selection; the baseline's from the runs it was selected from (best of 2 TensorStore tests, which "
            "flatters it)") in "\n".join(report.answer_lines(document))
    assert document["tests"][1]["stats"]["load_s"]["n"] == 3  # the test's own statistics: the rounds only


def test_blocks_that_disagree_print_the_disagreement_not_a_verdict():
    document = _document(DISAGREE)
    peer = document["best"]["load"]["against"]["peer"]
    assert [b["verdict"] for b in peer["blocks"]] == ["slower", "no significant difference"]
    assert peer["blocks_disagree"] == "their verdicts differ"
    load = next(line for line in report.answer_lines(document) if line.lstrip().startswith("load:"))
    part = load.split(" | ")[1]
    assert part.startswith("blocks disagree against runai_streamer (peer), their verdicts differ: block 1 1.4x "
                           "slower (")
    assert "block 2 0.95x (0.50-1.8x, n.s.)" in part and part.endswith(", n.s.)")
    assert "than runai_streamer" not in part  # no one verdict
    from ckptbench.figures import main

    assert main.advice_lines(document)[1] == ("TensorStore's best load: fast; against runai_streamer, the fastest "
                                              "peer, its confirmation blocks disagree")


def test_blocks_disagree_when_their_intervals_do_not_overlap():
    def block(ratio: float, low: float, high: float, verdict: str = "slower") -> dict:
        return {"ratio": ratio, "ratio_ci95": [low, high], "verdict": verdict}

    assert change.blocks_disagree([block(1.4, 1.3, 1.5), block(2.0, 1.8, 2.2)]) == "their intervals do not overlap"
    assert not change.blocks_disagree([block(1.4, 1.3, 1.5), block(1.45, 1.35, 1.6)])
    assert change.blocks_disagree([block(1.4, 1.3, 1.5), block(0.98, 0.9, 1.4, "no significant difference")]
                                  ) == "their verdicts differ"
    assert not change.blocks_disagree([block(1.4, 1.3, 1.5), {"ratio": 1.3, "ratio_ci95": None,
                                                              "verdict": "too few runs"}])


def test_without_confirmation_the_console_says_the_winners_were_selected_from_these_runs():
    from test_console import make_document

    document = make_document({"base": [2.0, 2.1, 1.9], "fast": [1.0, 1.02, 0.98], "gzip": [1.5, 1.6, 1.4],
                              PEER: [1.3, 1.31, 1.29], "torch_save": [1.8, 1.7, 1.9]})
    assert document["confirmation"] is None
    assert document["best"]["load"]["selected_from"] == {"tensorstore": 3, "peer": 2}
    lines = report.answer_lines(document)
    assert lines[-1] == ("  save, load, save + load: best of 3 TensorStore tests and of 2 peers, selected from these "
                         "runs, which flatters both; testing.confirm_rounds measures them again in fresh rounds")


def test_a_suite_without_peers_or_ceiling_has_nothing_to_confirm(tmp_path: Path):
    """Only TensorStore tests: no ratio of the answer needs confirming, so no confirmation run is made, and the
    console says where the winner was selected from."""
    suite = config.from_dict({**SUITE, "output_dir": str(tmp_path / "out"), "references": {},
                              "testing": {**SUITE["testing"], "num_runs": 2}})
    document = run_suite(RunContext(suite)).document
    assert document["confirmation"]["runs"] == [] and document["confirmation"]["selected"] == {}
    text = report.console(document)
    assert "load: best of 2 TensorStore tests, selected from these runs, which flatters it;" in text
    assert "did not run" not in text


# --- compare: two invocations as two blocks ---------------------------------------------------------------

def test_compare_joins_two_files_as_blocks_and_says_when_they_disagree():
    from ckptbench.analysis import versus
    from ckptbench.reports import compare as compare_report

    ceiling = {"device_ceiling": [[0.5, 0.51, 0.49]]}
    first = _document({"fast": [[1.40, 1.42, 1.38]], PEER: [[1.0, 1.01, 0.99]], **ceiling})  # 1.4x slower
    later = _document({"fast": [[3.53, 3.82, 4.23]], PEER: [[4.12, 5.22, 2.89]], **ceiling})  # the same
    again = _document({"fast": [[1.45, 1.47, 1.43]], PEER: [[1.0, 1.02, 0.98]], **ceiling})

    def text(doc_a: dict, doc_b: dict) -> str:
        rows = versus.compare_documents(doc_a, doc_b, 5.0)
        return compare_report.render(Document(doc_a, Path("a.json")), Document(doc_b, Path("b.json")), rows, 5.0)

    line = next(x for x in text(first, later).splitlines() if x.startswith("  load: fast against runai_streamer"))
    assert line == ("  load: fast against runai_streamer (peer): A 1.4x slower (1.36-1.44x), B 0.95x (0.50-1.8x, n.s.): "
                    "the files disagree (their verdicts differ): no one verdict")
    split = _document(DISAGREE)  # a file whose own blocks disagree: B's answer says so, not one ratio
    assert ("  B: TensorStore's best loads (fast) against runai_streamer, the fastest peer: its confirmation blocks "
            "disagree, block 1 1.4x slower (1.36-1.44x), block 2 0.95x (0.50-1.8x, n.s.)") in text(first, split)
    line = next(x for x in text(first, again).splitlines() if x.startswith("  load: fast against runai_streamer"))
    assert line.endswith(": they agree [ratios 1.40-1.45x]") and "disagree" not in line
    unconfirmed = make_unconfirmed()
    line = next(x for x in text(unconfirmed, unconfirmed).splitlines() if x.startswith("  load: fast against"))
    assert "[best of K, selected from these runs]" in line


def make_unconfirmed() -> dict:
    from test_console import make_document

    return make_document({"base": [2.0, 2.1, 1.9], "fast": [1.0, 1.02, 0.98], PEER: [1.3, 1.31, 1.29]})


def test_the_plan_counts_the_confirmation_runs_at_most():
    from ckptbench.bench import capacity

    suite = config.from_dict({**SUITE, "output_dir": "/tmp/unused"})  # 2 TensorStore tests, a peer, the ceiling
    assert capacity.confirmation_runs_upper(suite) == 3 * 3 * 2  # load: the best, the peer, the ceiling
    wider = config.from_dict({**SUITE, "output_dir": "/tmp/unused",
                              "testing": {**SUITE["testing"], "confirm_objectives": ["save", "load"]}})
    assert capacity.confirmation_runs_upper(wider) == (2 + 1 + 1) * 3 * 2  # no more winners than tests
    alone = config.from_dict({**SUITE, "output_dir": "/tmp/unused", "references": {}})
    assert capacity.confirmation_runs_upper(alone) == 0
    off = config.from_dict({**SUITE, "output_dir": "/tmp/unused", "testing": {"num_runs": 3}})
    assert capacity.confirmation_runs_upper(off) == 0 and off.confirm_rounds == 0
    assert capacity.estimate_suite_s(suite, 10**8) > capacity.estimate_suite_s(off, 10**8) + 0.3  # runs, pause
