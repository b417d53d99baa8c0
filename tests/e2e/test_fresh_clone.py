"""One project under real git and DVC, from its author to fresh clones (issue 17).

The author's first `dvc repro` builds every output and accounts for every record (a
malformed source line is skipped and counted); `dvc metrics show` is the sweep's table; a
second repro is a no-op; a param change reruns only what it affects (last: the clones are
made from the author's commit before it). A fresh clone whose data stages are up to date
but that has no run folders and an empty MLflow store must train the sweep and register its
champion; the committed `dvc.lock` and metrics must not change when the results are the
same; a second run is a no-op. Real git, DVC, Prefect and MLflow, the tiny model. (The DVC
tests and the fresh-clone tests shared one kind of project, each its own `dvc repro` with a
two-run sweep; now they share the author's: ~60 CPU-s of `make test` fewer.)"""

import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.support.projects import copy_project
from tests.support.synthetic import synthetic_raw_record

pytestmark = pytest.mark.e2e


def run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def make_run(repo: Path, env: dict) -> str:
    """What `make run` runs (the Makefile's `run` target without the venv step)."""
    return run(["dvc", "repro"], repo, env) + run([sys.executable, "-m", "pipelines.sweep", "--reconcile"], repo, env)


def ui_sweep(repo: Path, env: dict, name: str, sweep: str, log: Path) -> str:
    """docs/sweeps.md's Prefect UI sweep from the command line: serve the flow as deployment
    `name` in `repo`, run it with `-p sweep=SWEEP` and watch it to the end; its output."""
    from tests.support.servers import BIN, process, wait_for_deployment

    with process([sys.executable, "-m", "pipelines.sweep", "--serve", "--name", name], log, env, cwd=repo):
        wait_for_deployment(env, name)
        triggered = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", f"step-jepa-sweep/{name}", "-p", f"sweep={sweep}"]
            + ["--watch", "--watch-timeout", "400"],
            env=env,
            capture_output=True,
            text=True,
            timeout=450,
        )
    assert triggered.returncode == 0 and "Completed" in triggered.stdout, (
        triggered.stdout + triggered.stderr + log.read_text()[-3000:]
    )
    return triggered.stdout


def environment(repo: Path, source: Path, prefect_url: str | None = None) -> dict:
    """`make run`'s environment in `repo`; with `prefect_url`, its flows use that Prefect server
    (docs/sweeps.md's exported PREFECT_API_URL) instead of starting a temporary one."""
    api = {"PREFECT_API_URL": prefect_url} if prefect_url else {}
    return (
        os.environ
        | api
        | {
            "GSM8K_DIR": str(source),
            "DVC_NO_ANALYTICS": "1",
            "HF_HUB_OFFLINE": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(repo),
            "MLFLOW_TRACKING_URI": f"sqlite:///{repo}/mlflow.db",
            "PREFECT_HOME": str(repo / ".prefect"),
        }
    )


