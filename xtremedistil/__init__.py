"""xtremedistil: distil pre-trained language models into tiny students and deploy them.

Importing this package first guarantees that TensorFlow, when it is imported later, uses
Keras 2 (`tf_keras`): Hugging Face TF models and tensorflow-model-optimization need it.
"""
import os

# Must happen before anything imports TensorFlow; set once, never overriding the user.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from xtremedistil.errors import XtremeDistilError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["XtremeDistilError", "__version__"]
