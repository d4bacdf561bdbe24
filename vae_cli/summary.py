"""TensorBoard output of a run: scalars, image grids, the resolved config, and HParams in the same folder."""
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf


def flatten(cfg: dict, prefix: str = "") -> dict:
    """Dotted keys to scalar values for HParams (lists become strings).

    A group's _target_ becomes the group's own entry, named by the class or function it builds
    (likelihood: Gaussian), so a sweep over options shows which option each job ran; other
    underscore keys (_partial_, _convert_) are dropped.
    """
    flat = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif key == "_target_" and prefix:
            flat[prefix[:-1]] = str(value).rsplit(".", 1)[-1]
        elif str(key).startswith("_"):
            continue
        elif value is None or isinstance(value, (list, tuple)):
            flat[name] = str(value)
        else:
            flat[name] = value
    return flat


HPARAMS_SUFFIX = ".hparams"  # the events file holding a run's HParams settings (RunWriter.hparams)


class RunWriter:
    """A SummaryWriter on the run folder, with the few kinds of record vae-cli writes.

    TensorBoard's writer is opened by open() (the loop calls it after the first training step) or at
    the first scalar, image or HParams record, flush or close, not when the run starts: importing it
    takes ~0.1-0.2 s that the first training step need not wait for. Text records (the config, the data
    source) wait for it in the order they came."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        """purge_step: a resumed run's first new step; TensorBoard hides the events an earlier attempt
        wrote at that step and after (they were not in the checkpoint), so each step shows once."""
        self.run_dir, self.purge_step = run_dir, purge_step
        self._writer, self._texts = None, []

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - see the class docstring

            if self.purge_step is not None:
                after_earlier_files(self.run_dir)
            self._writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=self.purge_step)
            for tag, text in self._texts:
                self._writer.add_text(tag, text, 0)
            self._texts = []
        return self._writer

    def open(self) -> None:
        self.writer  # noqa: B018 - the property opens it

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", float(value), step)

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        """images (N, C, H, W) in [0, 1]; TensorBoard tiles the batch into one grid."""
        self.writer.add_images(tag, images.detach().float().clamp(0, 1).cpu(), step, dataformats="NCHW")

    def config(self, cfg: DictConfig | dict) -> None:
        text = OmegaConf.to_yaml(OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg, resolve=True)
        self.text("config", "```\n" + text + "\n```")

    def text(self, tag: str, text: str) -> None:
        if self._writer is None:
            self._texts.append((tag, text))
        else:
            self._writer.add_text(tag, text, 0)

    def hparams(self, config: dict, metrics: dict, step: int) -> None:
        """An HParams entry in this run's own folder (add_hparams would open a second run).

        TensorBoard's HParams view shows, for each metric, the last scalar logged under its tag in the
        run: the figures are logged as hparams/<name> at the run's last step, so it shows metrics.json's
        (the best model's; val/elbo's own last value is the last epoch's). No experiment summary: the view
        would take the first run's as every run's columns; without one it builds them from all runs'
        settings and scalars, so a sweep over latent types shows each one's settings and figures.

        The settings go to an events file of their own (HPARAMS_SUFFIX), which replaces an earlier
        attempt's: TensorBoard keeps the first settings it reads under their tag, so a run extended with
        epochs=N showed its first attempt's epochs. Removed before the new one is written: a run stopped in
        between has no metrics.json yet, so its resume writes them again."""
        from torch.utils.tensorboard.summary import hparams  # noqa: PLC0415
        from torch.utils.tensorboard.writer import FileWriter  # noqa: PLC0415

        figures = {k: float(v) for k, v in metrics.items()}
        self.scalars("hparams", figures, step)
        _, start, end = hparams(flatten(config), {f"hparams/{k}": v for k, v in figures.items()})
        for earlier in self.run_dir.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"):
            earlier.unlink(missing_ok=True)
        settings = FileWriter(str(self.run_dir), filename_suffix=HPARAMS_SUFFIX)
        for summary in (start, end):
            settings.add_summary(summary)
        settings.close()

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def after_earlier_files(run_dir: Path) -> None:
    """Wait (at most a second) until the clock is past the newest events file's creation second: TensorBoard
    reads a folder's files in name order, events.out.tfevents.<second>.<host>.<pid>.<counter>, so a
    resumed attempt's file made within that second could sort before the earlier one ("10" < "9")."""
    seconds = [int(f.name.split(".")[3]) for f in run_dir.glob("events.out.tfevents.*")
               if f.name.split(".")[3].isdigit()]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.02)