@pytest.fixture(scope="module")
def prefect_url(tmp_path_factory, migrated_prefect):
    """One `prefect server` on 127.0.0.1 for every flow of this module but the author's first
    `make run`, which starts Prefect's temporary server on a new database, as on a fresh
    machine. A temporary server costs each flow ~6.5 CPU-s and ~5 s to start; this module
    started seven. With STEPJEPA_SCREENSHOTS set it serves the UI (the acceptance test's pages)."""
    from tests.support.servers import free_port, prefect_server

    tmp, port = tmp_path_factory.mktemp("prefect-server"), free_port()
    env = os.environ | {
        "PREFECT_HOME": migrated_prefect(tmp / "home"),
        "PREFECT_UI_ENABLED": "true" if os.environ.get("STEPJEPA_SCREENSHOTS") else "false",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",  # the UI's (it assumes port 4200)
    }
    with prefect_server(tmp / "prefect.log", env, port) as api:
        yield api


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A project whose author ran the pipeline (`make run`) and committed dvc.lock and
    metrics/: (repo, GSM8K source, what its first `dvc repro` printed). The source holds a
    malformed line in each split."""
    tmp = tmp_path_factory.mktemp("fresh")
    repo, source = tmp / "author", tmp / "gsm8k"
    params = copy_project(repo, validation_size=10, extra=(".gitignore",))
    # What these tests check is DVC's and the sweep's bookkeeping: a two-run sweep of a few
    # steps will do (the default 10-config sweep made a module of this ~4 min of `make test`).
    params["train"] |= {
        "max_steps": 4,
        "batch_size": 4,
        "checkpoint_every": 2,
        "log_every": 2,
        "eval_every": 2,
        "eval_examples": 4,
    }
    params["eval"] |= {"limit": 6, "max_new_tokens": 12, "batch_size": 6}
    params["sweep"] |= {"ks": [1], "lambdas": [0.5], "experiment": "fresh", "registered_model_name": "sj-fresh"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    rng = random.Random(1)
    source.mkdir()
    for split, n in [("train", 60), ("test", 20)]:
        lines = [json.dumps(synthetic_raw_record(rng)) for _ in range(n)]
        lines.insert(3, '{"question": "cut off')
        (source / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    env = environment(repo, source)
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(["dvc", "remote", "add", "-d", "store", str(tmp / "dvc-remote")], repo, env)
    first_repro = run(["dvc", "repro"], repo, env)
    run([sys.executable, "-m", "pipelines.sweep", "--reconcile"], repo, env)  # the rest of `make run`
    run(["dvc", "push", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results"], repo, env)
    return repo, source, first_repro


def fresh_clone(author: Path, folder: Path, source: Path, prefect_url: str, *pull: str) -> tuple[Path, dict]:
    repo = folder / "repo"
    run(["git", "clone", "-q", str(author), str(repo)], folder, os.environ)
    env = environment(repo, source, prefect_url)
    if pull:
        run(["dvc", "pull", "-q", *pull], repo, env)
    return repo, env


@pytest.fixture(scope="module")
def clone(published, tmp_path_factory, prefect_url):
    """A fresh clone with the data stages' outputs pulled from the DVC remote, no run
    folders, and its own empty MLflow store, which a real `mlflow server` serves, after its
    first `make run`: (repo, env, what `make run` printed). With the module's Prefect server
    these are docs/sweeps.md's servers and exports; issue 32's acceptance test goes on from
    here. (The author's `make run` is the one without servers: a temporary Prefect server and
    the store opened directly. A second fresh clone for the acceptance test cost ~25 CPU-s.)"""
    from tests.support.servers import mlflow_server

    author, source, _ = published
    folder = tmp_path_factory.mktemp("clone")
    repo, env = fresh_clone(author, folder, source, prefect_url, "fetch", "prepare", "build_model", "tokenize")
    assert not (repo / "runs").exists() and not (repo / "mlflow.db").exists()
    with mlflow_server(f"sqlite:///{repo}/mlflow.db", repo / "mlartifacts", folder / "mlflow.log", env) as ml:
        env |= {"MLFLOW_TRACKING_URI": ml}
        yield repo, env, make_run(repo, env)


@pytest.fixture(scope="module")
def pulled(published, tmp_path_factory, prefect_url):
    """A fresh clone that pulled everything from the DVC remote, run folders included, then
    ran `make run`: (repo, env, what `make run` printed, the train logs the pull brought)."""
    author, source, _ = published
    repo, env = fresh_clone(author, tmp_path_factory.mktemp("pulled"), source, prefect_url)
    run(["dvc", "pull", "-q"], repo, env)
    pulled_logs = list((repo / "runs/sweep").glob("*/train.log"))
    return repo, env, make_run(repo, env), pulled_logs


def test_repro_builds_every_output_and_accounts_for_every_record(published):
    repo, _, out = published
    for stage in ["fetch", "prepare", "build_model", "tokenize", "sweep"]:
        assert f"Running stage '{stage}'" in out
    prepare = json.loads((repo / "metrics/prepare.json").read_text())
    assert prepare["train"] | {"skip_examples": None} == {
        "read": 61,
        "kept": 60,
        "kept_lm_only": 0,
        "dropped_short": 0,
        "skipped": 1,
        "skipped_by_reason": {"malformed_json": 1},
        "skip_examples": None,
        "training_records": 50,
    }
    assert prepare["validation"]["records"] == 10
    assert "data/raw/train.jsonl:4:" in prepare["train"]["skip_examples"][0]
    tokenize = json.loads((repo / "metrics/tokenize.json").read_text())
    assert tokenize["test"]["count"] == 20 and tokenize["validation"]["count"] == 10
    assert (repo / "models/tiny/model.safetensors").is_file()
    assert (repo / "data/tokenized/train.parquet").is_file()


def test_metrics_show_is_the_sweeps_table_and_data_statistics_stay_readable(published):
    """`dvc metrics show` holds the experiment's results only (issue 18: the data stages'
    statistics made it one 1,483-character table of ~66 mostly empty columns); the
    statistics are committed outs, shown on request with `dvc metrics show FILE`."""
    repo, source, _ = published
    env = environment(repo, source)
    listed = run(["dvc", "metrics", "show"], repo, env)
    for stage in ["fetch", "prepare", "build_model", "tokenize"]:
        assert f"metrics/{stage}.json" not in listed
    asked = run(["dvc", "metrics", "show", "metrics/tokenize.json"], repo, env)
    assert "metrics/tokenize.json" in asked and "test.count" in asked


def test_second_repro_is_a_noop(published):
    repo, source, _ = published
    out = run(["dvc", "repro"], repo, environment(repo, source))
    assert "Running stage" not in out


def test_fresh_clone_trains_the_sweep_and_registers_the_champion(clone):
    import mlflow

    repo, env, out = clone
    assert "Running stage 'sweep'" in out
    for stage in ["fetch", "prepare", "build_model", "tokenize"]:
        assert f"Running stage '{stage}'" not in out, "the data stages were up to date"
    models = sorted(p.parent.name for p in (repo / "runs/sweep").glob("*/model"))
    assert [m.split("-")[0] for m in models] == ["k1_lam0.5_s0", "sft_s0"]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    assert mlflow.transformers.load_model("models:/sj-fresh@champion") is not None
    status = run(["git", "status", "--porcelain"], repo, env)
    assert status == "", f"the same results must leave dvc.lock and metrics/ unchanged:\n{status}"


def test_second_run_is_a_noop_and_leaves_everything_clean(clone):
    repo, env, _ = clone
    out = make_run(repo, env)
    assert "Running stage" not in out and "is registered in" in out
    assert "up to date" in run(["dvc", "status"], repo, env) or run(["dvc", "status"], repo, env).strip() == ""
    assert run(["git", "status", "--porcelain"], repo, env) == ""


def test_a_clone_that_pulls_the_run_folders_retrains_nothing(pulled):
    """With a DVC remote, `dvc pull` brings the run folders; `make run` trains nothing and
    registers the champion in the clone's own MLflow store from them."""
    import mlflow

    repo, env, out, pulled_logs = pulled
    assert not pulled_logs, "logs are not part of the DVC out"
    assert "Running stage" not in out and "registering it from the run folders" in out
    assert not list((repo / "runs/sweep").glob("*/train.log")), "nothing was trained"
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    assert mlflow.transformers.load_model("models:/sj-fresh@champion") is not None
    assert run(["git", "status", "--porcelain"], repo, env) == ""


