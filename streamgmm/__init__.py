"""streamgmm: online Gaussian mixture models for streams that never stop."""

from streamgmm.exceptions import NotFittedError
from streamgmm.online import OnlineGaussianMixture, ScoreResult

__version__ = "0.1.0"

__all__ = ["NotFittedError", "OnlineGaussianMixture", "ScoreResult", "__version__"]
