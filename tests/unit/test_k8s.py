"""`render --k8s` writes RayJob manifests that KubeRay's and Kueue's own schemas accept (vendored in
tests/k8s_schemas/, README.md there names their source), and batch files are checked before anything is submitted."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from jobs import batch, k8s, submit
from jobs.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "tests" / "k8s_schemas"


def crd_schema(text: str, api_version: str) -> dict:
    """The openAPIV3Schema of a CustomResourceDefinition for one ``apiVersion`` (``group/version``)."""
    crd = yaml.load(text, Loader=yaml.CSafeLoader)  # the RayJob CRD is 1.4 MB: libyaml, not pure Python
    version = next(v for v in crd["spec"]["versions"] if v["name"] == api_version.split("/")[1])
    return version["schema"]["openAPIV3Schema"]


def render(capsys, *args: str) -> str:
    assert submit.main(["render", "--k8s", *args]) == 0
    return capsys.readouterr().out


def test_rayjob_of_a_job_and_of_a_batch_validate_against_kuberays_crd(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    text = gzip.decompress((SCHEMAS / "ray.io_rayjobs.yaml.gz").read_bytes()).decode()
    schema = jsonschema.Draft7Validator(
        crd_schema(text, "ray.io/v1")
    )  # validate() would check the schema itself each call
    out = tmp_path / "batch.yaml"
    one = render(
        capsys, "configs/mlp.yaml", "--smoke-test", "--store", "s3://bucket/store", "--retries", "2", "train.lr=0.01"
    )
    render(
        capsys, "configs/batches/smoke.yaml", "--store", "s3://bucket/store", "--priority", "high", "--out", str(out)
    )
    for job in (yaml.safe_load(one), yaml.safe_load(out.read_text())):
        schema.validate(job)
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] and spec["ttlSecondsAfterFinished"] > 0
        assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True
        assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["PERENNIAL_STORE"] == "s3://bucket/store"
        head = spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
        assert head["num-cpus"] == "0" and batch.JOB_SLOT in head["resources"]
        groups = {g["groupName"]: g for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
        assert (
            groups["cpu-worker"]["maxReplicas"] == 4
            and "cpu_worker" in groups["cpu-worker"]["rayStartParams"]["resources"]
        )
    one, many = yaml.safe_load(one), yaml.safe_load(out.read_text())
    assert one["spec"]["entrypoint"] == "python -m jobs.train --config configs/mlp.yaml --smoke-test train.lr=0.01"
    assert one["spec"]["backoffLimit"] == 2 and one["metadata"]["labels"] == {k8s.QUEUE_LABEL: "perennial"}
    assert many["spec"]["entrypoint"].startswith("python -m jobs.submit batch configs/batches/smoke.yaml --follow")
    assert many["metadata"]["labels"][k8s.PRIORITY_LABEL] == "high"
    with pytest.raises(jsonschema.ValidationError):  # the schema does reject a wrong manifest
        schema.validate({**one, "spec": {**one["spec"], "backoffLimit": "two"}})


def test_label_and_annotation_names_are_kueues_own():
    source = (SCHEMAS / "kueue_controller_constants.go").read_text() + (SCHEMAS / "kueue_constants.go").read_text()
    for name, value in (
        ("QueueLabel", k8s.QUEUE_LABEL),
        ("WorkloadPriorityClassLabel", k8s.PRIORITY_LABEL),
        ("ElasticJobAnnotation", k8s.ELASTIC_ANNOTATION),
    ):
        assert re.search(rf'\b{name}\s*=\s*"{re.escape(value)}"', source), name


def test_kueue_objects_in_docs_validate_against_kueues_crds():
    """The LocalQueue and WorkloadPriorityClass docs/kubernetes.md tells a user to apply."""
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", docs, re.S)]
    kinds = {b["kind"]: b for b in blocks if isinstance(b, dict) and b.get("apiVersion", "").startswith("kueue")}
    assert kinds.keys() == {"LocalQueue", "WorkloadPriorityClass"}
    for kind, file in (("LocalQueue", "localqueues"), ("WorkloadPriorityClass", "workloadpriorityclasses")):
        text = (SCHEMAS / f"kueue.x-k8s.io_{file}.yaml").read_text()
        jsonschema.validate(kinds[kind], crd_schema(text, kinds[kind]["apiVersion"]))


def test_bad_k8s_inputs_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "b.yaml"
    bad.write_text("jobs: [{config: configs/mlp.yaml, overides: [x=1]}]\n")
    for args, why in (
        (("configs/mlp.yaml",), "needs --store s3://"),
        (("configs/mlp.yaml", "--store", "./store"), "needs --store s3://"),
        ((str(bad), "--store", "s3://b/s"), "batch entry jobs[1]"),
        (("configs/mlp.yaml", "--store", "s3://b/s", "train.nope=1"), "train.nope"),
    ):
        with pytest.raises(UserError, match=re.escape(why)):  # cli_main: one line, exit 2
            submit.main(["render", "--k8s", *args])


def test_batch_file_lists_entries_then_the_grid(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(
        "verb: train\njobs:\n  - {config: configs/mlp.yaml}\n"
        "grid:\n  configs: [configs/mlp.yaml, configs/cnn.yaml]\n  overrides: {train.seed: [1, 2], train.lr: 0.1}\n"
    )
    verb, smoke, entries = batch.read(str(path))
    assert verb == "train" and not smoke
    assert entries == [("configs/mlp.yaml", [])] + [
        (c, [f"train.seed={s}", "train.lr=0.1"]) for c in ("configs/mlp.yaml", "configs/cnn.yaml") for s in (1, 2)
    ]


def test_only_a_lost_driver_counts_as_lost_infrastructure():
    from types import SimpleNamespace as Job

    from ray.job_submission import JobErrorType

    lost = [
        Job(error_type="JOB_SUPERVISOR_ACTOR_DIED", driver_exit_code=None),  # list_jobs gives a str
        Job(error_type=JobErrorType.JOB_SUPERVISOR_ACTOR_DIED, driver_exit_code=None),  # get_job_info an enum
        Job(error_type="JOB_ENTRYPOINT_COMMAND_ERROR", driver_exit_code=-9),  # SIGKILL
        Job(error_type="JOB_ENTRYPOINT_COMMAND_ERROR", driver_exit_code=137),  # SIGKILL, through `sh -c`
    ]
    own = [
        Job(error_type="JOB_ENTRYPOINT_COMMAND_ERROR", driver_exit_code=1),  # an exception, NaN
        Job(error_type="JOB_ENTRYPOINT_COMMAND_ERROR", driver_exit_code=2),  # bad input
        Job(error_type="RUNTIME_ENV_SETUP_FAILURE", driver_exit_code=None),
    ]
    assert all(batch.lost_infrastructure(j) for j in lost) and not any(batch.lost_infrastructure(j) for j in own)
