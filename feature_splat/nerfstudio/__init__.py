"""``ns-train feature-splat``: feature fields as a nerfstudio method.

nerfstudio 1.1.5 pins gsplat 1.4, viser 0.2.7 and timm 0.6.7, so the method lives in its own
virtual environment (``make test-nerfstudio`` builds ``.venv-ns``; README, "nerfstudio"). Modules:

- :mod:`.method`: the ``nerfstudio.method_configs`` entry point (``MethodSpecification``);
- :mod:`.datamanager`: nerfstudio's full-image data manager plus the teacher's cached maps;
- :mod:`.model`: a splatfacto model that renders RGB and features through our ``rasterize()``;
- :mod:`.params`: splatfacto's Gaussian parameters as our ``GaussianField`` (no nerfstudio);
- :mod:`.import_run`: ``feature-splat import-ns``, a finished run as our run folder (no nerfstudio).

Only ``method``, ``datamanager`` and ``model`` import nerfstudio.
"""
