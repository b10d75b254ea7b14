"""Driving scenes, one glance: a car's ring of six cameras in, a feature field out (DistillNeRF's
setting, as per-pixel Gaussians), with zero-shot semantic occupancy.

- ``network``: :class:`DrivingPredictor`, two-stage probabilistic depth and fusion across cameras;
- ``offline``: per-scene fields fitted on whole drives, the targets the model distils;
- ``training``: :class:`DriveTrainer` and :func:`run_training` (``feature-splat drive train``);
- ``evaluation``: held-out drives against the baselines (``feature-splat drive eval``);
- ``config``: the configs of the ``feature-splat drive`` commands.

Drives come from :mod:`feature_splat.data.synthetic.drives`, occupancy from
:mod:`feature_splat.eval.occupancy`.
"""
