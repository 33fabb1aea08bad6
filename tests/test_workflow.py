"""The Snakemake grid: planning, a real tiny run (locally and on a real single-node SLURM), bad configs."""

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from rnp.errors import RnpError
from rnp.grid import check_grid
from rnp.stages import STAGES

from .conftest import ROOT, copy_project

pytestmark = pytest.mark.e2e
FAST_CELL = {"train.epochs": 8, "recover.epochs": 5}


def smk(args, cwd, env, check=True):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", "workflow/Snakefile", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"snakemake {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def grid(tmp_path, name="grid.yaml", **fields):
    config = {"params": "params.yaml", "results": "results", "datasets": ["digits"], "attacks": ["badnets"],
              "archs": ["small_cnn"], "seeds": [0], "defenses": {"default": {}}, **fields}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def job_counts(stdout: str) -> dict[str, int]:
    table = stdout[stdout.index("Job stats:"):].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture
def project(tmp_path, bin_path):
    repo = copy_project(tmp_path / "project")
    env = {**os.environ, "PATH": bin_path, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
           "DVC_SITE_CACHE_DIR": str(tmp_path / "site-cache"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return repo, env


def test_paper_grid_plans_every_cell_and_shares_upstream_jobs(project):
    repo, env = project
    paper = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())
    models = len(paper["datasets"]) * len(paper["attacks"]) * len(paper["seeds"]) * len(paper["archs"])
    baselines = [name for name, s in paper["defenses"].items() if (s or {}).get("defense", "rnp") != "rnp"]
    counts = job_counts(smk(["-n", "--configfile", "workflow/config/paper.yaml"], repo, env).stdout)
    assert sorted(baselines) == ["anp", "ft"]  # the paper's comparison, on the same models
    assert counts["prune"] == counts["unlearn"] == models * (len(paper["defenses"]) - len(baselines))
    assert counts["baseline"] == models * len(baselines) and counts["train"] == models
    assert counts["poison"] == len(paper["datasets"]) * len(paper["attacks"]) * len(paper["seeds"])


def test_a_grid_of_hundreds_of_cells_plans_with_shared_upstreams(project, tmp_path):
    repo, env = project
    config = grid(repo, datasets=["digits", "digits32"], attacks=["badnets", "blend", "trojan", "sig", "wanet", "lc", "iad", "adaptive_blend"],
                  archs=["small_cnn", "resnet18", "torchvision:resnet18"], seeds=[0, 1, 2],
                  defenses={"default": {}, "budget2": {"prune.max_clean_drop": 0.02}})
    start = time.perf_counter()
    counts = job_counts(smk(["-n", "--configfile", str(config)], repo, env).stdout)
    print(f"DAG of 288 cells planned in {time.perf_counter() - start:.1f} s (incl. interpreter start)")
    assert counts["poison"] == 2 * 8 * 3  # one poisoned data set serves every architecture
    assert counts["train"] == 2 * 8 * 3 * 3  # one backdoored model serves every defense setting
    assert counts["unlearn"] == counts["recover"] == counts["prune"] == 288
    assert counts["summary"] == 1


def test_a_grid_cell_and_dvc_repro_give_identical_metrics_and_the_summary_and_report(project, tmp_path):
    repo, env = project
    # the same params in both: params.yaml as committed, one cell of the grid
    # and the defense axis: ANP and fine-tuning on the same model, beside RNP's stages
    config = grid(repo, defenses={"default": {}, "anp": {"defense": "anp", "anp.iterations": 20}, "ft": {"defense": "ft", "ft.epochs": 2}})
    smk(["--cores", "2", "--configfile", str(config)], repo, env)
    subprocess.run("git init -q -b main && git add -A && git commit -qm init", shell=True, cwd=repo, env=env, check=True, capture_output=True)
    subprocess.run(["dvc", "repro"], cwd=repo, env=env, check=True, capture_output=True)
    cell = repo / "results/digits/badnets/seed0/small_cnn/default"
    for stage, folder in (("poison", cell.parents[1]), ("train", cell.parent), ("unlearn", cell), ("recover", cell), ("prune", cell)):
        grid_metrics = json.loads((folder / stage / "metrics.json").read_text())
        assert grid_metrics == json.loads((repo / "data" / stage / "metrics.json").read_text()), stage
    assert (cell / "prune/model.safetensors").read_bytes() == (repo / "data/prune/model.safetensors").read_bytes()

    rows = (repo / "results/summary.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("dataset,attack,arch,seed,defense,method,ca_before")
    summary = (repo / "results/summary.md").read_text()
    assert "| digits | badnets | small_cnn | 0 | default (rnp) |" in summary
    refit = json.loads((cell / "prune/metrics.json").read_text())["asr_bias_refit"]
    row = next(line for line in summary.splitlines() if "default (rnp)" in line)
    assert row.split(" | ")[-2] == f"{100 * refit:.1f}"  # the bias-refit check reaches the grid's table
    anp = json.loads((cell.parent / "anp/baseline/metrics.json").read_text())
    prune = json.loads((cell / "prune/metrics.json").read_text())
    assert anp["defense"] == "anp" and anp["ca_before"] == prune["ca_before"] and anp["holdout_acc_before"] == prune["holdout_acc_before"]
    assert yaml.safe_load((cell.parent / "anp/baseline/params.yaml").read_text())["anp"]["iterations"] == 20
    assert "| digits | badnets | small_cnn | 0 | ft (ft) |" in summary and not (cell.parent / "ft/prune").exists()
    assert (repo / "results/summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    smk(["--configfile", str(config), "--report", "report.html"], repo, env)
    html = (repo / "report.html").read_text(errors="replace")
    assert "summary.csv" in html and "curve.png" in html


BAD_CONFIGS = [
    ({"datasets": ["imagenet"]}, "unknown data set 'imagenet' in data.dataset"),
    ({"attacks": ["badnets", "nope"]}, "unknown attack 'nope' in attack.name"),
    ({"archs": ["resnet1000"]}, "unknown architecture 'resnet1000'"),
    ({"attacks": []}, "[] should be non-empty"),
    ({"seeds": [0, 0]}, "has non-unique elements"),
    ({"defenses": {"x": {"train.epochs": 3}}}, "train.epochs"),
    ({"fixed": {"prune.thresold": 0.2}}, "unknown key prune.thresold"),
    ({"defenses": {"x": {"defense": "nad"}}}, "unknown defense 'nad'"),
]


@pytest.mark.parametrize("fields,message", BAD_CONFIGS[:2] + BAD_CONFIGS[3:5], ids=["dataset", "attack", "empty", "duplicate"])
def test_bad_grid_config_fails_before_any_job(project, fields, message):
    repo, env = project
    proc = smk(["-n", "--configfile", str(grid(repo, **fields))], repo, env, check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert not (repo / "results").exists()


@pytest.mark.parametrize("fields,message", [BAD_CONFIGS[2], BAD_CONFIGS[6], BAD_CONFIGS[7]], ids=["arch", "params-key", "defense"])
def test_check_grid_names_the_problem(fields, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = yaml.safe_load(grid(Path(os.environ.get("TMPDIR", "/tmp")), name=f"grid-{os.getpid()}.yaml", **fields).read_text())
    with pytest.raises(RnpError, match=re.escape(message)):
        check_grid(config)


def test_duplicate_arch_is_refused_as_a_duplicate(monkeypatch):
    monkeypatch.chdir(ROOT)
    archs = ["torchvision:resnet18", "small_cnn", "torchvision:resnet18"]
    config = {"params": "params.yaml", "datasets": ["digits"], "attacks": ["badnets"], "archs": archs, "seeds": [0], "defenses": {"default": {}}}
    with pytest.raises(RnpError, match="archs lists torchvision-resnet18 twice"):
        check_grid(config)


def test_workflow_lints_clean_and_names_its_software(project):
    """`snakemake --lint` has nothing to say; every job rule has the conda env, which installs this package; the
    Kubernetes profile's image is the one workflow/envs/Dockerfile builds, from files that exist."""
    repo, env = project
    proc = smk(["--lint"], repo, env)
    assert "Congratulations" in proc.stdout + proc.stderr and "Lints for" not in proc.stdout + proc.stderr
    envs = ROOT / "workflow" / "envs"
    pip = yaml.safe_load((envs / "rnp.yaml").read_text())["dependencies"][-1]["pip"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert pip == project["dependencies"] + project["optional-dependencies"]["workflow"]
    rules = (ROOT / "workflow" / "rules" / "stages.smk").read_text()
    assert rules.count("conda:\n        ENV") == rules.count("\nrule ") == 6  # the five stages and rnp baseline
    dockerfile = (envs / "Dockerfile").read_text()
    image = yaml.safe_load((ROOT / "workflow/profiles/kubernetes/config.yaml").read_text())["container-image"]
    assert f"-t {image} ." in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            assert all((ROOT / src).exists() for src in line.split()[1:-1]), line


def test_cluster_profiles_plan(project):
    repo, env = project
    for profile in ("slurm", "kubernetes"):
        proc = smk(["-n", "--profile", f"workflow/profiles/{profile}", "--configfile", str(grid(repo))], repo, env)
        assert "prune" in job_counts(proc.stdout)


@pytest.fixture(scope="module")
def slurm():
    proc = subprocess.run(["bash", str(ROOT / ".ci/slurm-up.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1]
        print(f"SKIPPED SLURM test: {reason}", file=sys.stderr)
        pytest.skip(f"no SLURM on this machine: {reason}")


def test_tiny_grid_runs_on_a_real_slurm_cluster(slurm, project):
    repo, env = project
    config = grid(repo, fixed=FAST_CELL)
    proc = smk(["--executor", "slurm", "--slurm-no-account", "--slurm-status-command", "squeue", "--jobs", "4",
         "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2", "--latency-wait", "10",
         "--default-resources", "mem_mb=1500", "runtime=10", "cpus_per_task=1", "--configfile", str(config)], repo, env)
    submitted = set(re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/rule_(\w+)/", proc.stdout + proc.stderr))
    assert submitted == set(STAGES)
    rows = (repo / "results/summary.csv").read_text().splitlines()
    assert len(rows) == 2


def test_config_alone_keeps_the_default_grid_and_params_files_cost_no_job(project):
    repo, env = project
    default = job_counts(smk(["-n"], repo, env).stdout)
    assert job_counts(smk(["-n", "--config", "results=elsewhere"], repo, env).stdout) == default
    assert not any(rule.startswith("params") for rule in default)  # each stage writes its own params file
    bad = smk(["-n", "--config", "attacks=oops"], repo, env, check=False)
    assert bad.returncode != 0 and "grid config: ValidationError: 'oops' is not of type 'array'" in bad.stdout + bad.stderr
    assert "Failed validating" not in bad.stdout + bad.stderr  # the reason, not the schema dump
