"""Run folders shared by several sweeps of one project: the DVC stage's out and the run store.

`runs/sweep` is the `sweep` stage's DVC out: it must hold exactly the params file's sweep, or
`dvc status` turns dirty and the next `make run` writes another sweep's runs into dvc.lock.
Every other sweep (the Prefect UI's, a script's) trains and evaluates in the run store,
`runs/store` (ignored by git and DVC), and reuses the stage's finished runs without writing
into them: a new evaluation of one is made on a copy in the store whose model files are hard
links (`linked_copy`). The stage takes finished runs from the store instead of training them
(`take_in`) and, once done, moves every run folder and evaluation its sweep does not use out
to the store (`move_out`), so nothing computed is lost.

Folders are named by their cache keys (`specs.run_folder`, `specs.eval_folder`): the same
name in either place is the same config on the same data, whichever sweep made it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from stepjepa.runlock import Locked, hold
from stepjepa.sweep.specs import evaluation_key, is_trained

log = logging.getLogger(__name__)

# Files a finished run never rewrites: hard links to them cost no disk and cannot change the original.
_LINKED = ("model",)


def linked_copy(src: Path, dest: Path) -> Path:
    """A copy of run folder `src` at `dest`: the model's files hard links (a finished model is
    never written again), everything else (config, metrics, evaluations) copied, so that
    writing into the copy never changes `src`. Falls back to copying where links fail (another
    file system)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n in (".lock", "checkpoints")] if Path(folder) == src else []

    shutil.copytree(src, partial, ignore=ignore)
    for name in _LINKED:
        for file in (src / name).rglob("*") if (src / name).is_dir() else []:
            if file.is_file():
                target = partial / file.relative_to(src)
                target.unlink()
                try:
                    os.link(file, target)
                except OSError:
                    shutil.copy2(file, target)
    partial.rename(dest)  # whole or not at all: a copy cut short is never taken for a run
    return dest


def eval_setting(folder: Path) -> str | None:
    """The first 8 hex digits of an evaluation folder's settings key: from its name
    (`<split>-<key8>`) or, in the old layout (`eval/<split>/`), from its marker."""
    split, _, key8 = folder.name.rpartition("-")
    if split and len(key8) == 8:
        return key8
    key = evaluation_key(folder)
    return key[:8] if key else None


def _split(folder: Path) -> str:
    return folder.name.rpartition("-")[0] or folder.name


def _free(run: Path) -> bool:
    """No process is training in `run` (its lock is free)."""
    try:
        with hold(run / ".lock", f"run folder {run}"):
            return True
    except Locked:
        return False


def take_in(home: Path, stored: Path, eval_key: str) -> str | None:
    """The DVC stage's run folder `home`, from the store's `stored` when the store holds what
    it lacks: the whole folder when `home` has no finished model, else the evaluations with
    the settings `eval_key` that `home` lacks. Moved, not copied: the run lives on in the
    stage's out, where every other sweep still finds it. Returns what was taken, or None."""
    if not stored.is_dir() or not _free(stored):
        return None
    if not is_trained(home) and (is_trained(stored) or not home.exists()):
        shutil.rmtree(home, ignore_errors=True)
        home.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(stored, home)
        return f"{home.name} from {stored.parent}"
    if not is_trained(home) or not is_trained(stored):
        return None
    taken = []
    for folder in sorted((stored / "eval").glob("*")):
        target = home / "eval" / f"{_split(folder)}-{eval_key[:8]}"
        if eval_setting(folder) == eval_key[:8] and evaluation_key(folder) == eval_key and not target.exists():
            if evaluation_key(home / "eval" / _split(folder)) == eval_key:
                continue  # the old layout holds it already
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(folder, target)
            taken.append(target.name)
    return f"{home.name}'s evaluation {', '.join(taken)} from {stored.parent}" if taken else None


def move_out(runs_dir: Path, store: Path, keep: dict[str, set[tuple[str, str]]]) -> list[str]:
    """Every run folder of `runs_dir` not named in `keep` ({folder name: {(split, eval key)}
    this sweep used}), and every evaluation of a kept one that this sweep did not use (other
    settings; a test split it did not read), moved to `store`, merged into the store's folder
    of the same run if any: `runs_dir` then holds exactly this sweep. One line per move."""
    moved = []
    for run in sorted(p for p in runs_dir.glob("*") if p.is_dir()):
        if run.name not in keep:
            if _free(run):
                _merge_into(run, store / run.name)
                moved.append(f"{run.name} (not in this sweep)")
            continue
        used = {(split, key[:8]) for split, key in keep[run.name]}
        for folder in sorted((run / "eval").glob("*")):
            setting = eval_setting(folder)
            if setting is None or (_split(folder), setting) in used:
                continue
            _move_evaluation(folder, run, store / run.name)
            moved.append(f"{run.name}/eval/{folder.name} (not used by this sweep)")
    return moved


def _move_evaluation(folder: Path, run: Path, stored: Path) -> None:
    if not is_trained(stored):
        shutil.rmtree(stored, ignore_errors=True)
        linked_copy(run, stored)
        shutil.rmtree(stored / "eval", ignore_errors=True)
    target = stored / "eval" / f"{_split(folder)}-{eval_setting(folder)}"
    if target.exists():
        shutil.rmtree(folder)  # the store has this evaluation already
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(folder, target)


def _merge_into(run: Path, stored: Path) -> None:
    """Run folder `run` into the store at `stored`: moved whole, or, where the store has the
    run already, its evaluations the store lacks."""
    if not stored.exists() or (is_trained(run) and not is_trained(stored)):
        shutil.rmtree(stored, ignore_errors=True)
        stored.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(run, stored)
        return
    for folder in sorted((run / "eval").glob("*")):
        if eval_setting(folder) is not None and evaluation_key(folder) is not None:
            _move_evaluation(folder, run, stored)
    shutil.rmtree(run)
