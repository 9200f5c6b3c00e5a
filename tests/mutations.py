"""Mutation check: plant realistic bugs one at a time and show that the test suite fails on each.

Each mutation is a textual patch (one exact snippet of a source file replaced by a buggy one) with the
tests that should catch it. The check copies the repository (the files git tracks or would track, as they
are in the working tree) into a temporary directory, then for each mutation patches the copy, runs only
its tests there (pytest -x, one thread) and restores the file. The repository itself is never written.
A mutation survives when its tests pass with the bug in place: the suite is then not proof of what
those tests are named for.

    python tests/mutations.py                 # all mutations (a baseline run first: the tests pass unpatched)
    python tests/mutations.py --only crc      # mutations whose name contains "crc"
    python tests/mutations.py --list          # the mutations and their tests, nothing run
    python tests/mutations.py --commit HEAD   # the committed state, without uncommitted edits
    python tests/mutations.py --write         # also write the table to docs/results.md

Exit status 0 when every mutation is killed, 1 when one survives or the baseline fails, 2 for bad use.
docs/testing.md says when to run it and how to add a mutation.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Seconds one mutation's tests may run; a hang counts as a kill (the suite noticed), but is reported.
TIMEOUT_SECONDS = 900
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Mutation:
    """A realistic bug: in `path`, the snippet `old` (present exactly once) becomes `new`; `tests` are the
    pytest node ids (files, or file::function for every parametrisation) that must fail."""

    name: str
    area: str
    bug: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


def _t(*node_ids: str) -> tuple[str, ...]:
    return tuple(f"tests/{node}" for node in node_ids)


MUTATIONS = (
    # ---- models --------------------------------------------------------------------------------------------
    Mutation("glue-dropout-replay", "models",
             "the recomputed glue's GLU backward applies the first dropout's mask instead of the second's",
             "echoforge/models/glue.py",
             "k.grad_vg.data_ptr(), *self.mask_args(1, b, s))", "k.grad_vg.data_ptr(), *self.mask_args(0, b, s))",
             _t("test_models.py::test_recomputed_glue_gives_the_gradients_of_the_stored_glue")),
    Mutation("glue-chunk-off-by-one", "models",
             "the glue's chunks stop one chunk early (the ragged last chunk is never written)",
             "echoforge/models/glue.py",
             "for t in range(span.start, span.stop, size)]", "for t in range(span.start, span.stop - size, size)]",
             _t("test_models.py::test_recomputed_glue_gives_the_gradients_of_the_stored_glue")),
    Mutation("fused-block-restart-state", "models",
             "the fused block re-runs every chunk of the bank from the first chunk's kept state",
             "echoforge/models/block.py",
             "_numpy(forcing.steps(spans[k])), *ctx.starts[k])", "_numpy(forcing.steps(spans[k])), *ctx.starts[0])",
             _t("test_models.py::test_fused_block_gives_the_output_and_gradients_of_bank_and_glue_apart")),
    Mutation("fused-block-keeps-positions", "models",
             "the block runs the bank and the glue apart under host RHEL (the positions stored)",
             "echoforge/models/hssm.py",
             "        if self.hru.on_float_core_rhel():\n", "        if False:\n",
             _t("test_models.py::test_rhel_blocks_keep_only_their_normalised_input")),
    Mutation("glue-slots-per-thread", "models",
             "in_slots runs a thread's items all in its first slot (the glue's sums then depend on the thread count)",
             "echoforge/models/core.py",
             "                task(slot, own, i)\n", "                task(mine[0], own, i)\n",
             _t("test_models.py::test_recomputed_glue_is_the_same_bits_on_any_number_of_threads")),
    Mutation("echo-nudge-off-by-one", "models",
             "the echo adds the nudge of step k instead of k − 1",
             "echoforge/models/kernels.c",
             "t > 0 ? nudges[(bi * nt + t - 1) * npos + p]", "t > 0 ? nudges[(bi * nt + t) * npos + p]",
             _t("test_models.py::test_linear_hru_rhel_equals_bptt")),
    Mutation("echo-chunk-drops-last-step", "models",
             "time_chunks ends one step short of the sequence",
             "echoforge/models/core.py",
             "slice(start, min(start + size, length))", "slice(start, min(start + size, length - 1))",
             _t("test_models.py::test_linear_hru_rhel_equals_bptt")),
    Mutation("adjoint-step-sign", "models",
             "a sign in BPTT's step-size gradient",
             "echoforge/models/kernels.c",
             "grads[npos + p] += g_d + 0.5 * pi * l_m", "grads[npos + p] += g_d - 0.5 * pi * l_m",
             _t("test_models.py::test_bptt_equals_torch_autograd_through_unrolled_leapfrog")),
    Mutation("sigmoid-twice", "models",
             "the nonlinear HRU applies the sigmoid to c twice (the reference code's bug)",
             "echoforge/models/hru.py",
             "self.b, torch.sigmoid(self.c_raw)])", "self.b, torch.sigmoid(torch.sigmoid(self.c_raw))])",
             _t("test_models.py::test_nonlinear_hru_potential_is_the_documented_one")),
    Mutation("step-gradient-dropped", "models",
             "a trained nonlinear step size gets no gradient (the reference code's zero)",
             "echoforge/models/hru.py",
             "torch.exp(self.log_step), self.W", "torch.exp(self.log_step.detach()), self.W",
             _t("test_models.py::test_a_trained_nonlinear_step_gets_the_documented_gradient")),
    Mutation("resume-skips-rng", "models",
             "resume restores model and optimizer but not torch's RNG (other dropout masks)",
             "echoforge/models/training.py",
             "        torch.set_rng_state(state[\"rng\"])\n", "",
             _t("test_training.py::test_killed_run_resumes_to_identical_parameters")),
    # ---- emulator ------------------------------------------------------------------------------------------
    Mutation("round-shift-half-up", "emulator",
             "R(x, s) rounds ties up instead of away from zero (not odd-symmetric: the echo does not retrace)",
             "echoforge/targets/emulator/fixed.py",
             "return (x + (((1 << s) + (x >> 63)) >> 1)) >> s", "return (x + ((1 << s) >> 1)) >> s",
             _t("test_emulator.py::test_round_shift_is_odd_symmetric",
                "test_emulator.py::test_round_shift_rounds_to_nearest_ties_away_from_zero")),
    Mutation("quantize-ties-to-zero", "emulator",
             "Q rounds ties toward zero",
             "echoforge/targets/emulator/fixed.py",
             "(magnitude - whole >= 0.5)", "(magnitude - whole > 0.5)",
             _t("test_emulator.py")),
    Mutation("nudge-saturation-uncounted", "emulator",
             "a clamped minus-echo nudge is not counted as a saturation",
             "echoforge/targets/emulator/kernels.py",
             "n += (pi_plus[p] != plus) + (pi_minus[p] != minus)", "n += (pi_plus[p] != plus)",
             _t("test_emulator.py::test_a_nudge_that_clamps_either_echo_is_counted")),
    Mutation("quantize-saturation-uncounted", "emulator",
             "quantising parameters or streams forgets to count saturated values",
             "echoforge/targets/emulator/fixed.py",
             "        saturated += clamped\n", "",
             _t("test_emulator.py")),
    # ---- fpga ----------------------------------------------------------------------------------------------
    Mutation("fold-ignores-memory-reads", "fpga",
             "a folded pipeline merges the stage that addresses a memory with the stage that reads its data",
             "echoforge/targets/fpga/rtl/pipeline.py",
             "            if earlier in self.cuts or run == self.fold:",
             "            if run == self.fold:",
             _t("test_fpga_rtl.py::test_a_folded_pipeline_equals_the_emulator")),
    Mutation("gateware-chunk-to-the-end-refused", "fpga",
             "the executor's program refuses a forward chunk that ends exactly at the phase's length",
             "echoforge/targets/fpga/gateware/microcode.py",
             '    p.cmp("L")\n    p.fail(OUT_OF_ORDER, "gt")', '    p.cmp("L")\n    p.fail(OUT_OF_ORDER, "ge")',
             _t("test_gateware.py::test_core_commands_answer_as_the_board_simulator_does")),
    Mutation("gateware-samples-unsigned", "fpga",
             "the sequencer's request reader zero-extends a signed sample",
             "echoforge/targets/fpga/gateware/rtl/ef_commands.v",
             "a_byte_fill = i_imm[3] && A[31];", "a_byte_fill = 1'b0;",
             _t("test_gateware.py::test_core_commands_answer_as_the_board_simulator_does")),
    # ---- compiler ------------------------------------------------------------------------------------------
    Mutation("fold-norm-shift-sign", "compiler",
             "folding batch norm adds the mean instead of subtracting it",
             "echoforge/compiler/passes/fold_norm.py",
             "shift = -ir.param(norm, \"mean\")", "shift = ir.param(norm, \"mean\")",
             _t("test_compiler.py")),
    Mutation("shared-state-narrowest", "compiler",
             "a bank's shared state format takes the narrowest of its tensors' formats, not the widest",
             "echoforge/compiler/passes/choose_formats.py",
             "widest = max(bits[tensor] for tensor in group)", "widest = min(bits[tensor] for tensor in group)",
             _t("test_compiler.py")),
    Mutation("headroom-ignored", "compiler",
             "formats are chosen without the requested headroom",
             "echoforge/compiler/passes/choose_formats.py",
             "target = value * 2.0 ** headroom_bits", "target = value",
             _t("test_compiler.py")),
    # ---- runtime -------------------------------------------------------------------------------------------
    Mutation("crc-skipped", "runtime",
             "a frame's CRC is never checked",
             "echoforge/runtime/frame.py",
             "if zlib.crc32(body) != crc:", "if False:",
             _t("test_link.py::test_frame_damage_is_a_checksum_error",
                "test_link.py::test_reader_recovers_every_intact_frame_from_a_damaged_stream")),
    Mutation("seq-no-wrap", "runtime",
             "the sequence number is not wrapped at 0xFFFF",
             "echoforge/runtime/link.py",
             "(self._next_seq + 1) & 0xFFFF", "self._next_seq + 1",
             _t("test_link.py::test_sequence_numbers_wrap_from_0xffff_to_0")),
    Mutation("stale-uncounted", "runtime",
             "the host does not count stale frames",
             "echoforge/runtime/link.py",
             "                self._counts[\"stale\"] += 1\n", "                pass\n",
             _t("test_link.py::test_a_late_response_to_an_abandoned_call_is_counted_stale_and_skipped")),
    Mutation("ignored-uncounted", "runtime",
             "the device does not count the frames it ignores",
             "echoforge/runtime/link.py",
             "            self._counts[\"ignored\"] += 1\n", "            pass\n",
             _t("test_link.py::test_frames_a_device_does_not_answer_are_counted_ignored")),
    Mutation("response-size-unchecked", "runtime",
             "the link server sends a response larger than the protocol's maximum payload",
             "echoforge/runtime/link.py",
             "if len(payload) > MAX_PAYLOAD:", "if False:",
             _t("test_link.py::test_a_response_too_large_for_a_frame_becomes_an_error_and_the_server_survives")),
    Mutation("row-pages-off-by-one", "runtime",
             "the host splits a large batch into row groups that skip a row at each boundary",
             "echoforge/runtime/device.py",
             "for start in range(0, total, size)]", "for start in range(0, total, size + 1)]",
             _t("test_runtime_device.py::test_batches_too_large_for_the_board_are_split_without_changing_a_bit")),
    Mutation("board-rows-off-by-one", "runtime",
             "the board accepts a row range that ends one row past the batch",
             "echoforge/runtime/board.py",
             "if rows == 0 or first + rows > batch:", "if rows == 0 or first + rows > batch + 1:",
             _t("test_board.py::test_refusals")),
    # ---- hil -----------------------------------------------------------------------------------------------
    Mutation("hil-sha-unchecked", "hil",
             "HIL training accepts a source checkpoint that changed since compilation",
             "echoforge/hil/trainer.py",
             "if hashlib.sha256(path.read_bytes()).hexdigest() != provenance.source_sha256:", "if False:",
             _t("test_hil.py::test_a_missing_or_changed_source_checkpoint_is_refused")),
    Mutation("hil-resume-other-program", "hil",
             "resuming a HIL run against another program is not refused",
             "echoforge/hil/trainer.py",
             "    if {k: identity[k] for k in (\"source_sha256\", \"banks\")} != ",
             "    if False and {k: identity[k] for k in (\"source_sha256\", \"banks\")} != ",
             _t("test_hil.py::test_resuming_against_another_program_is_refused")),
    Mutation("hil-learning-rule", "hil",
             "a HIL run accepts a learning rule other than RHEL",
             "echoforge/hil/trainer.py",
             "    if config[\"learning\"] != \"rhel\":", "    if False:",
             _t("test_hil.py::test_a_learning_rule_other_than_rhel_is_refused")),
    Mutation("hil-start-not-validated", "hil",
             "HIL training does not validate the program as compiled, so its best step can never be the start",
             "echoforge/hil/trainer.py",
             "                if not resume:  # the program as compiled",
             "                if False:  # the program as compiled",
             _t("test_hil.py::test_the_program_as_compiled_is_validated_first_and_may_stay_the_best")),
    Mutation("hil-float-test-on-device", "hil",
             "the report's float accuracy is taken on the device's banks",
             "echoforge/hil/trainer.py",
             "with banks_on(self.model, [FloatCore() for _ in self.cores]):",
             "with banks_on(self.model, self.cores):",
             _t("test_hil.py::test_the_device_and_float_test_scores_are_of_the_same_parameters")),
    Mutation("fidelity-warns-at-equality", "hil",
             "the fidelity monitor flags a device gradient equal to the emulator's (≥ for >)",
             "echoforge/hil/fidelity.py",
             "if values[\"emulator_max_diff\"] > EMULATOR_TOLERANCE:", "if values[\"emulator_max_diff\"] >= EMULATOR_TOLERANCE:",
             _t("test_hil.py::test_divergence_is_named_against_the_thresholds_where_host_rhel_meets_them")),
)


# ---- the copy ----------------------------------------------------------------------------------------------


def repository_files(root: Path) -> list[str]:
    """The files git tracks or would track (not ignored), as in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (root / name).is_file()]


