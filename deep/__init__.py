"""deep: the deep-network experiment of docs/protocol.md (PreActResNet-18, ST / SAM / PGD-AT).

Modules (each importable on its own):

* :mod:`deep.preact_resnet` - ``PreActResNet18`` with input normalisation inside ``forward``.
* :mod:`deep.archs` - the architecture registry (PreActResNet-18 and an MLP, a small CNN, a small ViT).
* :mod:`deep.images` - ``ImageData`` (images and labels on one device), ``DataError``, ``to_float``.
* :mod:`deep.cifar` - CIFAR-10/100 reader and md5-checked download.
* :mod:`deep.synthetic` - the generated robust / non-robust image dataset with its probe variants.
* :mod:`deep.augment` - batched augmentation (random crop, flip) on device tensors.
* :mod:`deep.datasets` - the data-set registry, Fashion-MNIST and digits readers, ``load_data`` (the data of
  one configuration).
* :mod:`deep.train` - ``TrainConfig``, ``train_step``, ``train_epoch``, ``fit`` (resumable).
* :mod:`deep.graphed` - the training step captured once as a CUDA graph and replayed (``--cuda-graph``).
* :mod:`deep.robustness` - clean and PGD robust accuracy on a grid, feature-reliance probes.
* :mod:`deep.autoattack` - AutoAttack (pyautoattack) robust accuracy, standard and a cheaper CPU subset.
* :mod:`deep.masking` - gradient-masking checks on stored numbers (gap, monotonicity, large-eps sanity).
* :mod:`deep.record` - the run record (``RunRecord``), its one reader and one writer, the saliency sidecar.
* :mod:`deep.aggregate` - runs summarised over seeds: the one grouping rule, ``Stat`` and the labels that
  summary.md and REPORT.md share.
* :mod:`deep.summary` - summary.md of a results folder (mean over seeds, one row per run, masking checks).
* :mod:`deep.run` - ``python -m deep.run`` (``--quick`` for a one-minute CPU smoke run).
* :mod:`deep.evaluate` - ``python -m deep.evaluate``: re-evaluates saved runs with stronger attacks.
* :mod:`deep.spec` - ``RunSpec``: deep.run's command line resolved (grid, shared TrainConfig, evaluation),
  its presets and the per-data-set protocols.
* :mod:`deep.distributed`, :mod:`deep.bench` - torch.distributed helpers and the speed benchmark (a
  package: ``python -m deep.bench``).

PGD and the SAM step live in ``samrobust/`` (:mod:`samrobust.attacks`, :mod:`samrobust.sam`): simulations/ uses them
too, and simulations/ may not import deep/.
"""
