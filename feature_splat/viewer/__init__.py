"""The interactive viewer: a field in the browser, with prompts and edits (``feature-splat view``).

Needs the ``viewer`` extra (viser >= 1.1, whose wheel carries its built web client).

- :mod:`~feature_splat.viewer.session`: the shared field, edits and one browser's state and
  actions, with no browser in them;
- :mod:`~feature_splat.viewer.frames`: the view modes, each one rasterizer pass;
- :mod:`~feature_splat.viewer.worker`: one render thread per browser, newest request first;
- :mod:`~feature_splat.viewer.camera`: browser cameras as rasterizer cameras;
- :mod:`~feature_splat.viewer.server`: the viser panel and events.
"""

from feature_splat.viewer.server import FieldViewer, TrainingControls, serve
from feature_splat.viewer.session import ViewerClient, ViewerSession

__all__ = ["FieldViewer", "TrainingControls", "ViewerClient", "ViewerSession", "serve"]
