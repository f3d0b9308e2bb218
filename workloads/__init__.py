"""The workload registry: name -> module. Each module is one fine-tuning loop, read top to bottom.

A workload module defines: ``Config`` (dataclass with ``data``/``model``/``train`` sections),
``METRIC``/``MODE``, ``SEARCH_SPACE``, ``SMOKE_TEST`` (dotted overrides for a tiny run),
``build_data(cfg) -> Splits``, ``build_model(cfg, splits)``, ``train_step(model, batch) -> loss``,
``evaluate(model, loader, splits) -> {"accuracy": ...}`` (the loop adds ``val_``/``test_``), and
optionally ``validate(cfg)`` (cheap driver-side data checks), ``export(model, cfg, splits, dir)`` /
``load_export(cfg, splits, dir)`` (servable model), ``build_optimizer(cfg, model)``.
"""

from workloads import cnn, mlp, ner, rnn, sentiment

WORKLOADS = {
    "mlp": mlp,
    "cnn": cnn,
    "ner": ner,
    "rnn": rnn,
    "sentiment": sentiment,
}