def copy_repository(root: Path, destination: Path, commit: str | None = None) -> None:
    """The repository's files as in the working tree, with their times (so numba's on-disk caches, copied
    too, stay valid); or, given a commit, as committed there (other people's unfinished edits left out)."""
    if commit is not None:
        archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=root, capture_output=True)
        if archive.returncode:
            raise ValueError(f"--commit {commit}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(destination, filter="data")
        return
    for name in repository_files(root):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    for cache in (root / "echoforge").rglob("__pycache__/*.nb[ic]"):
        target = destination / cache.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cache, target)


def check_applies(mutation: Mutation, root: Path = ROOT) -> None:
    """Raise ValueError unless the mutation's snippet occurs exactly once in its file."""
    count = (root / mutation.path).read_text().count(mutation.old)
    if count != 1:
        raise ValueError(f"mutation {mutation.name}: its snippet occurs {count} times in {mutation.path} "
                         "(expected once) — the code changed: update the mutation in tests/mutations.py")


class Patched:
    """Inside the block, the copy's file carries the mutation (and a new modification time, so that
    numba's cache recompiles it); afterwards the original bytes and times are back."""

    def __init__(self, copy: Path, mutation: Mutation):
        self.path, self.mutation = copy / mutation.path, mutation

    def __enter__(self):
        self.original, self.stat = self.path.read_bytes(), self.path.stat()
        self.path.write_text(self.original.decode().replace(self.mutation.old, self.mutation.new))
        os.utime(self.path, (self.stat.st_atime + 1, self.stat.st_mtime + 1))

    def __exit__(self, *exc_info):
        self.path.write_bytes(self.original)
        os.utime(self.path, (self.stat.st_atime, self.stat.st_mtime))


