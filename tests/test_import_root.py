"""One import root: codiag installs nothing named ``probes`` or ``reports``, and a user's own
``probes.py`` / ``reports.py`` beside their script shadow nothing of codiag's."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

LOOP = textwrap.dedent("""
    import torch, codiag
    torch.manual_seed(0)
    train = codiag.load_dataset("fashion_mnist", train=True, limit=256)
    test = codiag.load_dataset("fashion_mnist", train=False, limit=64)
    loader = codiag.make_loader(train, 64, shuffle=True, seed=0)
    model = codiag.build_model("cnn4", train.spec)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with codiag.monitor(model, opt, "run", eps=0.1, probe_data=test, probe_n=32,
                        probes="robust_acc,grad_align") as mon:
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        mon.epoch_end()
    print("rows", len(codiag.load_run("run").metrics))
""")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_users_probes_and_reports_modules_do_not_shadow_codiags(tmp_path: Path) -> None:
    for name in ("probes", "reports"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    (tmp_path / "loop.py").write_text(LOOP)
    done = _run([sys.executable, "loop.py"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split("rows")[-1]) > 0
    done = _run([sys.executable, "-m", "codiag", "report", "run", "--no-analytic"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "report" / "index.html").is_file()


def test_nothing_named_probes_or_reports_is_importable_outside_the_repository(tmp_path: Path) -> None:
    code = ("import importlib.util, codiag.probes, codiag.reports\n"
            "print([n for n in ('probes', 'reports') if importlib.util.find_spec(n) is not None])\n")
    done = _run([sys.executable, "-I", "-c", code], tmp_path)   # -I: no cwd, no PYTHONPATH
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
