"""Trackers (``codiag.monitor(..., sinks=[...])``) with the real libraries: TensorBoard event files read
back with TensorBoard's EventAccumulator, MLflow on a local file store read back with MlflowClient,
W&B in offline mode read back from the run's ``.wandb`` file; a user's own sink object; a failing sink
counted and shown, never raised."""
from __future__ import annotations

import glob
import math
import struct
import time
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from example_modules import load_example
from torch import nn
from torch.utils.data import DataLoader

import codiag
from codiag.detector import Detector
from codiag.errors import UsageError
from codiag.runs import load_run

EPS = 0.2


class FiresAtEvent(Detector):
    """A user's detector (the public Detector interface) that raises the alarm at its n-th event."""

    name = "fires_at_event"

    def __init__(self, n: int = 2) -> None:
        self.n, self.seen = n, 0

    def update(self, step, epoch, values):
        self.seen += 1
        if self.seen == self.n and self.alarm is None:
            self.alarm = {"step": step, "epoch": epoch, "rule": "test", "reason": "fires at event 2",
                          "values": dict(values)}
            return self.alarm
        return None

    def reset(self):
        self.alarm, self.seen = None, 0


class Recording:
    """A user's own sink: the three methods of the protocol, no base class."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], float] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.status = None

    def log(self, step, rows):
        for tag, value in rows.items():
            self.rows[(tag, step)] = value

    def event(self, kind, fields):
        self.events.append((kind, dict(fields)))

    def close(self, status):
        self.status = status


def fgsm(model, x, y):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return ((x + EPS * grad.sign()).clamp(0, 1) - x).detach()


def fmnist_run(run_dir, epochs: int = 2, **options) -> Any:
    """A real FGSM training on 512 Fashion-MNIST images, monitored with ``options``."""
    torch.manual_seed(0)
    train = DataLoader(codiag.load_dataset("fashion_mnist", train=True, limit=512), batch_size=128, shuffle=True)
    test = codiag.load_dataset("fashion_mnist", train=False, limit=64)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with codiag.monitor(model, opt, run_dir, eps=EPS, probe_data=test, attack=fgsm, probes=["robust_acc"],
                        probe_n=64, early_events=False, pgd_steps=3, **options) as mon:
        for _ in range(epochs):
            for x, y, _ in train:
                loss = F.cross_entropy(model(x + fgsm(model, x, y)), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            mon.epoch_end()
    return mon


def tiny_run(run_dir, **options) -> Any:
    """A few steps of a tiny model on random tensors with a row of the user's own per step."""
    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 6, 6), torch.randint(0, 3, (32,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with codiag.monitor(model, opt, run_dir, eps=0.1, probe_data=(x, y), probes="none", every=2,
                        early_events=False, **options) as mon:
        for _ in range(4):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log("train", {"loss": loss.detach()})
        mon.epoch_end()
    return mon


def recorded_rows(run_dir) -> dict[tuple[str, int], float]:
    m = load_run(run_dir).metrics
    return {(f"codiag/{p}/{k}", int(s)): float(v) for s, p, k, v in zip(m["step"], m["probe"], m["key"], m["value"])}


def wandb_records(run_root) -> list[Any]:
    """Every record of the offline run's ``.wandb`` file, once W&B's service has written its ``exit`` record
    (it writes the file behind ``run.finish()``)."""
    for _ in range(120):
        records = _read_wandb_file(run_root)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        time.sleep(0.5)
    raise AssertionError(f"the offline W&B run under {run_root} never wrote its exit record")


def _read_wandb_file(run_root) -> list[Any]:
    """W&B's LevelDB-style log of protobuf records."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(str(run_root / "wandb" / "offline-run-*" / "*.wandb"))
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:          # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk      # FULL/FIRST start a record, MIDDLE/LAST extend it
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
    return out


def wandb_history(records) -> dict[tuple[str, int], float]:
    rows = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): float(i.value_json) for i in r.history.item}
            if "codiag/step" not in items:       # the user's own rows
                continue
            step = int(items.pop("codiag/step"))
            rows.update({(k, step): v for k, v in items.items() if k.startswith("codiag/")})
    return rows


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")        # never a server
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    yield tmp_path
    wandb.teardown()          # W&B keeps its settings (WANDB_DIR) per process: the next test starts afresh


def test_tensorboard_mlflow_and_a_users_sink_mirror_a_real_run(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")     # a local file store (MLflow 3 asks to opt in)
    mine = Recording()
    mon = fmnist_run(tmp_path / "run", sinks=["tensorboard", "mlflow", mine], detector=FiresAtEvent(2))
    assert mon.co_detected
    rows = recorded_rows(tmp_path / "run")
    assert ("codiag/robust_acc/pgd_acc", 0) in rows and len({s for _, s in rows}) == 3   # steps 0, 4, 8

    # the user's sink: every row at its step, the start, the alarm, the run's end, the status
    assert mine.rows == rows
    kinds = [k for k, _ in mine.events]
    assert kinds[0] == "start" and "co_alarm" in kinds and kinds[-1] == "run_end" and mine.status == "finished"
    assert dict(mine.events)["co_alarm"]["reason"] == "fires at event 2"

    # TensorBoard: scalars and the alarm's text entry, read back from the event files
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tb = {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    assert tb.keys() == rows.keys()
    assert all(tb[k] == pytest.approx(v, rel=1e-6) for k, v in rows.items())
    (text,) = acc.Tensors("codiag/co_alarm/text_summary")
    assert b"fires at event 2" in text.tensor_proto.string_val[0]

    # MLflow: metrics at their steps, the alarm as a tag, the report as artifacts, the run ended
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("codiag").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    got = {(key, m.step): m.value for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)}
    assert got.keys() == rows.keys() and all(math.isclose(got[k], v) for k, v in rows.items())
    assert "fires at event 2" in run.data.tags["codiag.co_alarm"]
    assert "index.html" in {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "codiag_report")}
    assert mlflow.active_run() is None        # the user's active-run state untouched
    assert (tmp_path / "run" / "report" / "index.html").exists()


def test_wandb_and_mlflow_log_into_the_users_active_runs_and_leave_them_open(offline_wandb, tmp_path, monkeypatch):
    import wandb
    mlflow = pytest.importorskip("mlflow")
    from codiag.integrations.mlflow import MlflowSink
    from codiag.integrations.wandb import WandbSink

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    user_run = wandb.init(project="mine", name="users-run")
    try:
        with mlflow.start_run() as active:
            mon = tiny_run(tmp_path / "run", sinks=[WandbSink(report=False), MlflowSink(report=False)],
                           detector=FiresAtEvent(2))
            assert mlflow.active_run().info.run_id == active.info.run_id       # still the user's, still open
        assert wandb.run is user_run                                          # not finished by codiag
        user_run.log({"mine": 1.0})
    finally:
        user_run.finish()
    mlflow.set_tracking_uri(None)
    assert mon.co_detected
    rows = recorded_rows(tmp_path / "run")
    assert ("codiag/train/loss", 3) in rows

    records = wandb_records(offline_wandb)
    assert wandb_history(records) == rows
    (alert,) = [r.alert for r in records if r.WhichOneof("record_type") == "alert"]
    assert alert.title == "codiag co_alarm" and "fires at event 2" in alert.text and alert.level == "ERROR"

    client = mlflow.tracking.MlflowClient((tmp_path / "mlruns").as_uri())
    run = client.get_run(active.info.run_id)
    assert run.data.metrics["codiag/train/loss"] == pytest.approx(rows[("codiag/train/loss", 4)])
    assert "fires at event 2" in run.data.tags["codiag.co_alarm"]


def test_a_failing_sink_is_counted_and_shown_and_never_ends_training(tmp_path):
    class Broken(Recording):
        name = "broken"

        def log(self, step, rows):
            raise ConnectionError("tracker unreachable")

    class Counting(Recording):
        calls = 0

        def log(self, step, rows):
            self.calls += 1

    plain, counting = tiny_run(tmp_path / "plain"), Counting()
    with pytest.warns(RuntimeWarning, match="sink broken failed") as caught:
        with_sink = tiny_run(tmp_path / "run", sinks=[Broken(), counting])
    assert with_sink.step == plain.step == 4
    assert len([w for w in caught if "sink broken" in str(w.message)]) == 1     # one warning per sink
    run = load_run(tmp_path / "run")
    assert run.status == "finished" and counting.status == "finished"          # the other sink went on
    assert run.meta["sink_errors"] == {"broken": counting.calls} and counting.calls >= 4   # every call counted
    assert "tracker unreachable" in run.events_of("sink_error")[0]["error"]
    assert recorded_rows(tmp_path / "run") == recorded_rows(tmp_path / "plain")   # the record is whole

    from reports.build import _run_warnings
    (line,) = [w for w in _run_warnings(run) if "sink" in w]
    assert f"sink broken failed {counting.calls} times" in line and "tracker unreachable" in line


@pytest.mark.parametrize("spec, message", [("neptune", "unknown sink 'neptune'"),
                                           (object(), "a sink must be a name")])
def test_a_wrong_sink_is_one_line_at_the_start(tmp_path, spec, message):
    with pytest.raises(UsageError, match=message):
        tiny_run(tmp_path / "run", sinks=[spec])
    assert not (tmp_path / "run").exists()


def test_the_wandb_example_runs_offline_and_logs_the_report(offline_wandb, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rc = load_example("wandb_sink").main(["--epochs", "1", "--train-limit", "256", "--probe-n", "32",
                                              "--probes", "robust_acc", "--out", str(tmp_path / "run")])
    assert rc == 0
    records = wandb_records(offline_wandb)
    assert wandb_history(records) == recorded_rows(tmp_path / "run")
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "codiag-report"
    assert "index.html" in {e.path for e in artifact.manifest.contents}
    exit_codes = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_codes == [0]                                      # codiag started the run, so it finished it
