"""The real DVC pipeline in a temporary git repository: repro, precise reruns, metrics diff, exp run."""

import json
import os
import subprocess

import pytest
import yaml

from rnp.stages import STAGES

from .conftest import copy_project

pytestmark = pytest.mark.e2e


def sh(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str))
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def project(tmp_path, bin_path):
    repo = copy_project(tmp_path / "project")
    env = {
        **os.environ,
        "PATH": bin_path,
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "site-cache"),
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
        "OMP_NUM_THREADS": "1",
    }
    sh("git init -q -b main && git add -A && git commit -qm init", repo, env)
    return repo, env


def test_dvc_repro_reruns_only_what_changed(project):
    repo, env = project
    # 1) the whole pipeline
    out = sh(["dvc", "repro"], repo, env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    metrics = json.loads((repo / "data/prune/metrics.json").read_text())
    assert metrics["asr"] <= 0.05 and metrics["ca"] >= metrics["ca_before"] - 0.03
    assert json.loads(sh(["dvc", "status", "--json"], repo, env)) == {}
    plots = json.loads(sh(["dvc", "plots", "show", "--json"], repo, env))
    defined = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    names = [next(iter(p)) if isinstance(p, dict) else p for p in defined]
    assert list(plots["data"]) == names and not plots.get("errors")  # every plot defined, none a default row-index plot
    text = json.dumps(plots["data"])  # every axis named in dvc.yaml, none left as DVC's "x" / "y"
    assert '"title": "y"' not in text and '"title": "x"' not in text and '"title": "mask threshold' in text
    sh(["dvc", "plots", "show", "-o", str(repo.parent / "plots_html")], repo, env)  # the page renders offline: Vega inlined, no CDN
    page = (repo.parent / "plots_html" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page and page.count("vegaEmbed('#") == 4 and "rnpPending" in page
    sh("git add -A && git commit -qm 'pipeline run'", repo, env)

    # 1b) a bad param: rnp refuses in one line, but DVC has already removed the stage's outputs;
    # the documented recovery brings back the last committed run: metrics and curves from git, the rest from DVC's cache
    model = repo / "data/prune/model.safetensors"
    good = model.read_bytes()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prune"]["step"] = -1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    bad = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "rnp prune: error: params.yaml: prune.step must be > 0, got -1" in bad.stdout + bad.stderr
    assert not model.exists()
    sh("git checkout -q -- params.yaml data && dvc checkout -q", repo, env)
    assert model.read_bytes() == good and json.loads(sh(["dvc", "status", "--json"], repo, env)) == {}

    # 2) a prune param changes: only prune is stale, only prune reruns
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prune"].update(select="fixed", threshold=0.0)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert set(json.loads(sh(["dvc", "status", "--json"], repo, env))) == {"prune"}
    out = sh(["dvc", "repro"], repo, env)
    assert "Running stage 'prune'" in out
    for stage in ("poison", "train", "unlearn", "recover"):
        assert f"Stage '{stage}' didn't change, skipping" in out

    # 3) dvc metrics diff shows the change against the last commit
    diff = json.loads(sh(["dvc", "metrics", "diff", "--json"], repo, env))
    prune_diff = diff["data/prune/metrics.json"]
    assert prune_diff["threshold"]["new"] == 0.0 and prune_diff["threshold"]["old"] == metrics["threshold"]
    assert "data/train/metrics.json" not in diff

    # 4) an experiment with -S reruns prune alone and is listed by dvc exp show
    out = sh(["dvc", "exp", "run", "-S", "prune.threshold=0.5", "--name", "t05"], repo, env)
    assert "Running stage 'prune'" in out and "Running stage 'train'" not in out
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo, env))
    assert "t05" in json.dumps(shown)


def test_artifacts_round_trip_through_a_dvc_remote(project, tmp_path):
    repo, env = project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    sh(["dvc", "repro"], repo, env)
    sh("git add -A && git commit -qm run", repo, env)  # metrics (cache: false) and dvc.lock live in git
    lock = (repo / "dvc.lock").read_text()
    outs = sorted(p for p in (repo / "data").rglob("*") if p.is_file())
    before = {p.relative_to(repo): p.read_bytes() for p in outs}

    # 1) push everything to a local directory remote
    sh(["dvc", "remote", "add", "-d", "store", str(tmp_path / "remote")], repo, env)
    sh(["dvc", "push"], repo, env)
    # 2) wipe the cache and every output; git restores what git holds
    sh("rm -rf .dvc/cache data && git checkout -- data", repo, env)
    assert not (repo / "data/train/model.safetensors").exists()
    # 3) pull: identical bytes, dvc status clean, the lock file unchanged
    sh(["dvc", "pull"], repo, env)
    after = {p.relative_to(repo): p.read_bytes() for p in sorted((repo / "data").rglob("*")) if p.is_file()}
    assert after == before
    assert json.loads(sh(["dvc", "status", "--json"], repo, env)) == {}
    assert (repo / "dvc.lock").read_text() == lock


def _stage_is_whole(stage_dir):
    """metrics.json present -> every declared output of that stage is present and readable."""
    from rnp.io import load_tensors

    if not (stage_dir / "metrics.json").exists():
        return True
    return all(load_tensors(p) is not None for p in stage_dir.glob("*.safetensors"))


def _lockfile_is_whole(repo, env) -> bool:
    """DVC's own check: `dvc status` refuses a truncated dvc.lock with "'dvc.lock' validation failed"."""
    proc = subprocess.run(["dvc", "status"], cwd=repo, env=env, capture_output=True, text=True)
    return not (proc.returncode != 0 and "dvc.lock" in proc.stderr)


def test_dvc_repro_killed_mid_stage_leaves_no_half_state_and_completes_identically(project):
    import signal
    import time

    repo, env = project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    start = time.perf_counter()
    sh(["dvc", "repro"], repo, env)
    full = time.perf_counter() - start
    sh("git add -A && git commit -qm run", repo, env)  # as a user would: the recovery below restores git's dvc.lock
    stages = tuple(STAGES)
    reference = {s: json.loads((repo / "data" / s / "metrics.json").read_text()) for s in stages}
    for share in (0.2, 0.45, 0.7, 0.9):
        proc = subprocess.Popen(["dvc", "repro", "--force"], cwd=repo, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * share)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: dvc and the stage it is running
        proc.wait()
        assert all(_stage_is_whole(repo / "data" / s) for s in stages), f"half state after a kill at {share:.0%}"
        # DVC leaves its lock behind when killed; with no dvc process alive it is stale (DVC's own advice)
        (repo / ".dvc" / "tmp" / "rwlock").unlink(missing_ok=True)
        if not _lockfile_is_whole(repo, env):  # DVC rewrites dvc.lock in place: a kill mid-write truncates it
            sh("git checkout -- dvc.lock", repo, env)  # the recovery docs/guarantees.md gives
    sh(["dvc", "repro"], repo, env)
    assert {s: json.loads((repo / "data" / s / "metrics.json").read_text()) for s in stages} == reference
    assert json.loads(sh(["dvc", "status", "--json"], repo, env)) == {}
