"""The end of a run: test figures and the evaluation (configs/eval/, light by default) of the
best-validation model, written to TensorBoard, PNG files and config.yaml."""
from omegaconf import OmegaConf

from vae_cli.eval_data import TEST_DRAWS, average_terms, stream_seed
from vae_cli.run_state import BEST
from vae_cli.training_state import load_best_weights


def finish(loop, signals) -> dict:
    """The run's final figures, from the Loop that trained it; closes its TensorBoard writer. Deterministic
    (draws from eval_seed), so a run interrupted here and resumed ends identically."""
    cfg, model = loop.cfg, loop.model
    signals.immediate = True  # nothing to checkpoint any more: a signal stops the evaluation at once
    best = loop.provisional or loop.best  # a run ended by max_steps inside an epoch: perhaps its last model
    used = load_best_weights(loop.run_dir / BEST, model, best, loop.step)
    model.eval()
    test = average_terms(model, loop.estimator, loop.test_x, cfg.eval_batch_size, cfg.beta,
                         seed=stream_seed(cfg.eval_seed, TEST_DRAWS))
    metrics = {f"test/{k}": v for k, v in test.items()}
    metrics.update({f"val/{k}": v for k, v in best["val"].items()})
    metrics.update({"step": loop.step, "epoch": loop.epoch, "best/step": best["step"],
                    "best/epoch": best["epoch"], "model_used": used})
    evaluation = None
    if cfg.get("eval") is not None:  # L_K, posterior gap, active units, probe, pictures (configs/eval/)
        from vae_cli.evaluation import evaluate  # noqa: PLC0415 - heavy, and only at the end

        evaluation = evaluate(model, loop.data, loop.test_x, cfg.eval, cfg.eval_seed)
        metrics.update(evaluation.figures)
    signals.immediate = False  # the final writes finish whatever arrives now
    loop.writer.scalars("test", test, loop.step)
    if evaluation is not None:
        evaluation.write(loop.writer, loop.step)
    grids = loop.write_pictures(loop.step)
    from vae_cli.evaluation.pictures import save_png  # noqa: PLC0415

    for name, images in grids.items():
        save_png(images, loop.run_dir / f"{name}.png")
    config = OmegaConf.to_container(cfg, resolve=True) | {"model_used": used}
    OmegaConf.save(OmegaConf.create(config), loop.run_dir / "config.yaml")
    loop.writer.hparams(config, {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, loop.step)
    loop.writer.close()
    return metrics