@pytest.mark.server
def test_the_prefect_ui_sweep_after_make_run_retrains_nothing(pulled, tmp_path):
    """Issue 18: `make run`, then docs/sweeps.md's Prefect UI sweep with the same grid (a served
    deployment, real `prefect server` and `mlflow server` on the project's own store):
    nothing is trained, no model version is added, and `dvc status` and `git status` stay
    clean (its report goes to `reports/NAME`, which neither DVC nor git tracks). On the
    pulled clone of the test above: one clone, pull and `make run` fewer (~30 CPU-s). The
    Prefect server is the module's, where the deployment is named `pulled` so that the
    acceptance test's `gsm8k` is its own."""
    from mlflow import MlflowClient

    from tests.support.servers import mlflow_server

    repo, env, _, _ = pulled
    store = env["MLFLOW_TRACKING_URI"]
    # (the sqlite store answers versions as int, the REST client as str)
    versions = [str(v.version) for v in MlflowClient(store).search_model_versions("name = 'sj-fresh'")]
    assert versions == ["1"]
    with mlflow_server(store, repo / "mlartifacts", tmp_path / "mlflow.log", env) as ml:
        client_env = env | {"MLFLOW_TRACKING_URI": ml}  # and the module's PREFECT_API_URL
        ui_sweep(repo, client_env, "pulled", '{"ks": [1], "lambdas": [0.5]}', tmp_path / "serve.log")
        after = MlflowClient(ml).search_model_versions("name = 'sj-fresh'")
        assert [str(v.version) for v in after] == versions, "the UI sweep registered the same champion again"
    assert not list((repo / "runs/sweep").glob("*/train.log")), "the UI sweep trained a config make run had trained"
    assert (repo / "reports/pulled/table.md").is_file()
    status = run(["dvc", "status"], repo, env)
    assert "up to date" in status or status.strip() == "", status
    assert run(["git", "status", "--porcelain"], repo, env) == ""


