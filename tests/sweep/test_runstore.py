"""The run store shared by sweeps: linked copies, the DVC stage's folder taken in from and
moved out to the store (stepjepa/sweep/runstore.py), on real folders."""

from pathlib import Path

from stepjepa.sweep.runstore import eval_setting, linked_copy, move_out, take_in
from stepjepa.sweep.specs import eval_folder, is_evaluated, is_trained, mark_evaluated

A, B = "a" * 32, "b" * 32  # two evaluation settings


def finished(run: Path, *settings: str, split: str = "validation") -> Path:
    """A run folder with a finished model and one evaluation per setting."""
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "model" / "model.safetensors").write_bytes(b"weights")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "config.yaml").write_text("train: {}\n")
    for key in settings:
        folder = eval_folder(run, split, key)
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text("{}")
        mark_evaluated(run, split, key)
    return run


def test_a_linked_copy_shares_the_model_and_nothing_written_into_it_reaches_the_original(tmp_path):
    src = finished(tmp_path / "sweep" / "k1_s0-12345678", A)
    copy = linked_copy(src, tmp_path / "store" / src.name)
    assert is_trained(copy) and is_evaluated(copy, "validation", A)
    weights = "model/model.safetensors"
    assert (copy / weights).stat().st_ino == (src / weights).stat().st_ino, "the model is not copied"
    (copy / "config.yaml").write_text("changed")
    mark_evaluated(copy, "validation", A)
    (eval_folder(copy, "validation", B)).mkdir()
    assert (src / "config.yaml").read_text() == "train: {}\n"
    assert not (src / "eval" / f"validation-{B[:8]}").exists()


def test_the_stage_takes_a_finished_run_from_the_store_instead_of_training_it(tmp_path):
    stored = finished(tmp_path / "store" / "k1_s0-12345678", A)
    home = tmp_path / "sweep" / stored.name
    assert take_in(home, stored, A)
    assert is_trained(home) and is_evaluated(home, "validation", A) and not stored.exists()
    # The stage has the run and the store a newer evaluation of it: only that comes in.
    stored = linked_copy(home, stored)
    (stored / "eval" / f"validation-{A[:8]}").rename(stored / "eval" / f"validation-{B[:8]}")
    (stored / "eval" / f"validation-{B[:8]}" / "eval_key").write_text(B + "\n")
    assert take_in(home, stored, A) is None, "nothing the stage needs"
    assert take_in(home, stored, B) and is_evaluated(home, "validation", B)
    assert not (stored / "eval" / f"validation-{B[:8]}").exists()


def test_the_stage_moves_out_what_its_sweep_does_not_use_and_loses_nothing(tmp_path):
    sweep, store = tmp_path / "sweep", tmp_path / "store"
    kept = finished(sweep / "k1_s0-12345678", A, B)
    finished(sweep / "k2_s0-87654321", A)  # a run the params file no longer sweeps
    old = finished(sweep / "sft_s0-11112222")  # the old layout: eval/<split>/ with its marker
    (old / "eval" / "test").mkdir(parents=True)
    (old / "eval" / "test" / "eval_key").write_text(B + "\n")
    assert eval_setting(old / "eval" / "test") == B[:8]
    moved = move_out(sweep, store, {kept.name: {("validation", A)}, old.name: {("validation", A), ("test", A)}})
    assert len(moved) == 3, moved
    assert sorted(p.name for p in sweep.iterdir()) == [kept.name, old.name]
    assert is_evaluated(kept, "validation", A) and not is_evaluated(kept, "validation", B)
    assert is_evaluated(store / kept.name, "validation", B), "the other setting lives on in the store"
    assert is_trained(store / "k2_s0-87654321") and is_evaluated(store / "k2_s0-87654321", "validation", A)
    assert is_evaluated(store / old.name, "test", B) and not (old / "eval" / "test").exists()
    assert move_out(sweep, store, {kept.name: {("validation", A)}, old.name: {("test", A)}}) == [], (
        "a second time: nothing left to move"
    )
    # A test evaluation of this setting that this sweep did not read (another selection) goes too.
    test = eval_folder(kept, "test", A)
    test.mkdir(parents=True)
    mark_evaluated(kept, "test", A)
    assert move_out(sweep, store, {kept.name: {("validation", A)}, old.name: set()}) == [
        f"{kept.name}/eval/{test.name} (not used by this sweep)"
    ]
    assert is_evaluated(store / kept.name, "test", A) and is_evaluated(kept, "validation", A)
    # Back to setting B: the stage takes its evaluation in again instead of evaluating anew.
    assert take_in(kept, store / kept.name, B) and is_evaluated(kept, "validation", B)