# ---- running the tests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    failed: list[str]  # the failing (or erroring) test ids, in order
    ran: int  # test cases in the report (0: the selection matched nothing)
    seconds: float
    timed_out: bool
    output: str


def run_tests(copy: Path, node_ids: list[str], stop_at_first: bool) -> Outcome:
    """pytest on `node_ids` in the copy, one thread, with the copy's echoforge first on the path."""
    report = copy / ".mutation-report.xml"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "",
               f"--junitxml={report}", *(["-x"] if stop_at_first else []), *node_ids]
    environment = os.environ | ONE_THREAD | {"PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=copy, env=environment, capture_output=True, text=True,
                              timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return Outcome([], 0, time.monotonic() - started, True, output)
    return Outcome(*_test_cases(report), time.monotonic() - started, False, done.stdout + done.stderr)


def _test_cases(report: Path) -> tuple[list[str], int]:
    """The failed (or erroring) test ids in the junit report, and how many test cases it has."""
    if not report.exists():
        return [], 0
    cases = list(ElementTree.parse(report).getroot().iter("testcase"))
    failed = [f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}" for case in cases
              if case.find("failure") is not None or case.find("error") is not None]
    return failed, len(cases)


def check_copy_is_imported(copy: Path) -> None:
    """The copy's package, not the repository's editable install, must be the one the tests import."""
    environment = os.environ | {"PYTHONPATH": str(copy)}
    found = subprocess.run([sys.executable, "-c", "import echoforge; print(echoforge.__file__)"], cwd=copy,
                           env=environment, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(copy.resolve()):
        raise RuntimeError(f"the tests would import echoforge from {found}, not from the copy in {copy}")


# ---- the check ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    mutation: Mutation
    outcome: Outcome

    @property
    def killed(self) -> bool:
        return bool(self.outcome.failed) or self.outcome.timed_out

    @property
    def killer(self) -> str:
        if self.outcome.timed_out:
            return f"timeout after {TIMEOUT_SECONDS} s"
        if self.outcome.failed:
            return self.outcome.failed[0].removeprefix("tests/")
        return "SURVIVED" if self.outcome.ran else "SURVIVED (its tests matched nothing)"


def run_check(mutations: list[Mutation], baseline: bool = True, commit: str | None = None,
              progress=print) -> tuple[list[Result], Outcome | None]:
    """Baseline (the selected tests pass unpatched), then each mutation in turn on one copy (of the working
    tree, or of `commit`)."""
    with tempfile.TemporaryDirectory(prefix="echoforge-mutations-") as directory:
        copy = Path(directory)
        copy_repository(ROOT, copy, commit)
        for mutation in mutations:
            check_applies(mutation, copy)
        check_copy_is_imported(copy)
        base = None
        if baseline:
            selected = list(dict.fromkeys(node for mutation in mutations for node in mutation.tests))
            progress(f"baseline: {len(selected)} test selections, unpatched")
            base = run_tests(copy, selected, stop_at_first=False)
            if base.failed or base.timed_out:
                return [], base
            progress(f"baseline passed in {base.seconds:.0f} s")
        results = []
        for index, mutation in enumerate(mutations, 1):
            with Patched(copy, mutation):
                outcome = run_tests(copy, list(mutation.tests), stop_at_first=True)
            results.append(result := Result(mutation, outcome))
            progress(f"[{index}/{len(mutations)}] {mutation.name}: {result.killer} ({outcome.seconds:.0f} s)")
        return results, base


def table(results: list[Result]) -> str:
    rows = ["| mutation | area | the bug | killed by | seconds |", "|---|---|---|---|---|"]
    rows += [f"| `{r.mutation.name}` | {r.mutation.area} | {r.mutation.bug} (`{r.mutation.path}`) | "
             f"`{r.killer}` | {r.outcome.seconds:.0f} |" for r in results]
    return "\n".join(rows)


def summary(results: list[Result], base: Outcome | None) -> str:
    killed = sum(r.killed for r in results)
    seconds = sum(r.outcome.seconds for r in results) + (base.seconds if base else 0)
    baseline = f", baseline {base.seconds:.0f} s" if base else ""
    return (f"{killed} of {len(results)} mutations killed; {seconds / 60:.1f} min in pytest{baseline} "
            "(each mutation runs only its tests, pytest -x, one thread)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run the mutations whose name contains TEXT (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unpatched run of the selected tests")
    parser.add_argument("--commit", metavar="REF", help="check the repository as committed at REF (e.g. HEAD) "
                        "instead of the working tree")
    parser.add_argument("--write", action="store_true", help="write the table to docs/results.md")
    args = parser.parse_args(argv)
    mutations = [m for m in MUTATIONS if not args.only or any(text in m.name for text in args.only)]
    if not mutations:
        parser.error(f"no mutation name contains {' or '.join(args.only)}; --list shows them")
    if args.list:
        for m in mutations:
            print(f"{m.name:32} {m.area:9} {m.path}: {m.bug}\n{'':42} tests: {' '.join(m.tests)}")
        return 0
    try:
        results, base = run_check(mutations, baseline=not args.no_baseline, commit=args.commit)
    except ValueError as error:
        print(f"mutations: error: {error}", file=sys.stderr)
        return 2
    if not results:
        print(f"the baseline fails without a mutation (fix that first): {base.failed or 'timeout'}\n{base.output[-3000:]}")
        return 1
    print(table(results))
    print(summary(results, base))
    if args.write:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from results_doc import write_section
        write_section("mutations", "## Mutation check: planted bugs and the tests that catch them (tests/mutations.py)\n\n"
                      f"{table(results)}\n\n{summary(results, base)}.")
    return 0 if all(r.killed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