# A sweep that is not the DVC stage, as a served deployment runs it (its runs in the store,
# the stage's reused), with the Prefect form's `sweep` choices: seeds 0 and 1, and (its own
# params file) another evaluation setting.
OTHER_SWEEP = """
import sys
from pipelines.prefect_server import start_temporary_server
from pipelines.sweep import STORE, _run_places, step_jepa_sweep
start_temporary_server()
step_jepa_sweep(sweep={"seeds": [0, 1]}, params_file=sys.argv[1], tokenized="data/tokenized",
                prepared="data/prepared", runs_dir=STORE, report_dir="reports/other", **_run_places(STORE, STORE))
"""


def launches(repo: Path) -> dict[str, int]:
    """Training processes started per run (`$ ` opens each command in train.log), wherever the run is."""
    return {p.parent.name: p.read_text().count("$ ") for p in repo.glob("runs/*/*/train.log")}


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`: (size, modification time in ns)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def store_runs(repo: Path) -> set[str]:
    return {p.name.split("-")[0] for p in (repo / "runs/store").iterdir()}


def test_other_sweeps_share_the_runs_but_the_stage_holds_exactly_the_params_files_sweep(
    published, tmp_path, prefect_url
):
    """Issue 32: another sweep (seeds 0 and 1, another eval.limit) trains seed 1 in the run
    store, evaluates the stage's seed-0 runs on linked copies there, and leaves the stage's out
    and `dvc status` alone; the stage, asked for seeds 0 and 1, takes the seed-1 runs from the
    store instead of training them; back to seed 0, it moves them out again and dvc.lock and
    metrics/ are what they were."""
    repo, source, _ = published
    env = environment(repo, source, prefect_url)
    stage_runs, before = sorted(p.name for p in (repo / "runs/sweep").iterdir()), files(repo / "runs/sweep")
    other = yaml.safe_load((repo / "params.yaml").read_text())
    other["eval"]["limit"] = 4
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    run([sys.executable, "-c", OTHER_SWEEP, str(tmp_path / "other.yaml")], repo, env)
    assert files(repo / "runs/sweep") == before, "another sweep wrote into the stage's out"
    assert store_runs(repo) == {"k1_lam0.5_s0", "sft_s0", "k1_lam0.5_s1", "sft_s1"}
    for name in stage_runs:  # evaluated with eval.limit 4 on a copy whose model is the stage's
        copy = repo / "runs/store" / name
        assert len(list(copy.glob("eval/validation-*/eval_key"))) == 2
        weights = next(p.relative_to(copy) for p in (copy / "model").rglob("*.safetensors"))
        assert (copy / weights).stat().st_ino == (repo / "runs/sweep" / name / weights).stat().st_ino
    status = run(["dvc", "status"], repo, env)
    assert "up to date" in status or status.strip() == "", status
    trained = launches(repo)
    params = (repo / "params.yaml").read_text()
    tree = yaml.safe_load(params)
    tree["sweep"]["seeds"] = [0, 1]
    (repo / "params.yaml").write_text(yaml.safe_dump(tree))
    try:
        out = run(["dvc", "repro"], repo, env)
        assert "taken from the run store" in out
        assert launches(repo) == trained, "the stage trained a run the store held"
        assert len(list((repo / "runs/sweep").iterdir())) == 4
        # Each run holds the stage's evaluation setting only; the other sweep's went back to the store.
        assert len(list(repo.glob("runs/sweep/*/eval/validation-*"))) == 4
        assert store_runs(repo) == {"k1_lam0.5_s0", "sft_s0", "k1_lam0.5_s1", "sft_s1"}
    finally:
        (repo / "params.yaml").write_text(params)
    out = run(["dvc", "repro"], repo, env)
    assert "moved to the run store" in out
    assert sorted(p.name for p in (repo / "runs/sweep").iterdir()) == stage_runs
    assert store_runs(repo) == {"k1_lam0.5_s0", "sft_s0", "k1_lam0.5_s1", "sft_s1"}
    assert launches(repo) == trained
    assert run(["git", "status", "--porcelain"], repo, env) == "", "dvc.lock and metrics/ hold the params file's sweep"


def evaluations(repo: Path) -> Counter:
    """Evaluations per (run folder, split), wherever they were made (runs/sweep and runs/store
    counted together): an evaluation process opens its command with `$ ` in
    eval/<split>-<key>/evaluate.log; a training process that evaluated its own model logs
    'evaluating MODEL on N examples of .../<split>.jsonl' in train.log."""
    counts = Counter()
    for log in repo.glob("runs/*/*/eval/*/evaluate.log"):
        counts[log.parents[2].name, log.parent.name.split("-")[0]] += log.read_text().count("$ ")
    trained = {log.parent.name: log.read_text() for log in repo.glob("runs/*/*/train.log")}  # a copy's log is its run's
    for name, text in trained.items():
        for split in re.findall(r"evaluating \S+ on \d+ examples of (?:\S*/)?(\w+)\.jsonl", text):
            counts[name, split] += 1
    return counts


def versions(client, name: str) -> dict[str, dict]:
    """The model's versions: {version: {run_id, run_folder, aliases}} (a search leaves aliases out)."""
    found = [client.get_model_version(name, v.version) for v in client.search_model_versions(f"name = '{name}'")]
    return {
        str(v.version): {"run_id": v.run_id, "run_folder": v.tags.get("run_folder"), "aliases": sorted(v.aliases)}
        for v in found
    }


@pytest.mark.server
def test_make_run_a_ui_sweep_of_another_seed_and_make_run_again_share_one_project(clone, tmp_path_factory, prefect_url):
    """Issue 32's acceptance, as a researcher runs it with docs/sweeps.md's servers (real
    `prefect server` and `mlflow server` on 127.0.0.1, the MLflow one on the project's
    mlflow.db): `make run` on a fresh clone, a smaller UI sweep with another seed (the served
    deployment, triggered with `-p sweep=...`), `make run` again. The champion stays where the
    first `make run` put it (one seed cannot beat it on the same questions and seeds), one
    model version per run, `dvc status` and `git status` clean, every (run, split) evaluated
    once, the UI sweep trains only its seed's runs, and MLflow parents tell the sweeps apart.
    The first `make run` is the `clone` fixture's (the test above checks what it trained).
    With STEPJEPA_SCREENSHOTS=DIR it writes the MLflow and Prefect pages docs/sweeps.md shows."""
    from mlflow import MlflowClient

    from tests.support.servers import prefect_api

    repo, env, out = clone  # after its first `make run`, whose servers are docs/sweeps.md's
    assert "Running stage 'sweep'" in out
    tmp, shots, api = tmp_path_factory.mktemp("shared"), os.environ.get("STEPJEPA_SCREENSHOTS"), prefect_url
    ml, model = env["MLFLOW_TRACKING_URI"], "sj-fresh"
    client = MlflowClient(ml)
    first = versions(client, model)
    champion = client.get_model_version_by_alias(model, "champion")
    trained = launches(repo)
    assert sorted(n.split("-")[0] for n in trained) == ["k1_lam0.5_s0", "sft_s0"]

    ui = ui_sweep(repo, env, "gsm8k", '{"ks": [1], "lambdas": [0.5], "seeds": [1]}', tmp / "serve.log")
    flow_run = re.search(r"UUID: ([0-9a-f-]{36})", ui).group(1)
    after_ui = versions(client, model)
    assert client.get_model_version_by_alias(model, "champion").version == champion.version, (
        "a one-seed UI sweep moved the champion: it cannot beat it on the same questions and seeds"
    )
    # Its best (a seed-1 run) is a version of its own, alias candidate; the first make run's stay.
    (added,) = [after_ui[v] for v in after_ui.keys() - first.keys()]
    assert added["aliases"] == ["candidate"] and added["run_folder"].split("-")[0].endswith("_s1"), after_ui
    assert {v: after_ui[v]["run_id"] for v in first} == {v: first[v]["run_id"] for v in first}
    ui_launches = launches(repo)
    new = {n: c for n, c in ui_launches.items() if n not in trained}
    assert sorted(n.split("-")[0] for n in new) == ["k1_lam0.5_s1", "sft_s1"] and set(new.values()) == {1}, new
    assert {n: ui_launches[n] for n in trained} == trained, "the UI sweep trained a run make run had trained"
    status = run(["dvc", "status"], repo, env)  # before make run could repair anything
    assert "up to date" in status or status.strip() == "", f"the UI sweep changed the stage's outs:\n{status}"
    # The flow run says what happened to the registry, in its artifact and in its log.
    (artifact,) = prefect_api(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run]}}})
    registry = re.search(r"\*\*Registry:\*\* (.*)", artifact["data"]).group(1)
    assert registry.startswith("champion unchanged"), registry
    logs = prefect_api(
        api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run]}}, "sort": "TIMESTAMP_DESC", "limit": 200}
    )
    assert f"registry: {registry}" in {log["message"] for log in logs}

    out = make_run(repo, env)
    assert "Running stage" not in out and "is registered in" in out, out
    assert versions(client, model) == after_ui, "the second make run changed the registry"
    assert client.get_model_version_by_alias(model, "champion").version == champion.version
    experiment = client.get_experiment_by_name("fresh")
    parents = client.search_runs([experiment.experiment_id], "tags.`stepjepa.kind` = 'sweep'")
    names = sorted(p.info.run_name for p in parents)
    if shots:
        ui_parent = next(p.info.run_id for p in parents if "seeds=1 " in p.info.run_name)
        pages = {p.info.run_id for p in parents}
        take_screenshots(
            Path(shots),
            tmp,
            env,
            ml,
            experiment.experiment_id,
            ui_parent,
            pages,
            model,
            api,
            flow_run,
            artifact["id"],
        )

    assert len({v["run_id"] for v in after_ui.values()}) == len(after_ui), f"two versions of one run: {after_ui}"
    assert len({v["run_folder"] for v in after_ui.values()}) == len(after_ui), f"two of one run folder: {after_ui}"
    assert len(names) == 2 and names[0] != names[1], f"parents one cannot tell apart: {names}"
    assert any("seeds=0 " in n for n in names) and any("seeds=1 " in n for n in names), names
    assert launches(repo) == ui_launches, "the second make run trained"
    counted = evaluations(repo)
    assert {(n, "validation") for n in ui_launches} <= counted.keys()
    assert set(counted.values()) == {1}, f"an evaluation made more than once: {counted}"
    status = run(["dvc", "status"], repo, env)
    assert "up to date" in status or status.strip() == "", status
    assert run(["git", "status", "--porcelain"], repo, env) == "", "dvc.lock and metrics/ hold the params file's sweep"


def take_screenshots(folder, tmp, env, ml, experiment, ui_parent, parents, model, api, flow_run, artifact):
    """docs/screenshots/: the MLflow experiment's two parents compared (their names), the UI
    sweep's parent (its children, selected config and registry outcome), the model's versions
    and aliases, and the UI sweep's Prefect flow run and its artifact (the registry line)."""
    from tests.support.chromium import screenshot

    browser = env | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    ui = api.removesuffix("/api")
    runs = json.dumps(sorted(parents))
    for name, url, size in [
        ("mlflow-parents-compared", f'{ml}/#/compare-runs?runs={runs}&experiments=["{experiment}"]', "1400,900"),
        ("mlflow-ui-sweep-parent", f"{ml}/#/experiments/{experiment}/runs/{ui_parent}", "1400,1300"),
        ("mlflow-model-versions", f"{ml}/#/models/{model}", "1400,1100"),
        ("prefect-ui-sweep-run", f"{ui}/runs/flow-run/{flow_run}", "1400,900"),
        ("prefect-ui-sweep-artifact", f"{ui}/artifacts/artifact/{artifact}", "1400,900"),
    ]:
        screenshot(url, folder / f"{name}.png", browser, tmp, size)


def test_param_change_reruns_only_what_it_affects(published, prefect_url):
    """On the author, last: the clones above were made from its commit. A tokenize param
    reruns tokenize, not the stages above it, and leaves the sweep stage to rerun on the new
    data (`dvc status`). The sweep's retraining itself is not run here: a sweep stage
    training its runs is the clone's `make run`, and a run's identity including its data is
    tests/sweep/test_sweep_grid.py's (the whole `dvc repro` cost this module ~45 CPU-s)."""
    repo, source, _ = published
    env = environment(repo, source, prefect_url)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tokenize"]["max_length"] = 128
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = run(["dvc", "repro", "tokenize"], repo, env)
    assert "Running stage 'tokenize'" in out
    for stage in ["fetch", "prepare", "build_model"]:
        assert f"Running stage '{stage}'" not in out
    assert json.loads((repo / "metrics/tokenize.json").read_text())["train"]["truncated"] > 0
    status = run(["dvc", "status"], repo, env)
    assert re.search(r"^sweep:\n\s+changed deps:\n\s+modified:\s+data/tokenized", status, re.M), status
    assert "tokenize:" not in status and "build_model:" not in status, status
